"""Router training, the artifact and its checks, loading, calibration and the decision step
(synthetic embeddings; the real embedder is in tests/integration/test_router_training.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ArtifactError, BadRequest, ConfigError
from common.records import TierAnswer
from pipelines.config import CascadeConfig, RoutingConfig
from pipelines.query.modes import cascade
from pipelines.query.route import HeuristicRouter, LearnedRouter, QueryFeatures, decide, load_router
from pipelines.routing import calibrate, curves, features, train
from pipelines.routing.artifact import MANIFEST, WEIGHTS, RouterArtifact, RouterManifest
from pipelines.routing.train import LabeledQuery


# -- curves ---------------------------------------------------------------------------------------
def test_curve_sends_the_highest_scores_large_first():
    c = curves.curve([0.9, 0.1, 0.5, 0.7], small=[0, 1, 0, 1], large=[1, 1, 1, 0])
    # order by score: q0 (+1), q3 (-1), q2 (+1), q1 (0)
    assert c.quality.tolist() == [0.5, 0.75, 0.5, 0.75, 0.75]
    assert c.small_only == 0.5 and c.large_only == 0.75
    assert c.share_for(0.75) == 0.25 and c.share_for(0.9) is None


def test_random_router_apgr_is_one_half_and_the_oracle_recovers_everything():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 500).astype(float)
    large = np.maximum(small, rng.integers(0, 2, 500))
    assert curves.random_curve(small, large).apgr() == pytest.approx(0.5)
    oracle = curves.curve(curves.oracle_scores(small, large), small, large)
    gain = (large - small).sum() / len(small)
    assert oracle.share_for(oracle.large_only) == pytest.approx(gain)  # exactly the queries large gets right alone
    assert oracle.apgr() == pytest.approx(1 - gain / 2)  # PGR rises linearly to 1 at share=gain, then stays


def test_threshold_for_share_never_exceeds_the_share_even_with_ties():
    scores, small, large = [0.9, 0.8, 0.8, 0.1], [0, 1, 0, 1], [1, 1, 1, 0]
    cal = curves.threshold_for_share(scores, small, large, 0.5)  # the two 0.8s go together: only 0.9 fits
    assert cal.large_share == 0.25 and sum(s >= cal.threshold for s in scores) == 1
    assert curves.threshold_for_share(scores, small, large, 0.75).large_share == 0.75


def test_threshold_for_quality_takes_the_fewest_large_calls_that_reach_it():
    scores, small, large = [0.9, 0.2, 0.6, 0.4], [0, 1, 0, 1], [1, 1, 1, 1]
    cal = curves.threshold_for_quality(scores, small, large, 1.0)
    assert cal.large_share == 0.5 and cal.quality == 1.0
    assert sorted(s >= cal.threshold for s in scores) == [False, False, True, True]
    assert curves.threshold_for_quality(scores, small, large, 0.5).large_share == 0.0


def test_curves_refuse_mismatched_or_nan_input():
    with pytest.raises(ValueError, match="equal-length"):
        curves.curve([0.1, 0.2], [1], [1])
    with pytest.raises(ValueError, match="NaN"):
        curves.curve([float("nan")], [1], [1])


# -- training -------------------------------------------------------------------------------------
def clusters(n: int = 120, dim: int = 8, seed: int = 0):
    """Two clusters: queries near e0 need the large tier (it is right, small wrong), near e1 not."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    x = np.where(hard[:, None], np.eye(dim)[0], np.eye(dim)[1]) + 0.3 * rng.standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rows = [LabeledQuery(f"q{i}", int(h), 0.0 if h else 1.0, 1.0) for i, h in enumerate(hard)]
    return rows, x, hard


@pytest.mark.parametrize("method", train.METHODS)
def test_each_method_learns_which_queries_need_the_large_tier(method):
    rows, x, hard = clusters()
    artifact, cv = train.train(rows, x, method=method, embedding_model="test-model")
    assert artifact.manifest.metrics["cross_validated"]["auc"] > 0.95
    assert train.auc(cv, hard.astype(int)) > 0.95  # out-of-fold scores rank hard queries first
    _, x_new, hard_new = clusters(40, seed=1)
    scores = train.predict(method, artifact.arrays, x_new, features.matrix([f"q{i}" for i in range(40)]))
    # easy queries: both tiers right, so going large gains nothing (0.5); hard ones gain (1.0)
    assert ((scores >= 0.75) == hard_new).mean() > 0.9 and scores.min() >= 0 and scores.max() <= 1


