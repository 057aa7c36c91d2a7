-- Reads a page of a channel's history and where the channel stands, in one atomic step.
-- KEYS: 1 history stream, 2 meta hash
-- ARGV: 1 mode: 'seq' (after a seq), 'ts' (after a ts) or 'latest' (the newest)
--       2 the position (seq or ts, decimal; ignored for 'latest')
--       3 max age seconds: older entries are left out even before they are trimmed (0: none)
--       4 limit: up to limit + 1 entries are returned, so the caller can tell whether there is more
--       5 byte budget: entries stop before their fields add up to more (one is always returned)
--       6 '1': only what replicas are known to have (up to meta's `durable` seq) is read
-- Returns {{epoch, last readable seq, last ts seconds, last ts nanoseconds, last assigned seq}, oldest
-- seq, oldest ts, entries,
-- 1 when the budget cut the page short} where "oldest" is the oldest entry inside retention (0 and
-- '0' when there is none) and entries are oldest first, except for 'latest' where they are newest
-- first.
local history, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'seq', 'ts_s', 'ts_ns')
local header = {m[1] or '', m[2] or '0', m[3] or '0', m[4] or '0', m[2] or '0'}
local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)[1]
local top = '+'
if ARGV[6] == '1' then
  local durable = tonumber(redis.call('HGET', meta, 'durable') or '0')
  if tonumber(header[2]) > durable then header[2] = tostring(durable) end
  top = id(durable)
end
local tail = redis.call('XREVRANGE', history, top, '-', 'COUNT', 1)[1]
if not head or not tail then return {header, 0, '0', {}, 0} end
local start, last = seq_of(head), seq_of(tail)
local max_age = tonumber(ARGV[3])
local sec, nsec = now()
if max_age > 0 and sec > max_age then
  local cutoff = string.format('%d%09d', sec - max_age, nsec)
  local function expired(e) return lt(ts_of(e), cutoff) end
  if expired(tail) then return {header, 0, '0', {}, 0} end
  if expired(head) then start = search(history, start, last, expired) end
end
local oldest = first_at(history, start)
local limit = tonumber(ARGV[4]) + 1
local budget = tonumber(ARGV[5])
-- Up to `limit` entries from `fetch(count, last entry so far)`, in chunks, within the byte budget.
local function take(fetch)
  local out, used = {}, 0
  local last = nil
  while #out < limit do
    local want = math.min(64, limit - #out)
    local chunk = fetch(want, last)
    for _, e in ipairs(chunk) do
      for _, v in ipairs(e[2]) do used = used + #v end
      if #out > 0 and used > budget then return out, 1 end
      out[#out + 1] = e
    end
    if #chunk < want then break end
    last = chunk[#chunk]
  end
  return out, 0
end
if ARGV[1] == 'latest' then
  local entries, cut = take(function(n, last)
    return redis.call('XREVRANGE', history, last and ('(' .. last[1]) or tail[1], id(start), 'COUNT', n)
  end)
  return {header, seq_of(oldest), ts_of(oldest), entries, cut}
else
  local from = start
  if ARGV[1] == 'seq' then
    from = math.max(from, tonumber(ARGV[2]) + 1)
  else
    local pos = ARGV[2]
    local function not_newer(e) return not lt(pos, ts_of(e)) end
    if not_newer(tail) then
      from = last + 1
    elseif not_newer(oldest) then
      from = search(history, start, last, not_newer)
    end
  end
  local entries, cut = take(function(n, last)
    return redis.call('XRANGE', history, last and ('(' .. last[1]) or id(from), tail[1], 'COUNT', n)
  end)
  return {header, seq_of(oldest), ts_of(oldest), entries, cut}
end
