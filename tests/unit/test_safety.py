from __future__ import annotations

import pytest

from common.errors import ConfigError
from pipelines.config.safety import SafetyConfig
from pipelines.query.safety import check
from tests.fakes import chunk

SOURCES = [chunk(0, "The with statement wraps a block with methods defined by a context manager."),
           chunk(1, "The try statement specifies exception handlers.")]


def test_grounded_answer_with_valid_citations_passes():
    report = check("The with statement wraps a block with a context manager [1].", SOURCES, SafetyConfig())
    assert report.problems == () and report.grounding == 1.0


def test_blocked_pattern_is_reported():
    cfg = SafetyConfig.from_env({"RAGROUTE_SAFETY_BLOCKED": r"\bpassword\b|\bssn\b"})
    report = check("The with statement wraps a block; the password is hunter2 [1].", SOURCES, cfg)
    assert any("blocked pattern ('password')" in p for p in report.problems)


@pytest.mark.parametrize("env,key", [({"RAGROUTE_SAFETY_ACTION": "block"}, "RAGROUTE_SAFETY_ACTION"),
                                     ({"RAGROUTE_SAFETY_MIN_GROUNDING": "2"}, "RAGROUTE_SAFETY_MIN_GROUNDING"),
                                     ({"RAGROUTE_SAFETY_BLOCKED": "(unclosed"}, "RAGROUTE_SAFETY_BLOCKED")])
def test_bad_settings_name_the_variable(env, key):
    with pytest.raises(ConfigError, match=key):
        SafetyConfig.from_env(env)
