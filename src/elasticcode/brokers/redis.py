"""Durable queues on Redis Streams (Redis 6.2 or later), through ``redis.asyncio``.

Features
    One stream per queue with one consumer group: competing consumers, each message held by
    one consumer until it is settled. A consumer that dies without settling only delays its
    messages: they go to another consumer once their lease runs out, or at once after
    ``release``. Acknowledged entries are deleted, so ``depth`` (messages and bytes, held and
    delayed ones included) costs O(1). ``settle`` is atomic: outputs are published and inputs
    acknowledged, retried or dead-lettered in one server-side script. Delayed retries wait in
    a sorted set; dead letters keep body, error and delivery count in a stream of their own
    until replayed. Lost connections are retried with backoff (see ``retry_for``). One Redis
    server or a primary with replicas; not Redis Cluster.

Durability
    Redis confirms a write once it is in memory. Messages survive a Redis restart only with
    persistence: with ``appendonly yes`` and ``appendfsync always`` every confirmed write is
    on disk; ``appendfsync everysec`` (Redis' default for AOF) may lose the last second on a
    crash, RDB snapshots alone more. ``wait=N`` also waits until N replicas have each write.

Connection string
    ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://...`` for TLS. redis-py's
    own query options (``ssl_ca_certs``, ``ssl_cert_reqs``, ``socket_timeout``, ...) pass
    through. Passwords never appear in errors or logs.

Options (URL query)
    ``lease=SECONDS`` -- how long a fetched message stays with its consumer before it is
    handed out again (default 300). A consumer known to be dead is released at once.
    ``retry_for=SECONDS`` -- how long an operation retries while Redis cannot be reached,
    with backoff, before it fails (default 30). ``connect`` fails at once.
    ``wait=N`` -- after each write, wait until N replicas confirm it (Redis ``WAIT``; default
    0), for up to ``wait_timeout=SECONDS`` (default 5), else fail.
    ``prefix=NAME`` -- key prefix (default ``ec``): keys are ``NAME:q:{queue}`` and so on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import BrokerError
from .base import Broker, DeadLetter, Delivery, QueueStats, Settlement, require, rotate

log = logging.getLogger("elasticcode.brokers.redis")
T = TypeVar("T")

GROUP = "elasticcode"
#: Owner of released messages: idle since 1970, so the next fetch takes them at once.
RELEASED = "elasticcode:released"
#: Longest single blocking read: new retries, released or expired messages show up by then.
MAX_BLOCK = 1.0
OPTIONS = ("lease", "retry_for", "wait", "wait_timeout", "prefix")

# Stream entries have fields n (deliveries before this entry was added) and b (body).
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
local last, wake = {}, -1 -- nothing: where to wait for new entries, and the next due retry
for i = 1, nq do
  local top = redis.call('XREVRANGE', KEYS[2 * i - 1], '+', '-', 'COUNT', 1)
  last[i] = top[1] and top[1][1] or '0-0'
  local first = redis.call('ZRANGE', KEYS[2 * i], 0, 0, 'WITHSCORES')
  if first[2] then
    local w = math.max(0, tonumber(first[2]) - now)
    if wake < 0 or w < wake then wake = w end
  end
end
return {out, last, wake}
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

SCRIPTS = {
    "fetch": FETCH,
    "settle": SETTLE,
    "release": RELEASE,
    "declare": DECLARE,
    "depth": DEPTH,
    "purge": PURGE,
    "delete": DELETE,
    "replay": REPLAY,
}


class RedisBroker(Broker):
    schemes = ("redis", "rediss")
    counts_in_flight = True
    counts_bytes = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._aioredis = require("redis.asyncio", "redis")
        self._errors = require("redis.exceptions", "redis")
        parts = urlsplit(url)
        self._secrets = [s for s in {parts.password, unquote(parts.password or "")} if s]
        try:
            self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        except ValueError:
            raise BrokerError(f"redis broker URL has a bad port: {self._mask(url)}") from None
        query = parse_qsl(parts.query, keep_blank_values=True)
        mine = {k: v for k, v in query if k in OPTIONS}
        self._client_url = urlunsplit(
            parts._replace(query=urlencode([(k, v) for k, v in query if k not in OPTIONS]))
        )
        self.lease = self._number(mine, "lease", 300.0)
        self.retry_for = self._number(mine, "retry_for", 30.0)
        self.wait = int(self._number(mine, "wait", 0))
        self.wait_timeout = self._number(mine, "wait_timeout", 5.0)
        self.prefix = mine.get("prefix") or "ec"
        self._r: Any = None
        self._scripts: dict[str, Any] = {}
        self._declared: dict[str, None] = {}  # an ordered set
        self._rotation = itertools.count()

    @staticmethod
    def _number(options: dict[str, str], name: str, default: float) -> float:
        try:
            value = float(options.get(name, default))
        except ValueError:
            value = -1.0
        if value < 0:
            raise BrokerError(f"redis broker: {name} must be a number >= 0, not {options[name]!r}")
        return value

    def _mask(self, text: object) -> str:
        out = str(text)
        for secret in self._secrets:
            out = out.replace(secret, "***")
        return out

    # -- keys -------------------------------------------------------------------------------
    def _stream(self, q: str) -> str:
        return f"{self.prefix}:q:{{{q}}}"

    def _keys(self, q: str, *kinds: str) -> list[str]:
        """Keys of one queue: the stream ("") and its "bytes", "delayed" and "dead" keys."""
        return [self._stream(q) + (f":{k}" if k else "") for k in kinds]

    @property
    def _seq(self) -> str:
        return f"{self.prefix}:dead:seq"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:dead:index"

    # -- connection -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._r is not None:
            return
        retry = require("redis.asyncio.retry", "redis").Retry
        backoff = require("redis.backoff", "redis").NoBackoff
        try:  # our own loop retries; the client's must not hide outages
            r = self._aioredis.from_url(self._client_url, retry=retry(backoff(), 0))
        except (ValueError, TypeError) as exc:
            raise BrokerError(f"bad redis broker URL: {self._mask(exc)}") from None
        self._scripts = {name: r.register_script(text) for name, text in SCRIPTS.items()}
        try:
            await r.ping()
        except Exception as exc:
            await r.aclose()
            if isinstance(exc, TypeError):  # an option redis-py does not know
                raise BrokerError(f"bad redis broker URL option: {self._mask(exc)}") from None
            if isinstance(exc, self._errors.AuthenticationError | self._errors.AuthorizationError):
                raise BrokerError(
                    f"Redis at {self._where} refused the credentials: {self._mask(exc)}"
                ) from None
            raise BrokerError(
                f"cannot reach Redis at {self._where}: {self._mask(exc).rstrip('.')}; "
                "is it running?"
            ) from None
        self._r = r

    async def close(self) -> None:
        if self._r is not None:
            r, self._r = self._r, None
            await r.aclose()

    @property
    def _client(self) -> Any:
        if self._r is None:
            raise BrokerError("redis broker is not connected; call connect() first")
        return self._r

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one Redis operation, retrying with backoff while Redis cannot be reached."""
        self._client  # noqa: B018 - fails early when not connected
        e = self._errors
        failing_since: float | None = None
        pause, regrouped = 0.05, False
        while True:
            try:
                result = await fn(*args, **kwargs)
            except (e.AuthenticationError, e.AuthorizationError) as exc:
                raise BrokerError(
                    f"Redis at {self._where} refused the credentials: {self._mask(exc)}"
                ) from None
            except (e.ConnectionError, e.TimeoutError, OSError) as exc:
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.warning(
                        "Redis at %s unreachable (%s); retrying for up to %gs",
                        self._where,
                        self._mask(exc),
                        self.retry_for,
                    )
                left = failing_since + self.retry_for - now
                if left <= 0:
                    raise BrokerError(
                        f"cannot reach Redis at {self._where}: {self._mask(exc).rstrip('.')}; is it "
                        f"running? (gave up after retrying for {self.retry_for:g}s)"
                    ) from None
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 1.0)
                continue
            except e.ResponseError as exc:
                # a restarted Redis without persistence lost the consumer groups
                if "NOGROUP" in str(exc) and self._declared and not regrouped:
                    regrouped = True
                    await self._create_groups(list(self._declared))
                    continue
                hint = "; declare the queue first" if "NOGROUP" in str(exc) else ""
                raise BrokerError(f"Redis at {self._where}: {self._mask(exc)}{hint}") from None
            if failing_since is not None:
                log.warning("Redis at %s reachable again", self._where)
            return result

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._call(self._scripts[name], keys=keys, args=args)

    async def _write(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a writing script; with ``wait=N``, also wait for N replicas to confirm it."""
        if not self.wait:
            return await self._script(name, keys, args)

        async def go() -> Any:
            pipe = self._client.pipeline(transaction=False)
            await self._scripts[name](keys=keys, args=args, client=pipe)
            pipe.wait(self.wait, int(self.wait_timeout * 1000))
            return await pipe.execute()

        result, replicas = await self._call(go)
        if replicas < self.wait:
            raise BrokerError(
                f"only {replicas} of {self.wait} Redis replica(s) confirmed a write within "
                f"{self.wait_timeout:g}s (wait={self.wait})"
            )
        return result

    async def _create_groups(self, queues: Sequence[str]) -> None:
        await self._script("declare", [self._stream(q) for q in queues], [GROUP])

    # -- contract ---------------------------------------------------------------------------
    async def declare(self, queues: Sequence[str]) -> None:
        if queues:
            await self._create_groups(queues)
            self._declared.update(dict.fromkeys(queues))

    async def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        await self.settle(Settlement(publish=list(items)))

    async def fetch(
        self, queues: Sequence[str], limit: int, consumer: str, timeout: float
    ) -> list[Delivery]:
        queues = list(queues)
        if limit <= 0 or not queues:
            return []
        queues = rotate(queues, self._rotation)
        keys = [k for q in queues for k in self._keys(q, "", "delayed")]
        args = [GROUP, consumer, limit, int(self.lease * 1000)]
        deadline = time.monotonic() + timeout
        while True:
            got, *idle = await self._script("fetch", keys, args)
            if got:
                return [
                    Delivery(queues[i - 1], bytes(body), (_text(eid), consumer), int(n))
                    for i, eid, body, n in got
                ]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            last, wake = idle
            if wake >= 0:
                left = min(left, wake / 1000)
            block = max(1, int(min(left, MAX_BLOCK) * 1000))
            # wait (without taking anything) for an entry newer than the newest one seen
            streams = {self._stream(q): _text(eid) for q, eid in zip(queues, last, strict=True)}
            await self._call(self._client.xread, streams, count=1, block=block)

    def _check(self, items: Sequence[tuple[str, bytes]]) -> None:
        for _, body in items:
            if len(body) > self.max_message_bytes:
                raise BrokerError(
                    f"message of {len(body):,} bytes exceeds the broker limit of "
                    f"{self.max_message_bytes:,} bytes"
                )

    async def settle(self, settlement: Settlement) -> None:
        self._check(settlement.publish)
        numbers: dict[str, int] = {}
        #: (queue, owner) -> the four lists of a section: P, A, R, D fields
        sections: dict[tuple[str, str], tuple[list[Any], ...]] = {}

        def section(queue: str, owner: str) -> tuple[list[Any], ...]:
            numbers.setdefault(queue, len(numbers) + 1)
            return sections.setdefault((queue, owner), ([], [], [], []))

        for queue, body in settlement.publish:
            section(queue, "")[0].append(body)
        for d in settlement.ack:
            section(d.queue, d.tag[1])[1].extend((d.tag[0], len(d.body)))
        for d, delay, _ in settlement.retry:
            section(d.queue, d.tag[1])[2].extend((d.tag[0], max(0, int(delay * 1000)), d.delivery))
        for d, error in settlement.dead:
            section(d.queue, d.tag[1])[3].extend((d.tag[0], len(d.body), d.delivery, error))
        if not sections:
            return
        args: list[Any] = [GROUP, len(numbers), *numbers]
        for (queue, owner), (p, a, r, dead) in sections.items():
            args += [numbers[queue], owner, len(p), len(a) // 2, len(r) // 3, len(dead) // 4]
            args += [*p, *a, *r, *dead]
        keys = [self._seq, self._index]
        keys += [k for q in numbers for k in self._keys(q, "", "bytes", "delayed", "dead")]
        await self._write("settle", keys, args)

    async def _depth(self, queues: Sequence[str], stats: bool) -> list[list[int]]:
        keys = [k for q in queues for k in self._keys(q, "", "delayed", "bytes")]
        if not keys:
            return []
        rows = await self._script("depth", keys, [GROUP, "stats" if stats else "", RELEASED])
        return [[int(v) for v in row] for row in rows]

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        rows = await self._depth(queues, stats=True)
        return {q: QueueStats(*row) for q, row in zip(queues, rows, strict=True)}

    async def depth(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        rows = await self._depth(queues, stats=False)
        return {q: (row[0], row[1]) for q, row in zip(queues, rows, strict=True)}

    async def release(self, consumer: str) -> int:
        keys = [self._stream(q) for q in self._declared]
        return int(await self._script("release", keys, [GROUP, RELEASED, consumer]))

    async def release_all(self) -> int:
        """Release every message held in this broker's declared queues (after a restart)."""
        return await self.release("")

    async def delete(self, queues: Sequence[str]) -> None:
        for q in queues:
            keys = [*self._keys(q, "", "delayed", "bytes", "dead"), self._index]
            await self._write("delete", keys, [])
            self._declared.pop(q, None)

    async def purge(self, queue: str) -> int:
        keys = self._keys(queue, "", "delayed", "bytes")
        return int(await self._write("purge", keys, [GROUP]))

    async def peek(self, queue: str, limit: int = 10) -> list[bytes]:
        rows = await self._call(self._client.xrange, self._stream(queue), count=limit)
        return [bytes(fields.get(b"b", b"")) for _, fields in rows]

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for q in [queue] if queue is not None else list(self._declared):
            (dead,) = self._keys(q, "dead")
            rows = await self._call(self._client.xrange, dead, count=limit)
            out += [
                DeadLetter(
                    int(_text(eid).partition("-")[0]),
                    q,
                    bytes(f.get(b"b", b"")),
                    _text(f.get(b"e", b"")),
                    int(f.get(b"d", 0)),
                    float(f.get(b"t", 0)),
                )
                for eid, f in rows
            ]
        return sorted(out, key=lambda d: int(d.id))[:limit]

    async def replay(self, ids: Sequence[Any] | None = None, queue: str | None = None) -> int:
        jobs: dict[str, list[str]] = {}
        if ids is None:
            jobs = {q: ["*"] for q in ([queue] if queue is not None else self._declared)}
        elif ids:
            numbers = [str(int(i)) for i in ids]
            owners = await self._call(self._client.hmget, self._index, numbers)
            for n, owner in zip(numbers, owners, strict=True):
                if owner is not None and queue in (None, _text(owner)):
                    jobs.setdefault(_text(owner), []).append(n)
        total = 0
        for q, args in jobs.items():
            keys = [self._index, *self._keys(q, "", "bytes", "dead")]
            total += int(await self._write("replay", keys, args))
        return total


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
