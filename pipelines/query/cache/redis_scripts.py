"""The Redis backend's server-side scripts (redis_backend.py registers them once per client)."""

# The error-bounded policy's observation, atomically: the entry's counters (if the entry still
# exists) and its tenant pool's per-band counters.
# KEYS: entry, pool. ARGV: band, score, wrong (0/1), sample (0/1), tenant, pool TTL (s).
OBSERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'verified', 1)
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[1], 'wrong', 1)
    local cur = tonumber(redis.call('HGET', KEYS[1], 'wrong_max') or '-1')
    if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], 'wrong_max', ARGV[2]) end
  end
end
redis.call('HINCRBY', KEYS[2], 'l' .. ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], 'n' .. ARGV[1], 1)
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'w' .. ARGV[1], 1) end
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[2], 'samples', 1)
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[2], 'samples_wrong', 1) end
end
redis.call('HSET', KEYS[2], 'tenant', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""
