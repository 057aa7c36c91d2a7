-- Records that replicas have a channel's messages up to a seq (after a WAIT said so), so readers
-- that read only what a failover cannot take back may read them.
-- KEYS: 1 meta hash
-- ARGV: 1 epoch the seq belongs to, 2 seq
-- Returns 1 when recorded, 0 when the channel is in another epoch now or already had as much.
local meta = KEYS[1]
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return 0 end
local seq = tonumber(ARGV[2])
local durable = tonumber(redis.call('HGET', meta, 'durable') or '0')
if seq <= durable then return 0 end
redis.call('HSET', meta, 'durable', seq)
return 1
