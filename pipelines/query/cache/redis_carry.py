"""The Redis backend's carry (carry.py): walk the cache's entries, move those a version change
keeps to the new version, delete the others.

The entries are walked through the eviction-order set (every live entry is in it), 500 at a
time: one pipelined read, then the batch's moves (one script call each, redis_scripts.MOVE:
renamed with its TTL and eviction rank, never over an answer already stored in the new version)
in one pipeline and its deletes in another.
Entries written without a collection (before carry existed) are left to expire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipelines.query.cache.carry import Carried, VersionChange
from pipelines.query.cache.records import NO_REACH, Partition
from pipelines.query.cache.redis_scripts import MOVE

if TYPE_CHECKING:
    from pipelines.query.cache.redis_backend import RedisCache

BATCH = 500
FIELDS = ("collection", "index_version", "tenant", "fingerprint", "doc_tags", "reach", "embedding")


def carry(cache: RedisCache, change: VersionChange) -> Carried:
    client = cache.client
    move = client.register_script(MOVE)

    def judge(keys: list[bytes]) -> tuple[int, int]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, FIELDS)
        moves = client.pipeline(transaction=False)  # the batch's moves in one round trip
        drops = client.pipeline(transaction=False)  # and its deletes in another
        dropped = 0
        for key, (coll, version, tenant, fp, tags, reach, blob) in zip(keys, pipe.execute(), strict=True):
            if coll is None or coll.decode() != change.collection or version.decode() != change.old_version:
                continue  # another collection or version, or gone meanwhile
            vector = None if blob is None else np.frombuffer(blob, dtype=np.float32)
            doc_tags = tags.decode().split(",") if tags else []
            if change.keeps(doc_tags, vector, float(reach or NO_REACH)):
                part = Partition(tenant.decode(), change.new_version, fp.decode(), change.collection)
                new_key = f"{cache.prefix}{part.key}:{key.decode().rsplit(':', 1)[1]}"
                move(keys=[key, new_key, cache.order_key], args=[change.new_version], client=moves)
            else:
                drops.delete(key)
                drops.zrem(cache.order_key, key)
                dropped += 1
        drops.execute()
        kept = sum(1 for moved in moves.execute() if moved != 0)  # 0: the entry expired meanwhile
        return kept, dropped

    kept = dropped = 0
    batch: list[bytes] = []
    for key, _ in client.zscan_iter(cache.order_key, count=BATCH):
        batch.append(key)
        if len(batch) == BATCH:
            k, d = judge(batch)
            kept, dropped, batch = kept + k, dropped + d, []
    k, d = judge(batch) if batch else (0, 0)
    return Carried(kept + k, dropped + d)
