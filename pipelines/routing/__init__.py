"""Offline side of routing: train the learned router, calibrate thresholds, the artifact that
carries both to the Routing service, and the cost-quality curves the evals report."""
