"""The Redis backend's server-side scripts (redis_backend.py registers them once per client)."""

# The error-bounded policy's observation, atomically: the entry's counters (if the entry still
# exists) and its tenant pool's per-band counters.
# KEYS: entry, pool, the tenant's set of pools. ARGV: band, score, wrong (0/1), sample (0/1),
# tenant, pool TTL (s), count the lookup (0/1: feedback on a hit already counted it).
OBSERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'verified', 1)
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[1], 'wrong', 1)
    local cur = tonumber(redis.call('HGET', KEYS[1], 'wrong_max') or '-1')
    if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], 'wrong_max', ARGV[2]) end
  end
end
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[2], 'l' .. ARGV[1], 1) end
redis.call('HINCRBY', KEYS[2], 'n' .. ARGV[1], 1)
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'w' .. ARGV[1], 1) end
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[2], 'samples', 1)
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'samples_wrong', 1) end
end
redis.call('HSET', KEYS[2], 'tenant', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 1
"""

# Move one entry to a new index version (carry.py), keeping its TTL and its place in the
# eviction order; an answer already stored under the new key stays (the moved one is deleted).
# KEYS: entry, its key in the new version, the order set. ARGV: the new version.
# Returns 0: the entry was gone (expired, evicted), 1: moved, 2: the new key was taken.
MOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], KEYS[1])
  return 0
end
local score = redis.call('ZSCORE', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'index_version', ARGV[1])
if score then redis.call('ZADD', KEYS[3], score, KEYS[2]) end
return 1
"""
