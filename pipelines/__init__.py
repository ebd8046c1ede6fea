"""ragroute's plain-Python core: everything the BentoML services delegate to.

Data flow (the tree mirrors it):
    query:     pipelines/query/   cache -> embed -> retrieve -> rerank -> route -> generate -> respond
    documents: pipelines/indexing/ load -> chunk -> embed -> index (written by index/store.py)

Around it: api/ (what goes over a wire: the REST and OpenAI models, SSE, keys and quotas, the
protocol between services), config/ (the only code that reads the environment), engines/
(generation engines and their load), routing/ (router training and artifacts); models.py (the
packaged models, fetched and sha256-checked), breaker.py (circuit breakers), cli.py (the
``ragroute`` command). Imports run services -> pipelines -> index, and each may use common/.
"""
