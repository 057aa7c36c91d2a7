-- After a WAIT said replicas have a batch: records that replicas have the channel's messages up to
-- its highest seq, so readers that read only what a failover cannot take back may read them, and
-- hands back the earlier messages no mark covered yet (their own WAIT failed, their reply was
-- lost, their relay died, or their relay's mark simply has not run yet): replication is in order,
-- so they are on the replicas now too, and they must be announced before the batch.
-- KEYS: 1 history stream, 2 meta hash, 3 pending set
-- ARGV: 1 the epoch, 2 the batch's highest seq, 3 the id of the message stored at it, 4 the most
--       earlier messages to hand back, then the batch's seqs in this epoch (announced by the
--       batch itself)
-- Returns {1, entries} when this node holds that message (that id at that seq, in that epoch):
-- the mark is at or past it, and entries are the earlier pending messages still in history, oldest
-- first, as stream entries; {0, {}} when it does not (it is not the master that took it).
local history, meta, pending = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return {0, {}} end
local seq = tonumber(ARGV[2])
local entry = first_at(history, seq)
if not entry or seq_of(entry) ~= seq then return {0, {}} end
local found = false
local f = entry[2]
for i = 1, #f, 2 do
  if f[i] == 'id' and f[i + 1] == ARGV[3] then found = true end
end
if not found then return {0, {}} end
local durable = tonumber(redis.call('HGET', meta, 'durable') or '0')
if seq > durable then redis.call('HSET', meta, 'durable', seq) end
if #ARGV >= 5 then redis.call('ZREM', pending, unpack(ARGV, 5)) end
local covered = {}
local earlier = redis.call('ZRANGEBYSCORE', pending, '-inf', '(' .. seq, 'LIMIT', 0, tonumber(ARGV[4]))
for _, member in ipairs(earlier) do
  redis.call('ZREM', pending, member)
  local s = tonumber(member)
  local e = redis.call('XRANGE', history, id(s), id(s))[1]
  if e then covered[#covered + 1] = e end
end
return {1, covered}
