-- Appends a batch of messages to one channel atomically, in order.
-- KEYS: 1 history stream, 2 meta hash, 3 pending set, 3+i message i's idempotency hash (the meta
--       key stands in for a message without one)
-- ARGV: 1 max messages, 2 max age seconds (0: none), 3 idempotency ttl seconds, 4 epoch to start
--       when the channel has none, 5 idle ttl seconds for meta and history (0: none), 6 n,
--       7 '1' to record each new seq in the pending set (appends that wait for replicas: a
--       durable mark takes them out, see durable.lua), then per message (5 each): userid, text,
--       id, sender's display name, '1' when an idempotency key is given
-- Returns one reply per message: {0, seq, ts, epoch} for an append, or for a replayed idempotency
-- key {1, seq, ts, id, text, username, epoch} of the message stored then.
local history, meta, pending = KEYS[1], KEYS[2], KEYS[3]
local track = ARGV[7] == '1'
local max_messages, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
local idem_ttl, idle = tonumber(ARGV[3]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local out = {}
local epoch
-- The last ts assigned, as (seconds, nanoseconds); read once, then carried from message to message.
local sec, nsec
-- The last seq assigned by this call.
local seq
for i = 1, n do
  local base = 7 + (i - 1) * 5
  local userid, text, msgid, username = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local keyed, idem = ARGV[base + 5] == '1', KEYS[3 + i]
  local prev = keyed and redis.call('HMGET', idem, 'seq', 'ts', 'id', 't', 'n', 'e') or {}
  if prev[1] then
    -- A write of its own, so that a WAIT behind this call covers the original append too (since
    -- Redis 7.2 a WAIT only waits for what its own connection wrote).
    redis.call('HINCRBY', idem, 'replays', 1)
    out[i] = {1, prev[1], prev[2], prev[3], prev[4], prev[5], prev[6] or ''}
  else
    if not epoch then
      epoch = redis.call('HGET', meta, 'epoch')
      if not epoch then
        epoch = ARGV[4]
        if redis.call('HEXISTS', meta, 'seq') == 0 then
          -- A new epoch: what is left of the history belongs to one that was lost, and seq starts again.
          redis.call('DEL', history, pending)
        end
        redis.call('HSET', meta, 'epoch', epoch)
      end
      sec, nsec = now()
      local last = redis.call('HMGET', meta, 'ts_s', 'ts_ns')
      if last[1] then
        local ls, lns = tonumber(last[1]), tonumber(last[2])
        if sec < ls or (sec == ls and nsec <= lns) then sec, nsec = ls, lns + 1 end
      end
    else
      -- Strictly after the previous message of the batch.
      nsec = nsec + 1
    end
    if nsec >= 1000000000 then sec, nsec = sec + 1, 0 end
    seq = redis.call('HINCRBY', meta, 'seq', 1)
    -- Every message's ts is recorded as it is appended: should a later call of the batch fail,
    -- the next append still starts after what was stored.
    redis.call('HSET', meta, 'ts_s', sec, 'ts_ns', nsec)
    local ts = string.format('%d%09d', sec, nsec)
    redis.call('XADD', history, 'MAXLEN', '~', max_messages, id(seq),
      'u', userid, 't', text, 'ts', ts, 'id', msgid, 'n', username)
    if track then redis.call('ZADD', pending, seq, seq) end
    if keyed then
      redis.call('HSET', idem, 'seq', seq, 'ts', ts, 'id', msgid, 't', text, 'n', username, 'e', epoch)
      redis.call('EXPIRE', idem, idem_ttl)
    end
    out[i] = {0, tostring(seq), ts, epoch}
  end
end
if not epoch then return out end
if max_age > 0 and sec > max_age then
  -- Trim what is older than the channel's retention, and only that: the first entry inside it is
  -- found by binary search (the newest entry is inside, so the search has an end).
  local cutoff = string.format('%d%09d', sec - max_age, nsec)
  local function expired(e) return lt(ts_of(e), cutoff) end
  local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)[1]
  if head and expired(head) then
    redis.call('XTRIM', history, 'MINID', id(search(history, seq_of(head), seq, expired)))
  end
end
if track then
  -- What history no longer holds is no one's to announce.
  local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)[1]
  if head then redis.call('ZREMRANGEBYSCORE', pending, '-inf', '(' .. seq_of(head)) end
end
if idle > 0 then
  redis.call('EXPIRE', meta, idle)
  redis.call('EXPIRE', history, idle)
  if track then redis.call('EXPIRE', pending, idle) end
elseif max_age > 0 then
  -- Nothing newer than max_age: the history is empty anyway (meta, with its epoch, stays).
  redis.call('EXPIRE', history, max_age)
  if track then redis.call('EXPIRE', pending, max_age) end
end
return out
