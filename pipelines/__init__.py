"""ragroute's plain-Python core: everything the BentoML services delegate to.

Data flow (the tree mirrors it):
    query:     pipelines/query/   cache -> embed -> retrieve -> rerank -> route -> generate -> respond
    documents: pipelines/indexing/ load -> chunk -> embed -> index (written by index/store.py)
"""
