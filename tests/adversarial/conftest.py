"""The adversarial suite: tenant isolation, limits and boundaries attacked the way a hostile or
careless client would, against real components (a real Redis, real `bentoml serve`).

The server tests share the e2e suite's demo index and helpers (tests/e2e/conftest.py)."""

from tests.e2e.conftest import demo_index, e2e_home  # noqa: F401 - fixtures shared with the e2e suite
