-- Checks that this node holds given messages of a channel, and records that replicas have the
-- channel's messages up to the highest of them (after a WAIT said so), so readers that read only
-- what a failover cannot take back may read them.
-- KEYS: 1 history stream, 2 meta hash
-- ARGV: 1 the epoch the messages belong to, 2 '1' to move the mark, '0' only to look,
--       then pairs: a seq and the id of the message stored at it
-- Returns {the durable mark after the call, then one flag per pair}: 1 when this node holds that
-- message (that id at that seq, in that epoch), 0 when it does not (it is not the master that took
-- it, or the message is gone). With '1', the mark moves to the highest held seq (marks only move
-- forward).
local history, meta = KEYS[1], KEYS[2]
local same_epoch = redis.call('HGET', meta, 'epoch') == ARGV[1]
local flags, top = {}, 0
for i = 3, #ARGV, 2 do
  local seq, held = tonumber(ARGV[i]), 0
  local entry = same_epoch and first_at(history, seq)
  if entry and seq_of(entry) == seq then
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 'id' and f[j + 1] == ARGV[i + 1] then held = 1 end
    end
  end
  flags[#flags + 1] = held
  if held == 1 and seq > top then top = seq end
end
local durable = tonumber(redis.call('HGET', meta, 'durable') or '0')
if ARGV[2] == '1' and top > durable then
  redis.call('HSET', meta, 'durable', top)
  durable = top
end
table.insert(flags, 1, durable)
return flags
