from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ArtifactError, ConfigError
from pipelines.query.cache.features import FEATURES, PAIR_GROUP, RULES
from pipelines.query.cache.verify import WEIGHTS_FILE, HitVerifier, PairScorer, PairStack

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
    v = HitVerifier.load(pair_model=False)
    assert {"antonyms", "numbers", "negation"} <= set(v.rules) and 0.5 < v.vector_threshold < 1
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


# -- the learned duplicate check ------------------------------------------------------------------
def toy_scorer(dim: int = 2, accept: float = 0.5, sure: float = 0.99) -> PairScorer:
    """P(same) rises with the cosine and falls with words only in one question; embeddings: no say."""
    n = len(FEATURES)
    weights = np.zeros(n + 2 * dim)
    weights[list(FEATURES).index("cosine")] = 20.0
    weights[list(FEATURES).index("extra_words")] = -10.0
    return PairScorer(np.zeros(n + 2 * dim), np.ones(n + 2 * dim), weights, -18.0, accept, sure)


def test_learned_check_accepts_or_rejects_with_its_probability_and_main_reasons():
    v = HitVerifier({"antonyms": 0.0}, 0.8, toy_scorer())
    u = np.array([1.0, 0.0])
    ok = v.check("How can I catch an exception?", "How do I catch an exception?", 0.95, u, u)
    assert ok.accept and ok.probability == pytest.approx(1 / (1 + np.exp(-(20 * 0.95 - 18))))
    assert ok.reason.startswith("accepted: P(same question) 0.73 >= 0.50 (cosine 0.950; cosine +19.0")
    far = v.check("How do I reverse a list?", "How do I reverse a list of strings in place quickly?", 0.95, u, u)
    assert not far.accept and far.probability < 0.5 and "words only in one -" in far.reason
    # a near-miss rule still vetoes before the model is asked
    veto = v.check("How do I enable 2FA?", "How do I disable 2FA?", 0.999, u, u)
    assert not veto.accept and veto.probability is None and "antonyms differ" in veto.reason


def test_near_identical_wording_is_accepted_on_the_cosine_and_missing_embeddings_are_not_trusted():
    v = HitVerifier({}, 0.8, toy_scorer(sure=0.97))
    u = np.array([1.0, 0.0])
    assert v.check("What does with do?", "What does with do exactly?", 0.98, None, None).accept
    assert "near-identical wording" in v.check("a b", "a b c", 0.98, u, u).reason
    lacking = v.check("What does with do?", "What does with do exactly?", 0.96, None, u)
    assert not lacking.accept and "needs both 2-d embeddings" in lacking.reason
    assert not v.check("What does with do?", "What does with do exactly?", 0.96, np.ones(3), u).accept


def test_learned_weights_for_other_features_or_another_embedder_are_not_used(caplog):
    d = toy_scorer().to_json()
    with pytest.raises(ArtifactError, match="retune"):
        PairScorer.from_json(d | {"features": d["features"][:-1]})
    with pytest.raises(ArtifactError, match="expected 11 named features"):
        PairScorer(np.zeros(12), np.ones(12), np.zeros(12), 0.0, 0.5)
    assert HitVerifier.load(embedding_model="sentence-transformers/all-MiniLM-L6-v2", pair_model=False).scorer
    with caplog.at_level("WARNING"):
        other = HitVerifier.load(embedding_model="BAAI/bge-small-en-v1.5")
    assert other.scorer is None and other.pair is None  # the pair model joins the features' logit: out too
    assert "running the near-miss rules only" in caplog.text


def test_shipped_verifier_has_the_learned_check_and_a_manifest_that_matches_it():
    data = json.loads(WEIGHTS_FILE.read_text())
    v = HitVerifier.load(pair_model=False)
    assert v.scorer is not None and v.scorer.dimension == data["manifest"]["dimension"] == 384 and v.pair is None
    assert 0.5 < v.scorer.accept_probability < 1 and v.vector_threshold < v.scorer.sure_cosine <= 1
    assert data["manifest"]["embedding_model"] == "all-MiniLM-L6-v2"
    pair = data["model"]["pair_model"]  # the cross-encoder's tensors are a separate file, pinned here
    assert pair["file"] == "verifier-pair.npz" and len(pair["sha256"]) == 64 and pair["base_model"] == "all-MiniLM-L6-v2"
    assert 0.5 < pair["accept_probability"] < 1 and pair["pair_weight"] > 0


