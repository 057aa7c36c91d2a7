-- A channel's presence, atomically. KEYS: exp (zset stream -> expiry, ms), conn (hash stream ->
-- user), users (hash user -> streams), info (hash user -> name and since, as `<since ms>:<name>`).
-- ARGV[1]: op: `enter` (streams open or refresh), `depart` (streams ended: they count `ARGV[3]`
-- ms more, so a reconnect is not a leave and a join), `sweep`, `members`, `stats`.
-- ARGV[2]: the keys' lifetime, ms (refreshed on every write, so an abandoned channel's keys go).
-- ARGV[3]: ttl (enter) or grace (depart), ms, or the most users listed (members); then triples (stream, user, name) for enter, streams
-- for depart.
-- Every op first removes expired entries (at most SWEEP_MAX). Reply: {joins, leaves, next, extra}:
-- joins and leaves as flat (user, name) lists, next as ms until the next entry expires (-1: none).
local SWEEP_MAX = 1000
local exp, conn, users, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function name_of(user)
  local v = redis.call('HGET', info, user)
  if not v then return '' end
  local colon = string.find(v, ':', 1, true)
  return colon and string.sub(v, colon + 1) or ''
end

local leaves = {}
local function drop(stream)
  redis.call('ZREM', exp, stream)
  local user = redis.call('HGET', conn, stream)
  if not user then return end
  redis.call('HDEL', conn, stream)
  if redis.call('HINCRBY', users, user, -1) <= 0 then
    leaves[#leaves + 1] = user
    leaves[#leaves + 1] = name_of(user)
    redis.call('HDEL', users, user)
    redis.call('HDEL', info, user)
  end
end

for _, stream in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, SWEEP_MAX)) do
  drop(stream)
end

local joins = {}
local wrote = false
if op == 'enter' then
  local until_ms = now + tonumber(ARGV[3])
  for i = 4, #ARGV, 3 do
    local stream, user, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('ZSCORE', exp, stream) then
      redis.call('ZADD', exp, until_ms, stream)
    else
      -- New here (or lost with Redis's data, or swept while its relay was stalled): counted again.
      redis.call('ZADD', exp, until_ms, stream)
      redis.call('HSET', conn, stream, user)
      if redis.call('HINCRBY', users, user, 1) == 1 then
        redis.call('HSET', info, user, now .. ':' .. name)
        joins[#joins + 1] = user
        joins[#joins + 1] = name
      end
    end
  end
  wrote = true
elseif op == 'depart' then
  local until_ms = now + tonumber(ARGV[3])
  for i = 4, #ARGV do
    if tonumber(ARGV[3]) <= 0 then
      drop(ARGV[i])
    else
      -- Only sooner: a departed stream never outlives its entry.
      redis.call('ZADD', exp, 'XX', 'LT', until_ms, ARGV[i])
    end
  end
  wrote = true
end
if wrote then
  -- Only ever longer: another replica's entries may have been entered with a longer ttl.
  local ttl = tonumber(ARGV[2])
  for _, k in ipairs(KEYS) do
    local left = redis.call('PTTL', k)
    if left == -1 or left < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end

local next_ms = -1
local first = redis.call('ZRANGE', exp, 0, 0, 'WITHSCORES')
if first[2] then next_ms = math.max(0, tonumber(first[2]) - now) end

local extra = {}
if op == 'members' then
  -- At most about ARGV[3] users: a huge channel's list is a sample (and says so), never a reply
  -- that holds Redis up or that clients cannot take.
  local max = tonumber(ARGV[3])
  local flat
  local truncated = 0
  if redis.call('HLEN', users) <= max then
    flat = redis.call('HGETALL', users)
  else
    flat = redis.call('HSCAN', users, '0', 'COUNT', max)[2]
    truncated = 1
  end
  local ids = {}
  for i = 1, #flat, 2 do ids[#ids + 1] = flat[i] end
  -- HMGET in chunks: Lua's unpack takes a few thousand values at most.
  local infos = {}
  for from = 1, #ids, 1000 do
    local got = redis.call('HMGET', info, unpack(ids, from, math.min(from + 999, #ids)))
    for i = 1, #got do infos[#infos + 1] = got[i] or '' end
  end
  extra = {flat, infos, truncated}
elseif op == 'stats' then
  extra = {redis.call('HLEN', users), redis.call('ZCARD', exp)}
end
return {joins, leaves, next_ms, extra}
