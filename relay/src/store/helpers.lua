-- Helpers shared by the scripts (prepended to each).
-- Timestamps are decimal strings of Unix nanoseconds: Lua numbers are doubles and cannot hold them
-- exactly, so they are compared as numbers written in decimal (length first, then digits).
local function lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
-- The `ts` field of a stream entry.
local function ts_of(e)
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'ts' then return f[i + 1] end
  end
  return '0'
end
-- The seq of a stream entry (its id is `<seq>-0`).
local function seq_of(e)
  return tonumber(string.match(e[1], '^(%d+)-'))
end
local function id(seq)
  return string.format('%d-0', seq)
end
-- The first entry whose seq is at least `seq` (nil when there is none).
local function first_at(key, seq)
  return redis.call('XRANGE', key, id(seq), '+', 'COUNT', 1)[1]
end
-- Binary search over seq positions: `pred` holds for the first entry at or after `lo` and not for
-- the one at or after `hi`, and once false stays false. Returns the smallest position whose first
-- entry at or after it fails `pred`: every entry below it passes. O(log(hi - lo)) XRANGE calls.
local function search(key, lo, hi, pred)
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if pred(first_at(key, mid)) then lo = mid else hi = mid end
  end
  return hi
end
-- Redis's clock as (seconds, nanoseconds).
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2]) * 1000
end
