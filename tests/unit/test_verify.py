from __future__ import annotations

import json

import pytest

from pipelines.errors import ArtifactError
from pipelines.query.verify import RULES, WEIGHTS_FILE, HitVerifier

ALL = {name: 0.0 for name in RULES} | {"order": 0.5}


@pytest.mark.parametrize("cached,query,reason", [
    ("How do I enable 2FA?", "How do I disable 2FA?", "antonyms differ ('enable' vs 'disable')"),
    ("What are the top 5 Python web frameworks?", "What are the top 10 Python web frameworks?",
     "numbers differ (['5'] vs ['10'])"),
    ("I found a few thousand dollars", "I found a few hundred dollars", "numbers differ"),
    ("Can I deploy on Fridays?", "Can I not deploy on Fridays?", "one question is negated"),
    ("How do I sort a list in Python?", "How do I sort a list in Java?", "different names (['python'] vs ['java'])"),
    ("Are cats afraid of tigers?", "Are tigers afraid of cats?", "the same words in another order"),
    ("Why does the with statement call __exit__?", "How does the with statement call __exit__?",
     "different question types"),
    ("What does 无语 mean?", "What does 装逼 mean?", "different non-ASCII terms"),
])
def test_each_rule_rejects_its_near_miss_and_says_why(cached, query, reason):
    verdict = HitVerifier(ALL, 0.85).check(cached, query, 0.97)
    assert not verdict.accept and reason in verdict.reason


@pytest.mark.parametrize("cached,query", [
    ("What does the with statement do?", "What does the with statement do exactly?"),
    ("How do I catch an exception?", "How can I catch an exception?"),
    ("How do I sort a list in Python?", "How can I sort a list in Python?"),
])
def test_paraphrases_pass_every_rule(cached, query):
    verdict = HitVerifier(ALL, 0.85).check(cached, query, 0.98)
    assert verdict.accept and "no near-miss rule fired" in verdict.reason


def test_shipped_settings_load_and_reject_the_classic_near_miss():
    v = HitVerifier.load()
    assert v.rules and 0.5 < v.vector_threshold < 1
    assert not v.check("How do I enable 2FA?", "How do I disable 2FA?", 0.93).accept


def test_tampered_or_foreign_settings_are_refused(tmp_path):
    data = json.loads(WEIGHTS_FILE.read_text())
    data["model"]["rules"]["numbers"] = 0.7  # edited without updating the manifest
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="sha256"):
        HitVerifier.load(tmp_path / "v.json")
    data["manifest"]["format_version"] = 1
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="retune"):
        HitVerifier.load(tmp_path / "v.json")
    with pytest.raises(ArtifactError, match="unknown verifier rules"):
        HitVerifier({"telepathy": 0.0}, 0.9)