def test_a_configured_accept_probability_replaces_the_calibrated_cut(caplog):
    shipped = HitVerifier.load(pair_model=False)
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 384))
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    args = ("How do for loops work?", "How does the for loop work?", 0.9, u, v)
    p = shipped.check(*args).probability
    assert p is not None and 0.0 < p < 1.0
    stricter, looser = (HitVerifier.load(pair_model=False, accept_probability=c) for c in (min(1.0, p + 0.01),
                                                                                           max(0.0, p - 0.01)))
    assert stricter.accept_probability == pytest.approx(min(1.0, p + 0.01))
    assert not stricter.check(*args).accept and looser.check(*args).accept
    assert f">= {looser.accept_probability:.2f}" in looser.check(*args).reason
    assert shipped.accept_probability == json.loads(WEIGHTS_FILE.read_text())["model"]["scorer"]["accept_probability"]
    with pytest.raises(ConfigError, match="within"):
        HitVerifier.load(pair_model=False, accept_probability=1.5)
    with caplog.at_level("WARNING"):  # no learned check (another embedder): nothing to apply it to
        assert HitVerifier.load(embedding_model="BAAI/bge-small-en-v1.5", accept_probability=0.5).scorer is None
    assert "has no effect" in caplog.text


# -- the pair model's part (a stand-in model: the real one is tested in tests/integration) ----------
class FixedPair:
    """Returns one logit for every pair and counts the pairs it was asked about."""

    def __init__(self, logit: float) -> None:
        self.logit, self.asked = logit, []

    def logits(self, pairs):
        self.asked += list(pairs)
        return np.full(len(pairs), self.logit)


def stacked(logit: float, sure: float = 0.99) -> tuple[HitVerifier, FixedPair]:
    pair = FixedPair(logit)
    return HitVerifier({"antonyms": 0.0}, 0.8, toy_scorer(), PairStack(pair, 0.5, 2.0, -1.0, 0.9, sure)), pair


def test_the_pair_model_weighs_in_with_the_features_and_the_reason_names_it():
    u = np.array([1.0, 0.0])
    v, pair = stacked(2.0)
    ok = v.check("How can I catch an exception?", "How do I catch an exception?", 0.95, u, u)
    z = 0.5 * (20 * 0.95 - 18) + 2.0 * 2.0 - 1.0  # features' weight x their logit + pair weight x its logit + bias
    assert pair.asked == [("How can I catch an exception?", "How do I catch an exception?")]
    assert ok.accept and ok.probability == pytest.approx(1 / (1 + np.exp(-z)))
    assert f"{PAIR_GROUP} +4.0" in ok.reason and ok.reason.startswith("accepted: P(same question) 0.97 >= 0.90")
    v, _ = stacked(-2.0)  # the same pair, the pair model against it: rejected on its word
    no = v.check("How can I catch an exception?", "How do I catch an exception?", 0.95, u, u)
    assert not no.accept and f"{PAIR_GROUP} -4.0" in no.reason and no.reason.startswith("rejected: P(same question)")
    assert v.accept_probability == 0.9 and v.scorer.accept_probability == 0.5  # the stack's cut, not the features'


def test_the_pair_model_is_not_run_for_vetoed_or_near_identical_pairs_or_when_given_its_logit():
    u = np.array([1.0, 0.0])
    v, pair = stacked(3.0, sure=0.97)
    assert not v.check("How do I enable 2FA?", "How do I disable 2FA?", 0.95, u, u).accept
    assert v.check("What does with do?", "What does with do exactly?", 0.98, u, u).accept  # >= sure cosine
    assert not v.check("a b", "a b", 0.9, u, u, pair_logit=-9.0).accept  # the caller's logit is used
    assert pair.asked == []


def test_a_pair_model_without_the_features_is_refused():
    with pytest.raises(ArtifactError, match="needs the scorer"):
        HitVerifier({}, 0.8, None, PairStack(FixedPair(0.0), 1.0, 1.0, 0.0, 0.5))


def test_check_many_asks_the_pair_model_once_for_the_pairs_that_need_it():
    u = np.array([1.0, 0.0])
    v, pair = stacked(2.0, sure=0.97)
    items = [("How can I catch an exception?", "How do I catch an exception?", 0.95, u, u),
             ("How do I enable 2FA?", "How do I disable 2FA?", 0.95, u, u),   # vetoed: not asked
             ("What does with do?", "What does with do exactly?", 0.98, u, u),  # near-identical: not asked
             ("How can I catch an exception?", "How do I catch an exception?", 0.95, u, u)]  # asked once
    verdicts = v.check_many(items)
    assert pair.asked == [items[0][:2]]
    assert [x.accept for x in verdicts] == [True, False, True, True]
    assert [x.reason for x in verdicts] == [v.check(*item).reason for item in items]


def test_the_accept_probability_setting_reaches_the_cache_and_its_stats():
    from pipelines.config import CacheConfig
    from pipelines.query.cache import make_cache

    cfg = CacheConfig.from_env({"RAGROUTE_CACHE_PAIR_MODEL": "off", "RAGROUTE_CACHE_ACCEPT_PROBABILITY": "0.6",
                                "RAGROUTE_CACHE_POLICY": "verifier"})
    cache = make_cache(cfg, embedding_model="all-MiniLM-L6-v2")
    assert cache.verifier.accept_probability == 0.6
    assert cache.stats()["verifier_accept_probability"] == 0.6