def test_training_picks_hyper_parameters_by_cross_validation_and_records_them():
    rows, x, _ = clusters()
    artifact, _ = train.train(rows, x, embedding_model="test-model")
    m = artifact.manifest
    assert m.method == "knn+ridge" and set(m.params) == {"k", "alpha"}
    assert len(m.metrics["grid"]) == len(train.GRIDS["knn+ridge"])
    assert m.training["n"] == 120 and m.training["target"] == "P(large beats small), ties half"
    assert m.embedding_model == "test-model" and m.dimension == 8


def test_the_target_is_the_gain_from_going_large():
    assert LabeledQuery("q", 1, 0.0, 1.0).target == 1.0
    assert LabeledQuery("q", 0, 1.0, 1.0).target == 0.5  # both right: large gains nothing
    assert LabeledQuery("q", 0, 0.0, 0.0).target == 0.5  # both wrong: nor here
    assert LabeledQuery("q", 0, 1.0, 0.0).target == 0.0
    assert LabeledQuery("q", 1).target == 1.0  # small_ok=false


def test_labelled_data_loads_from_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"query": f"q{i}", "small_score": i % 2, "large_score": 1}) + "\n"
                             for i in range(12)))
    rows = train.load_labeled(jsonl)
    assert len(rows) == 12 and rows[0].label == 1 and rows[1].label == 0
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,small_ok\n" + "".join(f"q{i},{'true' if i % 3 else 'false'}\n" for i in range(12)))
    rows = train.load_labeled(csv)
    assert [r.label for r in rows[:3]] == [1, 0, 0] and train.scores_of(rows) is None


@pytest.mark.parametrize("content, message", [
    ('{"query": "q"}\n', "needs either small_score and large_score, or small_ok"),
    ('{"small_ok": true}\n', "needs a non-empty 'query'"),
    ("not json\n", "d.jsonl:1: not valid JSON"),
    ('{"query": "q", "small_ok": "maybe"}\n', "'maybe' is not a boolean"),
    ('{"query": "q", "small_score": "nan", "large_score": 1}\n', "is not a finite number"),
    ('[1, 2]\n', "each line must be a JSON object"),
])
def test_bad_labelled_data_names_the_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(BadRequest, match=message):
        train.load_labeled(path)


def test_too_little_or_one_sided_data_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"query": "q", "small_ok": true}\n' * 3)
    with pytest.raises(BadRequest, match="at least 10"):
        train.load_labeled(path)
    path.write_text('{"query": "q", "small_ok": true}\n' * 12)
    with pytest.raises(BadRequest, match="a router needs both kinds"):
        train.load_labeled(path)


def test_unknown_method_lists_the_valid_ones():
    rows, x, _ = clusters(20)
    with pytest.raises(BadRequest, match="valid: knn, ridge, knn\\+ridge"):
        train.train(rows, x, method="svm", embedding_model="m")


# -- the artifact ---------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    rows, x, _ = clusters()
    artifact, _ = train.train(rows, x, embedding_model="test-model")
    return artifact.save(tmp_path / "router"), x


def test_artifact_round_trips_with_its_manifest(saved):
    directory, x = saved
    loaded = RouterArtifact.load(directory, embedding_model="test-model", dimension=8)
    assert loaded.manifest.files[WEIGHTS] and loaded.manifest.created_at
    router = LearnedRouter(loaded)
    assert router.score("q", QueryFeatures(query_vector=x[0].tolist())) == pytest.approx(
        float(train.predict("knn+ridge", loaded.arrays, x[0], features.text_features("q"))[0]))


