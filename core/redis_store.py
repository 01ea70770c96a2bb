"""The store in Redis (a single server, a Cluster, or a Sentinel-managed master), shared by replicas.

Every failure leaves here as :class:`StoreError`. Each command touches one key, so keys need no hash
tags to be Cluster-safe; the atomic ones are single commands (``SET NX PX``, ``INCR``), so no replica
can race another between a read and a write. An allocation is one script (``EVALSHA``): one round trip,
atomic on the server. It touches the call's keys and the pool's counter, which a Cluster keeps in
different slots (a call's key must not depend on the pool a config picks for it, and one counter serves
every call of its pool), so on a Cluster it goes in steps instead: a claim, the counter, the record.

At most ``max_connections`` connections send at once. A call that finds them all busy waits for one,
up to ``timeout_s``, and then fails as :class:`StoreBusy`: a full pool is load, not an outage. Once on
the wire, a call has ``timeout_s`` more to be answered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
from typing import Any

from hiredis import pack_command
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from core.errors import StoreBusy, StoreError, StoreRefused
from core.store import PENDING, Allocation, choose_in_steps

# Store.allocate in one step. KEYS: the call's key and the other keys of its record (none when there is
# no call to claim), the counter when there is one, the sticky entry when there is one. ARGV: the TTL in
# ms, the record's head and tail, the packed pool (core.store.Pool; empty: no pool), how many record
# keys, whether there is a counter ('1' or ''), the sticky entry's TTL in ms ('' without), and the index
# chosen in process for a pool without a counter. Answers what the call's key holds, or the turn it took
# (0 without a counter), or -1 - the index the sticky entry gave.
ALLOCATE = b"""
local records = tonumber(ARGV[5])
if records > 0 then
  local held = redis.call('GET', KEYS[1])
  if held then return held end
