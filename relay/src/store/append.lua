-- Appends one message to a channel atomically.
-- KEYS: 1 history stream, 2 meta hash, 3 idempotency hash (the meta key stands in without one)
-- ARGV: 1 userid, 2 text, 3 id, 4 max messages, 5 max age seconds (0: none),
--       6 idempotency ttl seconds, 7 '1' when an idempotency key is given, 8 sender's display name,
--       9 epoch to start when the channel has none, 10 idle ttl seconds for meta and history (0: none)
-- Returns {replayed, seq, ts, id, text, username, epoch}.
if ARGV[7] == '1' then
  local prev = redis.call('HMGET', KEYS[3], 'seq', 'ts', 'id', 't', 'n', 'e')
  if prev[1] then
    -- A write of its own, so that a WAIT behind this call covers the original append too (since
    -- Redis 7.2 a WAIT only waits for what its own connection wrote).
    redis.call('HINCRBY', KEYS[3], 'replays', 1)
    return {1, prev[1], prev[2], prev[3], prev[4], prev[5], prev[6] or ''}
  end
end
local history, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[9]
  if redis.call('HEXISTS', meta, 'seq') == 0 then
    -- A new epoch: what is left of the history belongs to one that was lost, and seq starts again.
    redis.call('DEL', history)
  end
  redis.call('HSET', meta, 'epoch', epoch)
end
local sec, nsec = now()
local last = redis.call('HMGET', meta, 'ts_s', 'ts_ns')
if last[1] then
  local ls, lns = tonumber(last[1]), tonumber(last[2])
  if sec < ls or (sec == ls and nsec <= lns) then
    sec, nsec = ls, lns + 1
    if nsec >= 1000000000 then sec, nsec = sec + 1, 0 end
  end
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
redis.call('HSET', meta, 'ts_s', sec, 'ts_ns', nsec)
local ts = string.format('%d%09d', sec, nsec)
redis.call('XADD', history, 'MAXLEN', '~', tonumber(ARGV[4]), id(seq),
  'u', ARGV[1], 't', ARGV[2], 'ts', ts, 'id', ARGV[3], 'n', ARGV[8])
local max_age = tonumber(ARGV[5])
if max_age > 0 and sec > max_age then
  -- Trim what is older than the channel's retention, and only that: the first entry inside it is
  -- found by binary search (the new entry is inside, so the search has an end).
  local cutoff = string.format('%d%09d', sec - max_age, nsec)
  local function expired(e) return lt(ts_of(e), cutoff) end
  local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)[1]
  if head and expired(head) then
    redis.call('XTRIM', history, 'MINID', id(search(history, seq_of(head), seq, expired)))
  end
end
local idle = tonumber(ARGV[10])
if idle > 0 then
  redis.call('EXPIRE', meta, idle)
  redis.call('EXPIRE', history, idle)
elseif max_age > 0 then
  -- Nothing newer than max_age: the history is empty anyway (meta, with its epoch, stays).
  redis.call('EXPIRE', history, max_age)
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[3], 'seq', seq, 'ts', ts, 'id', ARGV[3], 't', ARGV[2], 'n', ARGV[8], 'e', epoch)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
return {0, tostring(seq), ts, ARGV[3], ARGV[2], ARGV[8], epoch}
