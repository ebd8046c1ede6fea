"""Names the config and the routing artifact share: the cascade's confidence signals and starts.

A leaf module (no imports of ours), so that the config can read an artifact's manifest and the
artifact can validate against these names without importing each other.
"""

# The cascade's confidence signals (pipelines/query/modes/cascade.py) and the range of each: escalate
# from a tier when its answer's signal is below the threshold.
#   logprob_mean / logprob_min: the mean / lowest token log-probability of the answer;
#   grounded: the share of the answer's content words found in its sources (pipelines/query/safety.py);
#   selfcheck: 1 / (1 + the problems the answer shows: arithmetic that does not compute, cut off,
#     unsure wording; pipelines/query/selfcheck.py);
#   coverage: the share of the question's terms the answer's first statement contains
#     (pipelines/query/evidence.py); for an extractive tier, which has no log-probabilities.
CASCADE_SIGNALS = {"logprob_mean": (-100.0, 0.0), "logprob_min": (-100.0, 0.0), "grounded": (0.0, 1.0),
                   "selfcheck": (0.0, 1.0), "coverage": (0.0, 1.0)}
# Built-in thresholds: the log-probability and grounding ones each calibrated for 95% of
# large-only token F1 on SQuAD (501 questions) with the cpu tiers (evals/routing_live.py; docs/results.md,
# "Routing and cascades"); each escalates ~89-94% of those answers: the 135M model rarely writes a
# good one. selfcheck's 1.0 escalates an answer with any problem. coverage's 0.7143: calibrated for
# 95% of large-only token F1 on SQuAD's tune split (251 questions) with the extractive engine as
# the small tier (evals/answer_quality.py; docs/results.md "Answer quality").
DEFAULT_CASCADE_SIGNAL = "logprob_mean"
DEFAULT_CASCADE_THRESHOLDS = {"logprob_mean": -0.184, "logprob_min": -1.291, "grounded": 0.9333, "selfcheck": 1.0,
                              "coverage": 0.7143}
# Where a cascade starts: at the cheapest tier, or at the tier the router picks (a question it
# scores hard skips the tiers below; the others climb from the cheapest as usual).
CASCADE_STARTS = ("cheapest", "routed")
