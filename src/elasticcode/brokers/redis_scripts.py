"""The server-side scripts of the Redis broker: each operation one atomic script.

Stream entries have fields ``n`` (deliveries before this entry was added) and ``b`` (body).
Delayed retries wait in a sorted set (score: when due; member: ``id\\ndeliveries\\nbody``);
dead letters in a stream of their own, numbered across queues through an index hash.
"""

from __future__ import annotations

GROUP = "elasticcode"
#: Owner of released messages: idle since 1970, so the next fetch takes them at once.
RELEASED = "elasticcode:released"

_LUA_COMMON = """
local function body_of(f)
  local n, b = 0, ''
  for k = 1, #f, 2 do
    if f[k] == 'n' then n = tonumber(f[k + 1]) elseif f[k] == 'b' then b = f[k + 1] end
  end
  return n, b
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stream, delayed per queue. ARGV: group, consumer, limit, lease (ms).
FETCH = (
    _LUA_COMMON
    + """
local group, consumer, limit, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local nq, out = #KEYS / 2, {}
for i = 1, nq do -- retries that are due go back to their stream
  local s, z = KEYS[2 * i - 1], KEYS[2 * i]
  local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local a = string.find(m, '\\n', 1, true)
    local c = string.find(m, '\\n', a + 1, true)
    redis.call('XADD', s, '*', 'n', string.sub(m, a + 1, c - 1), 'b', string.sub(m, c + 1))
  end
  if #due > 0 then redis.call('ZREM', z, unpack(due)) end
