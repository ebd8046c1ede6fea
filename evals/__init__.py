"""Benchmarks and evaluations. Each script prints its numbers and saves them as JSON under
evals/out/ (gitignored) together with the configuration that produced them."""