def test_ridge_reads_the_query_text_features_where_the_embedding_says_nothing():
    """Same embedding for every query; only the number of quantities in the text tells which
    queries the small tier gets wrong. knn cannot see it, ridge on the text features can."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 8, 200)
    queries = [f"Tom has {' and '.join(str(n) for n in rng.integers(2, 99, c)) or 'no'} apples. How many?"
               for c in counts]
    hard = counts >= 4
    rows = [LabeledQuery(q, int(h), 0.0 if h else 1.0, 1.0) for q, h in zip(queries, hard)]
    x = np.tile(np.eye(8, dtype=np.float32)[0], (200, 1))
    artifact, cv = train.train(rows, x, method="ridge", embedding_model="test-model")
    assert int(artifact.arrays["feat_version"][0]) == features.VERSION
    assert train.auc(cv, hard.astype(int)) > 0.9
    router = LearnedRouter(artifact)
    vec = QueryFeatures(query_vector=x[0].tolist())
    assert router.score("Tom has 3 and 5 and 8 and 13 and 21 apples. How many?", vec) > \
        router.score("Tom has 3 apples. How many?", vec)
    assert "text features" in router.explain("q", vec)
    with pytest.raises(ValueError, match="pass the queries"):
        train.predict("ridge", artifact.arrays, x[:1])


def test_an_artifact_with_other_text_features_is_refused(saved):
    art = RouterArtifact.load(saved[0])
    stale = RouterArtifact(art.manifest, art.arrays | {"feat_version": np.array([features.VERSION + 1])})
    with pytest.raises(ArtifactError, match="text features v2.*retrain"):
        LearnedRouter(stale)


def test_a_modified_weights_file_is_refused(saved):
    directory, _ = saved
    data = bytearray((directory / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (directory / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        RouterArtifact.load(directory)


def test_an_artifact_for_another_embedding_model_or_dimension_is_refused(saved):
    directory, _ = saved
    with pytest.raises(ArtifactError, match="trained on query embeddings of 'test-model'.*'all-MiniLM-L6-v2'"):
        RouterArtifact.load(directory, embedding_model="all-MiniLM-L6-v2")
    with pytest.raises(ArtifactError, match="expects 8-dimensional query embeddings.*produces 384"):
        RouterArtifact.load(directory, embedding_model="test-model", dimension=384)


def test_missing_or_garbled_manifest_is_refused(tmp_path, saved):
    with pytest.raises(ArtifactError, match="is not a router artifact"):
        RouterArtifact.load(tmp_path / "nothing")
    directory, _ = saved
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="is not a valid router manifest"):
        RouterArtifact.load(directory)


def test_weights_that_disagree_with_the_manifest_are_refused(tmp_path):
    arrays = {"coef": np.zeros(4, np.float32), "intercept": np.zeros(1, np.float32)}
    RouterArtifact(RouterManifest(router="learned", method="ridge", embedding_model="m", dimension=8),
                   arrays).save(tmp_path / "r")
    with pytest.raises(ArtifactError, match="coef has dimension 4, the manifest says 8"):
        RouterArtifact.load(tmp_path / "r")


# -- loading in the service -------------------------------------------------------------------------
def cfg(**kw) -> RoutingConfig:
    return RoutingConfig(**{"embed_model": "test-model", **kw})


def test_load_router_uses_the_artifact_threshold_unless_overridden(saved):
    directory, _ = saved
    art = RouterArtifact.load(directory)
    art.with_manifest(threshold=0.7).save(directory)
    loaded = load_router(cfg(router="learned", artifact=directory), dimension=8)
    assert loaded.router.name == "learned" and loaded.threshold == 0.7
    assert load_router(cfg(router="learned", artifact=directory, threshold=0.2)).threshold == 0.2


def test_the_built_in_router_takes_its_tier_profiles_threshold_unless_one_is_set():
    cpu = RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu"})
    gpu = RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "gpu"})
    assert (cpu.threshold, cpu.default_threshold, gpu.default_threshold) == (None, 0.0, 0.5)
    loaded = load_router(cpu)
    assert loaded.threshold == 0.0 and "(the cpu tiers' default, docs/routing.md)" in loaded.source
    # at 0 every question goes to large, whatever the heuristic scores it
    assert decide(loaded.router, "What is a lambda?", QueryFeatures(), loaded.threshold).tier == "large"
    assert load_router(gpu).threshold == 0.5
    chosen = load_router(RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "cpu", "RAGROUTE_ROUTE_THRESHOLD": "0.5"}))
    assert chosen.threshold == 0.5 and "(RAGROUTE_ROUTE_THRESHOLD)" in chosen.source
    with pytest.raises(ConfigError, match="RAGROUTE_GEN_PROFILE"):
        RoutingConfig.from_env({"RAGROUTE_GEN_PROFILE": "tpu"})


def test_a_refused_artifact_stops_start_up_unless_a_fallback_is_configured(saved):
    directory, _ = saved
    with pytest.raises(ArtifactError, match="trained on query embeddings of 'test-model'"):
        load_router(cfg(router="learned", artifact=directory, embed_model="all-MiniLM-L6-v2"))
    loaded = load_router(cfg(router="learned", artifact=directory, embed_model="all-MiniLM-L6-v2",
                             fallback="heuristic"))
    assert loaded.router.name == "heuristic" and "the artifact was refused" in loaded.source


def test_router_name_and_artifact_must_agree(saved):
    directory, _ = saved
    with pytest.raises(ConfigError, match="RAGROUTE_ROUTER='heuristic' but .* holds a 'learned' router"):
        load_router(cfg(router="heuristic", router_set=True, artifact=directory))


def test_unknown_router_lists_the_valid_ones_and_learned_needs_an_artifact():
    with pytest.raises(ConfigError, match="valid: heuristic, learned"):
        load_router(cfg(router="bert"))
    with pytest.raises(ConfigError, match="needs RAGROUTE_ROUTER_PATH"):
        load_router(cfg(router="learned"))


def test_routing_config_from_env():
    c = RoutingConfig.from_env({"RAGROUTE_ROUTER_PATH": "/x/r"})
    assert c.router == "learned" and not c.router_set and c.threshold is None and str(c.artifact) == "/x/r"
    with pytest.raises(ConfigError, match="RAGROUTE_ROUTER_FALLBACK"):
        RoutingConfig.from_env({"RAGROUTE_ROUTER_FALLBACK": "random"})


def test_learned_router_without_an_embedding_falls_back_to_the_heuristic(saved):
    directory, _ = saved
    router = LearnedRouter(RouterArtifact.load(directory))
    q = "Why does the with statement call __exit__, and how would I design one?"
    assert router.score(q, QueryFeatures()) == HeuristicRouter().score(q, QueryFeatures())
    assert router.explain(q, QueryFeatures()).startswith("no query embedding; heuristic:")


def test_decision_step_is_shared_and_explains_itself(saved):
    directory, x = saved
    router = LearnedRouter(RouterArtifact.load(directory))
    hard = QueryFeatures(query_vector=x[0].tolist())
    d = decide(router, "q", hard, 0.0)
    assert d.tier == "large" and d.router == "learned" and "knn+ridge" in d.reason and ">= threshold 0.00" in d.reason
    assert decide(router, "q", hard, 1.01).tier == "small"


# -- calibration ----------------------------------------------------------------------------------
@pytest.fixture
def scored(saved):
    """The saved artifact and its scores of the training clusters, with both tiers' quality."""
    art = RouterArtifact.load(saved[0])
    rows, x, _ = clusters()
    return art, train.predict("knn+ridge", art.arrays, x, features.matrix([r.query for r in rows])), \
        *train.scores_of(rows)