end
local answer, record, pool = 0, ARGV[2], ARGV[4]
if pool ~= '' then
  local n = struct.unpack('>I4', pool)
  local function choice(i)
    local from = struct.unpack('>I4', pool, 5 + 4 * i)
    local to = struct.unpack('>I4', pool, 9 + 4 * i)
    return string.sub(pool, from, to - 1)
  end
  local index, sticky = nil, nil
  if ARGV[7] ~= '' then
    sticky = KEYS[#KEYS]
    local had = redis.call('GET', sticky)
    if had then
      for i = 0, n - 1 do
        if choice(i) == had then index = i; answer = -1 - i; break end
      end
    end
  end
  if index == nil then
    if ARGV[6] == '1' then
      answer = redis.call('INCR', KEYS[records + 1])
      local m = struct.unpack('>I4', pool, 5 + 4 * (n + 1))
      index = struct.unpack('>I2', pool, 9 + 4 * (n + 1) + 2 * ((answer - 1) % m))
    else
      index = tonumber(ARGV[8])
    end
  end
  local chosen = choice(index)
  record = ARGV[2] .. chosen .. ARGV[3]
  if sticky then redis.call('SET', sticky, chosen, 'PX', ARGV[7]) end
end
for k = 1, records do
  redis.call('SET', KEYS[k], record, 'PX', ARGV[1])
end
return answer
"""
ALLOCATE_SHA = hashlib.sha1(ALLOCATE).hexdigest()

# See Patience: hops through the event loop's ready queue between a timer falling due and the cancel.
_HOPS = 3


def _no_retry() -> Retry:
    # A retry inside the client would spend the caller's deadline twice; the failover store decides.
    return Retry(NoBackoff(), 0)


class Patience:
    """``asyncio.timeout(delay)`` that, once due, lets the event loop read its sockets once more before
    it cancels.

    A reply that reached the socket in time is not late. But when one pass of the loop takes long (a
    burst of requests parsed and answered in one go), the timers that fell due meanwhile fire before
    the tasks those replies woke get to run (libuv runs timers right after it polls the sockets), and a
    plain timeout would cancel calls that Redis had answered. The hops span one more poll of the
    sockets and the wakeups it queued; a call still unanswered then has truly timed out.
    """

    __slots__ = ("_delay", "_handle", "_loop", "_timeout")

    def __init__(self, delay: float) -> None:
        self._delay = delay

    async def __aenter__(self) -> Patience:  # noqa: PYI034 - final in effect
        self._loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._handle = self._loop.call_later(self._delay, self._hop, _HOPS)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        self._handle.cancel()
        return await self._timeout.__aexit__(*exc)

    def _hop(self, left: int) -> None:
        if left:
            self._handle = self._loop.call_soon(self._hop, left - 1)
        else:
            self._timeout.reschedule(self._loop.time())


class _Op:
    """One call waiting for its answer: in the queue until a sender takes it, then on the wire."""

    __slots__ = ("args", "future", "sent")

    def __init__(self, args: tuple, future: asyncio.Future) -> None:
        self.args = args
        self.future = future
        self.sent = False


class RedisStore:
    """:class:`core.store.Store` on Redis. Keys are ``prefix + key``.

    Calls are sent in batches: whatever calls are waiting when a connection is free go together, as one
    pipeline (one write, one read), on at most ``max_connections`` connections at once. Under a burst
    this is what keeps up: each command sent alone costs the client a write, a read and a wakeup, and a
    burst of hundreds of new calls would queue for longer than any short timeout. The commands stay
    independent (no transaction): each gets its own answer or error.
    """

    shared = True
    BATCH = 256
    """Most calls sent in one pipeline."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        timeout_s: float,
        sentinel: Sentinel | None = None,
        max_connections: int = 64,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout_s
        self._sentinel = sentinel
        self.max_connections = max_connections
        self._queue: collections.deque[_Op] = collections.deque()
        self._senders: set[asyncio.Task] = set()
        self._starting = False
        self._cluster = isinstance(client, RedisCluster)
        # The async Cluster client loads its slot map on first use; many first commands at once would
        # each start loading it and trip over one another, so the first ones wait for one load.
        self._init_lock: asyncio.Lock | None = asyncio.Lock() if self._cluster else None
        # Outside a Cluster, senders use connections of their own (see _exchange); ping keeps the client's.
        self._pool = None if self._cluster else client.connection_pool
        self._idle: list[Any] = []
        self._connections: list[Any] = []

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str,
        timeout_s: float,
        cluster: bool = False,
        sentinels: list[str] | tuple[str, ...] = (),
        master: str = "",
        max_connections: int = 64,
    ) -> RedisStore:
        """A store for a URL (``redis://``, ``rediss://``, ``unix://``), a Cluster node, or Sentinels,
        sending on at most ``max_connections`` connections. Nothing is connected until the first call."""
        # The pool's own timeouts stay off: Patience bounds every call, connecting included, and the
        # client's would fire first, and impatiently. No CLIENT SETINFO: a new connection costs one
        # round trip less, which counts when a burst opens many at once.
        options: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": None,
            "driver_info": None,
        }
        # One connection more than the senders use, for ping (see there).
        size = max_connections + 1
        if sentinels:
            hosts = []
            for item in sentinels:
                host, _, port = item.rpartition(":")
                hosts.append((host or item, int(port or 26379)))
            asking = {
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
                "retry": _no_retry(),
                "driver_info": None,
            }
            sentinel = Sentinel(hosts, sentinel_kwargs=asking, retry=_no_retry(), **options)
            client = sentinel.master_for(master, retry=_no_retry(), max_connections=size)
            return cls(client, prefix, timeout_s, sentinel, max_connections)
        if cluster:
            # max_connections is per node; the senders stay below it on all nodes together.
            client = RedisCluster.from_url(url, retry=_no_retry(), max_connections=size, **options)
            return cls(client, prefix, timeout_s, max_connections=max_connections)
        pool = BlockingConnectionPool.from_url(
            url, max_connections=size, timeout=timeout_s, retry=_no_retry(), **options
        )
        return cls(Redis.from_pool(pool), prefix, timeout_s, max_connections=max_connections)

    async def _call(self, *args: Any) -> Any:
        """Queue one command and wait for its answer: up to ``timeout_s`` for a connection (then
        :class:`StoreBusy`: it was never sent), and up to ``timeout_s`` more once it is on the wire."""
        op = _Op(args, asyncio.get_running_loop().create_future())
        self._queue.append(op)
        self._wake()
        try:
            try:
                async with Patience(self._timeout):
                    return await asyncio.shield(op.future)
            except TimeoutError:
                if op.sent:
                    return await op.future  # on the wire: its sender bounds it
                op.future.cancel()  # never sent, and now never will be
                raise StoreBusy(
                    f"redis {args[0]}: all {self.max_connections} connections stayed busy for "
                    f"{self._timeout * 1000:g} ms"
                ) from None
        except asyncio.CancelledError:
            op.future.cancel()  # cut short by the caller: if unsent, it never will be; if sent, its answer
            raise  # goes nowhere

    def _wake(self) -> None:
        # One sender starting at a time: it takes every call queued by then, so calls made in one pass
        # of the event loop go out together. More senders start while earlier ones are on the wire.
        if self._starting or len(self._senders) >= self.max_connections:
            return
        self._starting = True
        task = asyncio.get_running_loop().create_task(self._send())
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    async def _send(self) -> None:
        self._starting = False
        try:
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.BATCH:
                    op = self._queue.popleft()
                    if not op.future.done():
                        op.sent = True
                        batch.append(op)
                if not batch:
                    return
                self._wake()  # calls still queued get a sender of their own, if one is free
                await self._pipeline(batch)
        finally:
            if self._queue:
                self._wake()

    async def _pipeline(self, batch: list[_Op]) -> None:
        try:
            async with Patience(self._timeout):
                if self._pool is not None:
                    answers = await self._exchange(batch)
                else:
                    await self._initialized()
                    if len(batch) == 1:  # a pipeline of one costs more than the command alone
                        answers = [await self._client.execute_command(*batch[0].args)]
                    else:
                        pipe = self._client.pipeline(transaction=False)
                        for op in batch:
                            pipe.execute_command(*op.args)
                        answers = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            answers = [exc] * len(batch)
        except BaseException as exc:  # the store closing, or a fault: every call still hears back
            self._settle(batch, [exc] * len(batch))
            raise
        self._settle(batch, answers)

    async def _exchange(self, batch: list[_Op]) -> list[Any]:
        """Send ``batch`` on a connection of the store's own and read its answers (one write, one read).

        The client's own ``execute_command`` takes a connection from its pool for each call, checks it
        for stray data, wraps the call in retries and records metrics we do not use: about 100 us of CPU
        a call, several times the round trip itself. A sender holds its connection for the whole
        exchange, so one is never shared; a failed or cut-short exchange disconnects it, and it connects
        again when next taken. Answers are Redis's own (``b"OK"``, not True): nothing here needs the
        client's conversions.
        """
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = self._pool.make_connection()
            self._connections.append(conn)
        try:
            await conn.connect()  # at once when connected
            # hiredis packs in C what redis-py packs in Python, arguments encoded alike (UTF-8, ints as
            # digits): about 1 us a command instead of 8.
            if len(batch) == 1:
                packed = pack_command(batch[0].args)
            else:
                packed = b"".join([pack_command(op.args) for op in batch])
            await conn.send_packed_command(packed, check_health=False)
            answers: list[Any] = []
            for _ in batch:
                try:
                    answers.append(await conn.read_response())
                except ResponseError as exc:  # read whole: the connection goes on
                    answers.append(exc)
            return answers
        except BaseException:
            # Whatever was cut short, no answer of this exchange may be read as the next one's.
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)

    @staticmethod
    def _settle(batch: list[_Op], answers: list[Any]) -> None:
        for op, answer in zip(batch, answers, strict=True):
            if op.future.done():
                continue  # its caller stopped waiting
            if isinstance(answer, BaseException):
                kind = StoreRefused if isinstance(answer, ResponseError) else StoreError
                error = kind(f"redis {op.args[0]}: {answer.__class__.__name__}: {answer}")
                error.__cause__ = answer
                op.future.set_exception(error)
            else:
                op.future.set_result(answer)

    async def _initialized(self) -> None:
        if self._init_lock is not None:
            async with self._init_lock:
                await self._client.initialize()
            self._init_lock = None

    async def _direct(self, *args: Any) -> Any:
        try:
            async with Patience(self._timeout):
                await self._initialized()
                return await self._client.execute_command(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            kind = StoreRefused if isinstance(exc, ResponseError) else StoreError
            raise kind(f"redis {args[0]}: {exc.__class__.__name__}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call("GET", self._prefix + key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._call("SET", self._prefix + key, value, "PX", max(1, int(ttl_s * 1000)))

    async def add(self, key: str, value: bytes, ttl_s: float) -> bool:
        return bool(await self._call("SET", self._prefix + key, value, "PX", max(1, int(ttl_s * 1000)), "NX"))

    async def delete(self, key: str) -> None:
        await self._call("DEL", self._prefix + key)

    async def incr(self, key: str) -> int:
        return int(await self._call("INCR", self._prefix + key))

    async def allocate(self, allocation: Allocation) -> int | bytes:
        if self._cluster:
            return await self._allocate_in_steps(allocation)
        a, prefix = allocation, self._prefix
        keys = [prefix + a.key, *[prefix + k for k in a.also]] if a.key else []
        records = len(keys)
        pool = counted = sticky_ms = b""
        if a.pool is not None:
            pool = a.pool.packed
            if a.counter is not None:
                keys.append(prefix + a.counter)
                counted = b"1"
            if a.sticky is not None:
                keys.append(prefix + a.sticky)
                sticky_ms = max(1, int(a.sticky_s * 1000))
        args = (
            len(keys),
            *keys,
            max(1, int(a.ttl_s * 1000)),
            a.head,
            a.tail,
            pool,
            records,
            counted,
            sticky_ms,
            a.pick,
        )
        try:
            return await self._call("EVALSHA", ALLOCATE_SHA, *args)
        except StoreRefused as exc:
            if not isinstance(exc.__cause__, NoScriptError):
                raise
        # Redis does not hold the script (restarted, flushed, failed over): EVAL sends it, and keeps it.
        return await self._call("EVAL", ALLOCATE, *args)

    async def _allocate_in_steps(self, a: Allocation) -> int | bytes:
        """Allocate with single-key commands: claim the call's key (a PENDING token, for ``lease_s``),
        choose the number (read the sticky entry, else advance the counter; then set the sticky entry),
        then write the record over the claim. Calls of the same key meanwhile find the claim and wait
        for the record. Two first calls of one sticky caller at once may both take a turn: the later
        entry wins."""
        if not a.key:
            return (await choose_in_steps(self, a))[1]
        token = PENDING + os.urandom(16)
        while True:
            try:
                if await self.add(a.key, token, a.lease_s):
                    break
            except StoreBusy:
                raise  # never sent
            except StoreError:
                # Sent, but its answer was lost: the claim may have landed. Read back whose it is; taking
                # it for ours blindly could allocate twice, taking it for another's would wait on nobody.
                pass
            held = await self.get(a.key)
            if held == token:
                break  # ours: it landed
            if held is not None:
                return held
            # The claim lapsed or was given up just now: try again at once.
        try:
            index, answer = await choose_in_steps(self, a)
        except BaseException:
            # No number, no record: drop the claim so that a retry need not wait for it to lapse.
            await asyncio.shield(self._forget(a.key))
            raise
        record = a.record(index)
        keys = [a.key, *a.also]
        # The turn is taken: the allocation is made, and a failed write fails nothing else. A SET again
        # is harmless, so each is tried twice; a claim never overwritten lapses with its lease.
        for _ in range(2):
            results = await asyncio.gather(
                *(self.set(k, record, a.ttl_s) for k in keys), return_exceptions=True
            )
            for result in results:
                if result is not None and not isinstance(result, StoreError):
                    raise result
            keys = [k for k, result in zip(keys, results, strict=True) if result is not None]
            if not keys:
                break
        return answer

    async def _forget(self, key: str) -> None:
        with contextlib.suppress(StoreError):
            await self.delete(key)

    async def ping(self) -> None:
        # Past the queue, on the pool's spare connection: whether Redis answers is asked of Redis itself,
        # not of the calls ahead, so a busy pool never looks like an outage.
        await self._direct("PING")

    async def close(self) -> None:
        for task in list(self._senders):
            task.cancel()
        self._starting = False
        while self._queue:
            self._queue.popleft().future.cancel()
        for conn in self._connections:
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect()
        self._connections.clear()
        self._idle.clear()
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass
