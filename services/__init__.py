"""Thin BentoML shells. Each declares resources, dependencies and APIs and delegates to
``pipelines``. ``bentoml serve services.rag:RAG`` starts the whole graph."""