def test_calibrate_router_writes_the_threshold_for_a_large_share(scored, tmp_path):
    art, scores, small, large = scored
    out = calibrate.calibrate_router(art, scores, small, large, large_share=0.3)
    assert (scores >= out.manifest.threshold).mean() <= 0.3
    assert out.manifest.calibration["target"] == "large_share" and out.manifest.calibration["value"] == 0.3
    out.save(tmp_path / "cal")
    assert RouterArtifact.load(tmp_path / "cal").manifest.threshold == out.manifest.threshold


def test_calibrate_router_for_quality_reaches_it_on_the_data(scored):
    art, scores, small, large = scored
    out = calibrate.calibrate_router(art, scores, small, large, quality=0.95)
    to_large = scores >= out.manifest.threshold
    assert np.where(to_large, large, small).mean() >= 0.95 * large.mean()
    assert to_large.mean() < 0.8  # and it did not simply send everything large


def test_calibration_needs_exactly_one_target():
    with pytest.raises(BadRequest, match="exactly one"):
        calibrate.pick([0.1], [0], [1])
    with pytest.raises(BadRequest, match="not within"):
        calibrate.pick([0.1], [0], [1], large_share=1.5)


def test_calibrate_cascade_sets_a_confidence_threshold(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(-3, 0, 200)
    small = (conf > -1.5).astype(float)  # confident answers are right
    rows = [calibrate.CascadeRow(s, 1.0, {"logprob_mean": c, "logprob_min": c - 1}) for c, s in zip(conf, small)]
    art = calibrate.calibrate_cascade(RouterArtifact(RouterManifest(router="heuristic")), rows, quality=1.0)
    c = art.manifest.cascade
    assert c.signal == "logprob_mean" and c.threshold == pytest.approx(-1.5, abs=0.05)
    escalate = conf < c.threshold
    assert np.where(escalate, 1.0, small).mean() == 1.0 and escalate.mean() < 0.6
    art.save(tmp_path / "c")
    loaded = CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": str(tmp_path / "c")})
    assert loaded.threshold == c.threshold and loaded.source.startswith("calibrated")
    assert CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": str(tmp_path / "c"),
                                   "RAGROUTE_CASCADE_THRESHOLD": "-0.7"}).threshold == -0.7


