-- Delete a record whatever its state or owner (on-call's `idem keys delete`), answering
-- what it held, and wake waiting duplicates (R10) as a release does.
--
-- KEYS[1]  the record's hash
-- ARGV[1]  the notification channel; empty on a cluster, whose store publishes itself
-- ARGV[2]  the record id, published to wake waiting duplicates
--
-- Replies: the fields `st fp ow ca dl sn` the record held (all nil when absent).
--
-- Race closed: reading the record and deleting it as two commands could report a
-- record other than the one deleted (completed in between); one script reads and
-- deletes in one step. An owner still running finds its record gone and is
-- superseded (R11): complete.lua refuses a missing record.
local h = redis.call('HMGET', KEYS[1], 'st', 'fp', 'ow', 'ca', 'dl', 'sn')
if h[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[1] ~= '' then
    redis.call('PUBLISH', ARGV[1], ARGV[2])
  end
end
return h
