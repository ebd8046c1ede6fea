"""The adversarial suite: tenant isolation, limits and boundaries attacked the way a hostile or
careless client would, against real components (a real Redis, real `bentoml serve`). Its stacks
start from the demo index the e2e suite uses too (``e2e_home`` in tests/conftest.py)."""