end
for i = 1, nq do -- first what released or expired consumers held
  if #out >= limit then break end
  local s, held = KEYS[2 * i - 1], {}
  local ids = {s, group, consumer, lease}
  for _, p in ipairs(redis.call('XPENDING', s, group, 'IDLE', lease, '-', '+', limit - #out)) do
    held[p[1]] = p[4]
    ids[#ids + 1] = p[1]
  end
  if #ids > 4 then
    for _, e in ipairs(redis.call('XCLAIM', unpack(ids))) do
      if type(e) == 'table' and type(e[2]) == 'table' then
        local n, b = body_of(e[2])
        out[#out + 1] = {i, e[1], b, n + held[e[1]] + 1}
      end
    end
  end
end
for i = 1, nq do -- then new entries
  if #out >= limit then break end
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - #out,
                       'STREAMS', KEYS[2 * i - 1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      local n, b = body_of(e[2])
      out[#out + 1] = {i, e[1], b, n + 1}
    end
  end
end
if #out > 0 then return {out} end
local wake = -1 -- nothing: when the next retry is due (ms from now; -1: none waits)
for i = 1, nq do
  local first = redis.call('ZRANGE', KEYS[2 * i], 0, 0, 'WITHSCORES')
  if first[2] then
    local w = math.max(0, tonumber(first[2]) - now)
    if wake < 0 or w < wake then wake = w end
  end
end
return {out, wake}
"""
)

# KEYS: dead-letter sequence, dead-letter index, then stream, bytes, delayed, dead per queue.
# ARGV: group, queue count, queue names, then sections, one per (queue, owner):
#   queue number, owner, counts of P, A, R, D, then P: body | A: id size |
#   R: id delay-ms deliveries | D: id size deliveries error
# Only what the owner still holds is settled (a lease that ran out may have handed it on).
SETTLE = (
    _LUA_COMMON
    + """
local group, nq, done = ARGV[1], tonumber(ARGV[2]), 0
local i = 3 + nq
local function each(ids, cmd, s)
  for k = 1, #ids, 1000 do
    redis.call(cmd, s, group, unpack(ids, k, math.min(k + 999, #ids)))
  end
end
while i <= #ARGV do
  local q, owner = tonumber(ARGV[i]), ARGV[i + 1]
  local np, na, nr, nd = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]),
    tonumber(ARGV[i + 5])
  i = i + 6
  local s, size, delayed, dead = KEYS[4 * q - 1], KEYS[4 * q], KEYS[4 * q + 1], KEYS[4 * q + 2]
  local added = 0
  for _ = 1, np do
    redis.call('XADD', s, '*', 'n', 0, 'b', ARGV[i])
    added = added + #ARGV[i]
    i = i + 1
  end
  local held, gone, freed = {}, {}, 0
  if na + nr + nd > 0 then
    local p = redis.pcall('XPENDING', s, group, '-', '+', 1000000, owner)
    if type(p) == 'table' and not p.err then
      for _, e in ipairs(p) do held[e[1]] = true end
    end
  end
  for _ = 1, na do
    if held[ARGV[i]] then gone[#gone + 1] = ARGV[i]; freed = freed + tonumber(ARGV[i + 1]) end
    i = i + 2
  end
  for _ = 1, nr do
    local id = ARGV[i]
    if held[id] then
      local e = redis.call('XRANGE', s, id, id)[1]
      if e then
        local _, b = body_of(e[2])
        redis.call('ZADD', delayed, now + tonumber(ARGV[i + 1]), id .. '\\n' .. ARGV[i + 2] .. '\\n' .. b)
      end
      gone[#gone + 1] = id
    end
    i = i + 3
  end
  for _ = 1, nd do
    local id = ARGV[i]
    if held[id] then
      local e = redis.call('XRANGE', s, id, id)[1]
      if e then -- dead letters are numbered across queues; never reuse a number in use
        local _, b = body_of(e[2])
        local seq, top = redis.call('INCR', KEYS[1]), redis.call('XREVRANGE', dead, '+', '-', 'COUNT', 1)[1]
        if top and seq <= tonumber(string.match(top[1], '^%d+')) then
          seq = tonumber(string.match(top[1], '^%d+')) + 1
        end
        while redis.call('HEXISTS', KEYS[2], seq) == 1 do seq = seq + 1 end
        redis.call('SET', KEYS[1], seq)
        redis.call('XADD', dead, seq .. '-0', 'b', b, 'e', ARGV[i + 3], 'd', ARGV[i + 2],
                   't', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
        redis.call('HSET', KEYS[2], seq, ARGV[2 + q])
        freed = freed + tonumber(ARGV[i + 1])
      end
      gone[#gone + 1] = id
    end
    i = i + 4
  end
  if added - freed ~= 0 then redis.call('INCRBY', size, added - freed) end
  if #gone > 0 then
    each(gone, 'XACK', s)
    for k = 1, #gone, 1000 do redis.call('XDEL', s, unpack(gone, k, math.min(k + 999, #gone))) end
    done = done + #gone
  end
end
return done
"""
)

# KEYS: streams. ARGV: group, released owner, consumer ('' = every consumer).
RELEASE = """
local group, neutral, who, total = ARGV[1], ARGV[2], ARGV[3], 0
for _, s in ipairs(KEYS) do
  local info = redis.pcall('XINFO', 'CONSUMERS', s, group)
  if type(info) == 'table' and not info.err then
    local names = {who}
    if who == '' then
      names = {}
      for _, c in ipairs(info) do if c[2] ~= neutral then names[#names + 1] = c[2] end end
    end
    for _, c in ipairs(names) do
      while true do
        local args = {s, group, neutral, 0}
        for _, p in ipairs(redis.call('XPENDING', s, group, '-', '+', 1000, c)) do
          args[#args + 1] = p[1]
        end
        if #args == 4 then break end
        total = total + #args - 4
        args[#args + 1] = 'TIME'; args[#args + 1] = 1; args[#args + 1] = 'JUSTID'
        redis.call('XCLAIM', unpack(args))
      end
      redis.call('XGROUP', 'DELCONSUMER', s, group, c)
    end
  end
end
return total
"""

# KEYS: streams. ARGV: group.
DECLARE = """
for _, s in ipairs(KEYS) do
  local r = redis.pcall('XGROUP', 'CREATE', s, ARGV[1], '0', 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP') then
    return redis.error_reply(r.err)
  end
end
return #KEYS
"""

# KEYS: stream, delayed, bytes per queue. ARGV: group, 'stats' for in-flight counts.
DEPTH = """
local out = {}
for i = 1, #KEYS, 3 do
  local row = {redis.call('XLEN', KEYS[i]) + redis.call('ZCARD', KEYS[i + 1]),
               tonumber(redis.call('GET', KEYS[i + 2]) or '0'), 0}
  if ARGV[2] == 'stats' then
    local p = redis.pcall('XPENDING', KEYS[i], ARGV[1])
    if type(p) == 'table' and not p.err then
      row[3] = p[1]
      for _, c in ipairs(p[4] or {}) do
        if c[1] == ARGV[3] then row[3] = row[3] - tonumber(c[2]) end
      end
    end
  end
  out[#out + 1] = row
end
return out
"""

# KEYS: stream, delayed, bytes. ARGV: group.
PURGE = """
local n = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return n
"""

# KEYS: stream, delayed, bytes, dead, dead-letter index.
DELETE = """
for _, e in ipairs(redis.call('XRANGE', KEYS[4], '-', '+')) do
  redis.call('HDEL', KEYS[5], string.match(e[1], '^%d+'))
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""

# KEYS: dead-letter index, stream, bytes, dead. ARGV: dead-letter numbers, or '*' for all.
REPLAY = (
    _LUA_COMMON
    + """
local moved = 0
local function put(e)
  local _, b = body_of(e[2])
  redis.call('XADD', KEYS[2], '*', 'n', 0, 'b', b)
  redis.call('INCRBY', KEYS[3], #b)
  redis.call('XDEL', KEYS[4], e[1])
  redis.call('HDEL', KEYS[1], string.match(e[1], '^%d+'))
  moved = moved + 1
end
if ARGV[1] == '*' then
  while true do
    local batch = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1000)
    if #batch == 0 then break end
    for _, e in ipairs(batch) do put(e) end
  end
else
  for _, n in ipairs(ARGV) do
    local e = redis.call('XRANGE', KEYS[4], n .. '-0', n .. '-0')[1]
    if e then put(e) end
  end
end
return moved
"""
)

# KEYS: streams. ARGV: group, consumer, then per stream: id count, ids.
# What the consumer still holds gets its idle time reset (XCLAIM JUSTID: no new delivery).
EXTEND = """
local group, consumer, i, done = ARGV[1], ARGV[2], 3, 0
for _, s in ipairs(KEYS) do
  local n = tonumber(ARGV[i])
  i = i + 1
  local mine, ids = {}, {}
  for _, e in ipairs(redis.call('XPENDING', s, group, '-', '+', 100000, consumer)) do
    mine[e[1]] = true
  end
  for _ = 1, n do
    if mine[ARGV[i]] then ids[#ids + 1] = ARGV[i] end
    i = i + 1
  end
  if #ids > 0 then
    redis.call('XCLAIM', s, group, consumer, 0, unpack(ids))
    done = done + #ids
  end
end
return done
"""

# KEYS: streams. ARGV: group, neutral owner, consumer, then per stream: count, the entry ids
# the consumer holds. What else is pending for the consumer was handed to a fetch whose answer
# never arrived (the connection dropped): released, so the next fetch takes it at once.
RETURN_LOST = """
local group, neutral, consumer, i, done = ARGV[1], ARGV[2], ARGV[3], 4, 0
for _, s in ipairs(KEYS) do
  local n = tonumber(ARGV[i])
  local held, lost = {}, {s, group, neutral, 0}
  for k = i + 1, i + n do held[ARGV[k]] = true end
  i = i + n + 1
  for _, e in ipairs(redis.call('XPENDING', s, group, '-', '+', 100000, consumer)) do
    if not held[e[1]] then lost[#lost + 1] = e[1] end
  end
  if #lost > 4 then
    done = done + #lost - 4
    lost[#lost + 1] = 'TIME'; lost[#lost + 1] = 1; lost[#lost + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(lost))
  end
end
return done
"""

SCRIPTS = {
    "fetch": FETCH,
    "settle": SETTLE,
    "release": RELEASE,
    "declare": DECLARE,
    "depth": DEPTH,
    "purge": PURGE,
    "delete": DELETE,
    "replay": REPLAY,
    "extend": EXTEND,
    "return_lost": RETURN_LOST,
}
