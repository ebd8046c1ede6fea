"""The documents path: load -> chunk -> embed -> index (build.py runs them)."""
