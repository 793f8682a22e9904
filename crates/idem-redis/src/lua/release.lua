-- Delete an owner's in-flight record so the operation may run again (R7, R12), fenced by
-- the owner token (R11). The same transition as `machine::release`.
--
-- KEYS[1]  the record's hash
-- ARGV[1]  the owner's token (hex)
-- ARGV[2]  the notification channel; empty on a cluster (see complete.lua)
-- ARGV[3]  the record id, published to wake waiting duplicates (R10)
--
-- Replies: 1 released, 0 superseded, 2 released and a waiter is to be woken (empty
-- channel).
--
-- Race closed: a late release by an owner whose lease ended and whose record was taken
-- over. A plain DEL would delete the new owner's record and let the operation run a
-- third time; the owner check and the DEL are one step.
local h = redis.call('HMGET', KEYS[1], 'st', 'ow', 'w')
if h[1] ~= 'f' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
-- Only a record a waiter marked (claim.lua) wakes anyone.
if h[3] then
  if ARGV[2] == '' then
    return 2
  end
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