def test_calibrate_cascade_on_grounded_support(tmp_path):
    """A grounded signal in [0, 1] calibrates like the log-probabilities: answers whose words are
    mostly in their sources are right here, so the threshold lands between the two groups."""
    rng = np.random.default_rng(1)
    support = rng.uniform(0, 1, 200)
    small = (support >= 0.6).astype(float)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(f'{{"grounded": {g}, "small_score": {s}, "large_score": 1}}\n'
                            for g, s in zip(support, small)))
    art = calibrate.calibrate_cascade(RouterArtifact(RouterManifest(router="heuristic")),
                                      calibrate.load_cascade_rows(path), signal="grounded", quality=1.0)
    c = art.manifest.cascade
    assert c.signal == "grounded" and c.threshold == pytest.approx(0.6, abs=0.02)
    art.save(tmp_path / "g")
    loaded = CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": str(tmp_path / "g")})
    assert (loaded.signal, loaded.threshold) == ("grounded", c.threshold)
    with pytest.raises(BadRequest, match="200 of 200 rows have no logprob_mean"):
        calibrate.calibrate_cascade(art, calibrate.load_cascade_rows(path), signal="logprob_mean", quality=1.0)


def test_artifact_with_a_cascade_threshold_outside_its_signals_range_is_refused(tmp_path):
    """A hand-edited manifest cannot carry a log-probability cut-off for the grounded signal."""
    import json

    from pipelines.routing.artifact import read_manifest

    RouterArtifact(RouterManifest(router="heuristic")).save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "router.json").read_text())
    manifest["cascade"] = {"signal": "grounded", "threshold": -0.184}
    (tmp_path / "a" / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"threshold -0.184 is outside grounded's range \[0.0, 1.0\]"):
        read_manifest(tmp_path / "a")


def test_cascade_threshold_range_depends_on_the_signal():
    from common.errors import ConfigError

    env = {"RAGROUTE_CASCADE_SIGNAL": "grounded", "RAGROUTE_CASCADE_THRESHOLD": "0.7"}
    assert CascadeConfig.from_env(env).threshold == 0.7
    # without a threshold each signal gets its own built-in one (a log-probability cut-off
    # would keep every grounded answer)
    default = CascadeConfig.from_env({"RAGROUTE_CASCADE_SIGNAL": "grounded"})
    assert default.signal == "grounded" and 0 < default.threshold <= 1 and default.source == "built-in default"
    assert CascadeConfig.from_env({"RAGROUTE_CASCADE_SIGNAL": "logprob_min"}).threshold < CascadeConfig().threshold
    with pytest.raises(ConfigError, match="between 0.0 and 1.0"):
        CascadeConfig.from_env({**env, "RAGROUTE_CASCADE_THRESHOLD": "-0.5"})
    with pytest.raises(ConfigError, match="between -100.0 and 0.0"):
        CascadeConfig.from_env({"RAGROUTE_CASCADE_THRESHOLD": "0.7"})  # logprob_mean by default
    with pytest.raises(ConfigError, match="not one of logprob_mean, logprob_min, grounded"):
        CascadeConfig.from_env({"RAGROUTE_CASCADE_SIGNAL": "entropy"})


@pytest.mark.parametrize("line, error", [
    ('{"logprob_mean": -1, "small_score": 1}', "needs numbers small_score and large_score"),
    ('{"small_score": 1, "large_score": 1}', "has none of the confidence signals"),
    ('{"grounded": "high", "small_score": 1, "large_score": 1}', "needs numbers"),
    ('{"logprob_mean": NaN, "small_score": 1, "large_score": 1}', "scores and signals must be finite"),
])
def test_cascade_rows_need_scores_and_a_signal(tmp_path, line, error):
    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(BadRequest, match=f"c.jsonl:1: {error}"):
        calibrate.load_cascade_rows(path)


