"""The query path, one module per stage, in order:
cache -> embed -> retrieve -> rerank -> route -> generate -> respond (pipeline.py runs them)."""
