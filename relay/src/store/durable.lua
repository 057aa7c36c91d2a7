-- Records that replicas have a channel's messages up to a seq (after a WAIT said so), so readers
-- that read only what a failover cannot take back may read them.
-- KEYS: 1 history stream, 2 meta hash
-- ARGV: 1 epoch the seq belongs to, 2 seq, 3 the message's id
-- Returns 1 when the mark is at or past the seq, 0 when this node does not hold that message (in
-- that epoch, at that seq): it is not the master that took it.
local history, meta = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return 0 end
local seq = tonumber(ARGV[2])
local entry = first_at(history, seq)
if not entry or seq_of(entry) ~= seq then return 0 end
local f = entry[2]
local found = false
for i = 1, #f, 2 do
  if f[i] == 'id' and f[i + 1] == ARGV[3] then found = true end
end
if not found then return 0 end
local durable = tonumber(redis.call('HGET', meta, 'durable') or '0')
if seq > durable then redis.call('HSET', meta, 'durable', seq) end
return 1
