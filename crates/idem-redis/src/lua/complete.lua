-- Store the response and mark the record completed (R7, R16), fenced by the owner
-- token (R11). The same transition as `machine::complete`.
--
-- KEYS[1]  the record's hash
-- ARGV[1]  the owner's token (hex)
-- ARGV[2]  the encoded snapshot
-- ARGV[3]  the time to live, in milliseconds from now
-- ARGV[4]  the notification channel; empty on a cluster, whose store publishes itself
--          on a sharded channel (SPUBLISH) when told to
-- ARGV[5]  the record id, published to wake waiting duplicates (R10)
--
-- Replies: 1 stored, 0 superseded, 2 stored and a waiter is to be woken (empty channel).
--
-- Race closed: a late completion by an owner whose lease ended and whose record was
-- taken over (or released, or expired). The owner check and the write are one step, so
-- the stale owner can never overwrite the new owner's record. State, snapshot and
-- expiry change together: a reader sees the record wholly in flight or wholly completed.
local h = redis.call('HMGET', KEYS[1], 'st', 'ow', 'w')
if h[2] ~= ARGV[1] then
  return 0
end
if h[1] == 'c' then
  -- Race closed: this very completion sent twice because its first reply was lost (the
  -- engine retries a failed completion). The owner is kept on completion for this
  -- check alone; the stored snapshot is the one the first attempt wrote.
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'st', 'c', 'sn', ARGV[2], 'dl', deadline)
redis.call('PEXPIREAT', KEYS[1], deadline)
-- Only a record a waiter marked (claim.lua) wakes anyone: with nobody waiting,
-- nothing is published to the instances' subscribers.
if h[3] then
  if ARGV[4] == '' then
    return 2
  end
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
