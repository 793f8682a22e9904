-- Extend an owner's lease (R11). The same transition as `machine::renew`.
--
-- KEYS[1]  the record's hash
-- ARGV[1]  the owner's token (hex)
-- ARGV[2]  the new lease, in milliseconds from now
--
-- Replies: 1 renewed, 0 superseded.
--
-- Race closed: a renewal arriving after the lease ended and another request took the
-- record over. The owner check and the new expiry are one step, so a stale owner can
-- never extend the new owner's lease (nor revive a record that expired).
local h = redis.call('HMGET', KEYS[1], 'st', 'ow')
if h[1] ~= 'f' or h[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'dl', deadline)
redis.call('PEXPIREAT', KEYS[1], deadline)
return 1
