"""The query path: cache -> embed -> retrieve -> rerank -> route -> generate -> respond.

pipeline.py runs it: prepare.py (the steps before generation), modes/ (how the tier is chosen and
asked), tiers.py (one tier's answer with its fallback), respond.py (safety, response, cache
write), over state.py (a request's state and budgets); cache/ is the semantic cache; the other
modules hold each stage's logic, which the stage services call."""
