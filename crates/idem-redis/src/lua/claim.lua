-- Claim a record: R6 first request, R8 replay, R9 mismatch, R10 concurrent duplicate,
-- R11 takeover, R18 many instances. The same transition as `machine::claim`.
--
-- KEYS[1]  the record's hash
-- ARGV[1]  the request's fingerprint (32 bytes)
-- ARGV[2]  the new owner's token (hex)
-- ARGV[3]  the lease, in milliseconds
-- ARGV[4]  '1' when the caller waits if the record is in flight (R10 `wait` mode)
--
-- Replies: {0} acquired, {1} mismatch, {2, snapshot} completed, {3, pttl} in flight.
--
-- Race closed: two requests with the same key arriving together, at one proxy or at
-- many, both reading "absent" and both writing. The read and the write below are one
-- script, which Redis runs without interleaving any other command, so exactly one claim
-- creates the record and every other one sees it (R6, R18).
--
-- Takeover (R11) needs no code here: an in-flight record lives until `PEXPIREAT` its
-- lease deadline, so a lease that ended has already vanished and the key reads as absent.
-- The deadlines come from Redis's own clock (TIME), never from a client's.
local h = redis.call('HMGET', KEYS[1], 'st', 'fp', 'ow')
if not h[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local deadline = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'st', 'f', 'fp', ARGV[1], 'ow', ARGV[2], 'ca', now, 'dl', deadline)
  redis.call('PEXPIREAT', KEYS[1], deadline)
  return {0}
end
if h[2] ~= ARGV[1] then
  -- R9: another payload under this key; the record is left as it is.
  return {1}
end
if h[1] == 'c' then
  return {2, redis.call('HGET', KEYS[1], 'sn')}
end
if h[3] == ARGV[2] then
  -- Race closed: this very claim sent twice because its first reply was lost (the
  -- cluster client resends after a broken connection). Owner tokens are fresh per
  -- claim, so only the claim that created the record carries this one: it already won.
  return {0}
end
-- R10: a duplicate that is going to wait marks the record, in this same step, so its
-- completion or release publishes a wake-up (complete.lua, release.lua). Unmarked
-- records, the default conflict mode's only kind, publish nothing.
if ARGV[4] == '1' then
  redis.call('HSETNX', KEYS[1], 'w', '1')
end
return {3, redis.call('PTTL', KEYS[1])}