# -- the cascade's verdict ---------------------------------------------------------------------------
def gen(text="an answer", mean=-0.2, tokens_in=100, tokens_out=20) -> TierAnswer:
    return TierAnswer(text=text, tier="small", model="m", engine="llamacpp", finish_reason="stop",
                      tokens_in=tokens_in, tokens_out=tokens_out, latency_ms=5.0, logprob_mean=mean,
                      logprob_min=None if mean is None else mean - 1)


def test_cascade_verdicts():
    from pipelines.config import TierConfig

    cfg = CascadeConfig("logprob_mean", -0.5)
    large = TierConfig("large", "llamacpp", "l", 2048, 160, prefill_tok_s=100, decode_tok_s=10)  # 1 s + 2 s
    assert cascade.judge(gen(mean=-0.2), cfg, large, "large", 10_000).outcome == "accepted"
    v = cascade.judge(gen(mean=-0.8), cfg, large, "large", 10_000)
    assert v.escalate and v.outcome == "escalated" and v.confidence == -0.8
    v = cascade.judge(gen(mean=-0.8), cfg, large, "large", 2_000)
    assert not v.escalate and v.outcome == "kept" and "2000 ms left and large needs ~3100 ms" in v.reason
    assert cascade.judge(gen(mean=None), cfg, large, "large", 10_000).escalate
    assert cascade.judge(gen(text="  ", mean=-0.1), cfg, large, "large", 10_000).reason.startswith("empty answer")


def test_cascade_on_grounded_reads_the_sources():
    """With the grounded signal the verdict depends on the sources, not on log-probabilities:
    the same answer is kept when its sources say it and escalated when they do not."""
    from pipelines.config import TierConfig
    from tests.fakes import chunk

    cfg = CascadeConfig("grounded", 0.5)
    large = TierConfig("large", "llamacpp", "l", 2048, 160, prefill_tok_s=100, decode_tok_s=10)
    answer = gen(text="Melbourne is the sporting capital [1].", mean=None)
    v = cascade.judge(answer, cfg, large, "large", 10_000, [chunk(0, "Melbourne is called the sporting capital.")])
    assert not v.escalate and v.confidence == 1.0 and v.reason == "grounded 1.000 >= threshold 0.500"
    v = cascade.judge(answer, cfg, large, "large", 10_000, [chunk(0, "Sydney hosted the 2000 Olympic Games.")])
    assert v.escalate and v.confidence == 0.0 and "grounded 0.000 < threshold 0.500" in v.reason


def test_cascade_on_selfcheck_names_what_it_found():
    """selfcheck reads the answer itself: wrong arithmetic escalates with the statement named;
    an answer whose arithmetic computes is accepted at the default threshold 1.0."""
    from pipelines.config import TierConfig

    cfg = CascadeConfig.from_env({"RAGROUTE_CASCADE_SIGNAL": "selfcheck"})
    assert (cfg.signal, cfg.threshold, cfg.source) == ("selfcheck", 1.0, "built-in default")
    large = TierConfig("large", "llamacpp", "l", 2048, 160, prefill_tok_s=100, decode_tok_s=10)
    v = cascade.judge(gen(text="He pays 48 * 15 = 700 dollars.", mean=None), cfg, large, "large", 10_000)
    assert v.escalate and v.confidence == 0.5
    assert v.reason == ("selfcheck 0.500 < threshold 1.000 (arithmetic: 48 * 15 = 700 (it is 720)): "
                        "escalated to large")
    v = cascade.judge(gen(text="He pays 48 * 15 = 720 dollars.", mean=None), cfg, large, "large", 10_000)
    assert not v.escalate and v.reason == "selfcheck 1.000 >= threshold 1.000 (no problem found in 1 equation(s))"
    cut = gen(text="He pays 48 * 15 = 720 dollars and", mean=None).model_copy(update={"finish_reason": "length"})
    assert cascade.judge(cut, cfg, large, "large", 10_000).reason.startswith(
        "selfcheck 0.500 < threshold 1.000 (cut off at the token limit)")


