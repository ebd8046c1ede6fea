"""The cache judge's artifact (pipelines/query/cache/judge.json) and its evidence."""

from __future__ import annotations

import json

import pytest

from common.errors import ArtifactError
from pipelines.query.cache.judge import JUDGE_FILE, CacheJudge, Evidence, model_sha256, sources_agree
from pipelines.query.cache.policy import BANDS


def test_the_shipped_judge_loads_and_its_prior_is_a_pool_of_the_tune_pairs():
    from pipelines.config.generation import TIER_PROFILES

    judge = CacheJudge.load(judge_model=str(TIER_PROFILES["cpu"]["large"]["model"]))
    prior = judge.prior()
    assert len(prior.verified) == BANDS and sum(prior.verified) == prior.total > 200
    assert all(w <= n for n, w in zip(prior.verified, prior.wrong))
    # near-misses gather in the low bands, rewordings in the high ones
    assert sum(prior.wrong[:5]) > sum(prior.wrong[5:]) and prior.verified[9] > prior.wrong[9]


def test_more_evidence_of_the_same_question_means_a_higher_probability():
    judge = CacheJudge.load()
    doubt = Evidence(judge=-2.0, verifier=0.3, sources=0, cosine=0.6)
    sure = Evidence(judge=4.0, verifier=0.9, sources=2, cosine=0.9)
    assert 0.0 <= judge.probability(doubt) < judge.probability(sure) <= 1.0


@pytest.mark.parametrize("change,message", [
    (lambda d: d["model"]["coef"].__setitem__(0, 9.0), "sha256"),
    (lambda d: d["manifest"].__setitem__("format_version", 0), "format"),
    (lambda d: d["model"].__setitem__("prompt_sha256", "0" * 64), "another judge prompt"),
    (lambda d: d["model"].__setitem__("judge_model", "other-model"), "judge model"),
])
def test_a_changed_artifact_is_refused(tmp_path, change, message):
    data = json.loads(JUDGE_FILE.read_text())
    change(data)
    if message in ("another judge prompt", "judge model"):  # consistent, but not what this code asks with
        data["manifest"]["model_sha256"] = model_sha256(data["model"])
    path = tmp_path / "judge.json"
    path.write_text(json.dumps(data))
    from pipelines.config.generation import TIER_PROFILES

    with pytest.raises(ArtifactError, match=message):
        CacheJudge.load(path, judge_model=str(TIER_PROFILES["cpu"]["large"]["model"]))


def test_sources_agree_counts_each_first_source_found_in_the_other_four():
    assert sources_agree(["a", "b", "c", "d"], ["a", "x", "y", "z"]) == 2
    assert sources_agree(["a", "b"], ["b", "x"]) == 1
    assert sources_agree(["a"], ["x", "y", "z", "w", "a"]) == 0  # beyond the first four
    assert sources_agree([], ["a"]) == 0
