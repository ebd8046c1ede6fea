"""The semantic cache: everything that belongs to it, in one package.

    records.py        partitions, candidates, hits; the backend protocol
    memory.py         the in-process backend (default)
    redis_backend.py  the Redis backend (REDIS_URL): shared by workers and replicas (redis_scripts.py: its Lua;
                      redis_carry.py: its carry)
    carry.py          which entries survive a change of their collection's documents (VersionChange)
    semantic.py       SemanticCache (threshold, verifier, policy over a backend); make_cache
    features.py       what the verifier reads from a pair of questions: near-miss rules, named features
    verify.py         the hit verifier: the rules, then the learned check on a candidate pair
    pairmodel.py      the verifier's pair model (verifier-pair.npz; sha256 in verifier.json)
    policy.py         the error-bounded policy: per-band error estimates, answers_agree
"""

from pipelines.query.cache.carry import Carried, VersionChange
from pipelines.query.cache.memory import InMemoryCache
from pipelines.query.cache.records import (CacheBackend, CacheHit, CacheUnavailable, Candidate, Found, Observation,
                                           Partition, SemanticLookup, doc_tag)
from pipelines.query.cache.semantic import SemanticCache, make_cache

__all__ = ["CacheBackend", "CacheHit", "CacheUnavailable", "Candidate", "Carried", "Found", "InMemoryCache",
           "Observation", "Partition", "SemanticCache", "SemanticLookup", "VersionChange", "doc_tag", "make_cache"]