def test_cascade_start_from_env_and_artifact(tmp_path):
    assert CascadeConfig.from_env({}).start == "cheapest" and CascadeConfig.from_env({}).route_threshold is None
    env = {"RAGROUTE_CASCADE_START": "routed", "RAGROUTE_CASCADE_ROUTE_THRESHOLD": "0.6"}
    assert (CascadeConfig.from_env(env).start, CascadeConfig.from_env(env).route_threshold) == ("routed", 0.6)
    with pytest.raises(ConfigError, match="RAGROUTE_CASCADE_START='first' is not one of cheapest, routed"):
        CascadeConfig.from_env({"RAGROUTE_CASCADE_START": "first"})
    with pytest.raises(ConfigError, match="RAGROUTE_CASCADE_ROUTE_THRESHOLD='1.5' must be between 0.0 and 1.0"):
        CascadeConfig.from_env({"RAGROUTE_CASCADE_ROUTE_THRESHOLD": "1.5"})
    # a calibrated routed cascade in the artifact; the environment overrides its parts
    RouterArtifact(RouterManifest(router="heuristic")).with_manifest(cascade=calibrate.CascadeSettings(
        signal="selfcheck", threshold=1.0, start="routed", route_threshold=0.42)).save(tmp_path / "r")
    path = str(tmp_path / "r")
    got = CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": path})
    assert (got.signal, got.threshold, got.start, got.route_threshold) == ("selfcheck", 1.0, "routed", 0.42)
    assert CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": path, "RAGROUTE_CASCADE_START": "cheapest"}).start == \
        "cheapest"
    assert CascadeConfig.from_env({"RAGROUTE_ROUTER_PATH": path,
                                   "RAGROUTE_CASCADE_ROUTE_THRESHOLD": "0.9"}).route_threshold == 0.9


def _routed_data(n: int = 400, seed: int = 0):
    """Questions the router scores hard (> 0.7) need the large tier; among the others the small
    tier is wrong exactly where its answer shows a problem (selfcheck 0.5)."""
    rng = np.random.default_rng(seed)
    route = rng.uniform(0, 1, n)
    conf = np.where(rng.uniform(0, 1, n) < 0.2, 0.5, 1.0)
    small = np.where((route > 0.7) | (conf < 1.0), 0.0, 1.0)
    return route, conf, small, np.ones(n)


def test_routed_order_puts_escalations_first_then_the_router():
    order = calibrate.routed_order([0.1, 0.9, 0.3], [0.5, 1.0, 1.0], 1.0)
    assert order.tolist() == [2.0, 0.9, 0.3]


def test_pick_routed_finds_both_thresholds():
    route, conf, small, large = _routed_data()
    found = calibrate.pick_routed(route, conf, small, large, signal="selfcheck", quality=1.0)
    assert found.threshold == pytest.approx(1.0) and found.route_threshold == pytest.approx(0.7, abs=0.01)
    to_large = (route >= found.route_threshold) | (conf < found.threshold)
    assert np.where(to_large, large, small).mean() == 1.0  # the target is met
    assert found.calibration.large_share == pytest.approx(to_large.mean())
    assert found.small_share == pytest.approx((route < found.route_threshold).mean())
    # the router alone, or the cascade alone, needs more large calls for the same quality
    router_only = curves.threshold_for_quality(route, small, large, 1.0).large_share
    cascade_only = curves.threshold_for_quality(calibrate.escalation_scores(conf), small, large, 1.0).large_share
    assert found.calibration.large_share < min(router_only, cascade_only)


def test_calibrate_routed_cascade_writes_both_thresholds(tmp_path):
    route, conf, small, large = _routed_data()
    rows = [calibrate.CascadeRow(s, l, {"selfcheck": c}, f"q{i}") for i, (c, s, l) in enumerate(zip(conf, small, large))]
    art = calibrate.calibrate_routed_cascade(RouterArtifact(RouterManifest(router="heuristic")), rows, route,
                                             signal="selfcheck", quality=1.0)
    c = art.manifest.cascade
    assert (c.signal, c.start, c.threshold) == ("selfcheck", "routed", 1.0)
    assert c.route_threshold == pytest.approx(0.7, abs=0.01)
    assert {"route_threshold", "small_share", "escalated", "large_share"} <= set(c.calibration)
    art.save(tmp_path / "r")
    assert RouterArtifact.load(tmp_path / "r").manifest.cascade == c
    with pytest.raises(BadRequest, match="400 of 400 rows have no grounded"):
        calibrate.calibrate_routed_cascade(art, rows, route, signal="grounded", quality=1.0)


def test_cascade_rows_keep_the_question(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"query": "how much?", "selfcheck": 0.5, "small_score": 0, "large_score": 1}\n' * 10)
    rows = calibrate.load_cascade_rows(path)
    assert rows[0].query == "how much?" and rows[0].signals == {"selfcheck": 0.5}
