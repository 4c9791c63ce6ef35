"""Clients of a Raft cluster: asyncio (:class:`AsyncRaftClient`) and blocking (:class:`RaftClient`).

A client finds the leader, follows redirects, retries with backoff within a deadline, and
coalesces concurrent calls into one Ray call. Each client is a session: writes carry
``(client_id, seq)``, so a write retried after a timeout or a leader change is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Self

import ray

from .config import RaftConfig
from .envelope import dumps, encode_query, encode_register, encode_request, loads
from .errors import (
    ClusterUnavailableError,
    LeadershipLostError,
    NotLeaderError,
    RaftError,
    RaftTimeoutError,
    SessionExpiredError,
    UnknownOutcomeError,
)
from .replica import FOLLOWER, LINEARIZABLE, READ_MODES, STALE

#: per-attempt cap on waiting for one node, so a dead or partitioned node is left quickly
_ATTEMPT_TIMEOUT = 2.0
_BACKOFF_START, _BACKOFF_MAX = 0.01, 0.1


class _Pending:
    """One call waiting for its outcome until its deadline."""

    __slots__ = ("deadline", "future", "in_flight", "is_write", "maybe_applied", "payload", "request")

    def __init__(self, payload: Any, future: asyncio.Future, deadline: float, is_write: bool,
                 request: tuple[Any, int, int, Any] | None = None):
        self.payload = payload
        self.request = request  # a write's (client id, seq, ack, command), to send it again in a new session
        self.future = future
        self.deadline = deadline
        self.is_write = is_write
        self.maybe_applied = False  # an earlier attempt may have reached a leader
        self.in_flight = False  # an attempt is under way now

    def resolve(self, value: Any) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def expire(self) -> None:
        if self.is_write and (self.maybe_applied or self.in_flight):
            self.fail(UnknownOutcomeError("deadline passed; the write may or may not have been applied"))
        else:
            self.fail(RaftTimeoutError("deadline passed before the cluster answered"))


class AsyncRaftClient:
    """An asyncio client session with a Raft cluster.

    Get one from :meth:`RaftCluster.async_client <raft_actors.cluster.RaftCluster.async_client>`.
    Use it from one event loop. Concurrent :meth:`submit` / :meth:`query` calls made in the
    same loop iteration travel to the cluster in one Ray call. Every call ends by its deadline:
    with its result or a :class:`~raft_actors.errors.RaftError`.
    """

    def __init__(self, nodes: Callable[[], Mapping[int, Any]], config: RaftConfig,
                 is_closed: Callable[[], bool] = lambda: False):
        self._nodes = nodes
        self._config = config
        self._cluster_closed = is_closed
        self._closed = False
        self.client_id: int | None = None  # the session the cluster opened for this client
        self._opening: asyncio.Task | None = None
        self._seq = itertools.count(1)
        self._outstanding: set[int] = set()
        self._outstanding_heap: list[int] = []  # the same seqs, plus finished ones not yet popped
        self._leader = 0
        self._rr = itertools.count()
        self._writes: list[_Pending] = []
        self._reads: dict[str, list[_Pending]] = {m: [] for m in READ_MODES}
        self._pending: set[_Pending] = set()
        self._deadlines: list[tuple[float, int, _Pending]] = []  # a heap
        self._order = itertools.count()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at: float | None = None
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def leader_hint(self) -> int:
        """The node this client currently believes is the leader (0: unknown)."""
        return self._leader

    # ------------------------------------------------------------------ API
    async def submit(self, command: Any, timeout: float | None = None) -> Any:
        """Commit ``command`` through the log and return the state machine's result.

        Raises :class:`~raft_actors.errors.CommandRejectedError` (malformed or unpicklable
        command: nothing was written), :class:`~raft_actors.errors.CommandError` (the state
        machine raised: the command is committed and this is its result),
        :class:`~raft_actors.errors.UnknownOutcomeError` (deadline passed, the write may or may
        not have been applied), :class:`~raft_actors.errors.RaftTimeoutError` (deadline passed
        before the write could reach a leader), :class:`~raft_actors.errors.ClusterUnavailableError`.
        """
        self._check_open()
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        session = self.client_id if self.client_id is not None else await self._session(timeout)
        seq = next(self._seq)
        ack = self._lowest_outstanding(seq)
        payload = encode_request(session, seq, ack, command)  # raises CommandRejectedError
        self._outstanding.add(seq)
        heapq.heappush(self._outstanding_heap, seq)
        try:
            return await self._enqueue(self._writes, payload, max(1e-3, deadline - time.monotonic()), is_write=True,
                                       request=(session, seq, ack, command))
        finally:
            self._outstanding.discard(seq)

    def _lowest_outstanding(self, default: int) -> int:
        """The lowest seq still awaiting its outcome (the client's ``ack``), in O(log n)."""
        heap = self._outstanding_heap
        while heap and heap[0] not in self._outstanding:
            heapq.heappop(heap)
        return heap[0] if heap else default

    async def _session(self, timeout: float) -> int:
        """This client's session id, opening a session first if it has none (one opening at a
        time, shared by concurrent calls). A session costs one committed entry."""
        while self.client_id is None:
            if self._opening is None or self._opening.done():
                self._opening = asyncio.get_running_loop().create_task(self._open(timeout))
            await asyncio.shield(self._opening)
        return self.client_id

    async def _open(self, timeout: float) -> None:
        try:
            self.client_id = await self._enqueue(self._writes, encode_register(), timeout, is_write=True)
        except UnknownOutcomeError as exc:  # nothing of the caller's was sent: plainly a timeout
            raise RaftTimeoutError(f"could not open a client session: {exc}") from None

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._config.request_timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return timeout

    async def query(self, query: Any, consistency: str = LINEARIZABLE, timeout: float | None = None) -> Any:
        """Answer ``query`` from the state machine.

        ``consistency`` chooses the trade-off the CAP theorem names:

        - ``"linearizable"`` (default): served by the leader after a ReadIndex round confirms
          its leadership; sees every write acknowledged before the call. Unavailable without
          a majority.
        - ``"follower"``: served by a follower once it has applied the leader's read index;
          just as linearizable, and it takes read load off the leader.
        - ``"stale"``: served at once by any reachable node from what it has applied; works in
          a minority partition, but may miss recent writes.
        """
        self._check_open()
        if consistency not in READ_MODES:
            raise ValueError(f"consistency must be one of {READ_MODES}, got {consistency!r}")
        payload = encode_query(query)  # raises CommandRejectedError
        return await self._enqueue(self._reads[consistency], payload, timeout, is_write=False)

    async def aclose(self) -> None:
        """Fail every pending call with :class:`ClusterUnavailableError` and stop this client."""
        self._closed = True
        self._fail_pending(ClusterUnavailableError("the client was closed"))
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ batching
    async def _enqueue(self, queue: list[_Pending], payload: bytes, timeout: float | None, is_write: bool,
                       request: tuple[Any, int, int, Any] | None = None) -> Any:
        timeout = self._timeout(timeout)
        loop = asyncio.get_running_loop()
        it = _Pending(payload, loop.create_future(), time.monotonic() + timeout, is_write, request)
        self._watch(loop, it)
        self._pending.add(it)
        queue.append(it)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            return await it.future
        finally:
            self._pending.discard(it)

    def _watch(self, loop: asyncio.AbstractEventLoop, it: _Pending) -> None:
        """Expire ``it`` at its deadline. One timer serves every pending call (the earliest
        deadline): a timer per call costs more than the call itself at thousands per second."""
        heapq.heappush(self._deadlines, (it.deadline, next(self._order), it))
        if len(self._deadlines) > 2 * len(self._pending) + 1024:  # forget finished calls
            self._deadlines = [d for d in self._deadlines if not d[2].future.done()]
            heapq.heapify(self._deadlines)
        if self._sweep_at is None or it.deadline < self._sweep_at:
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._sweep_at = it.deadline
            self._sweeper = loop.call_at(it.deadline, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            heapq.heappop(heap)[2].expire()  # expiring a finished call does nothing
        self._sweeper = self._sweep_at = None
        if heap:
            self._sweep_at = heap[0][0]
            self._sweeper = asyncio.get_running_loop().call_at(self._sweep_at, self._sweep)

    def _flush(self) -> None:
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        if self._writes:
            batch, self._writes = self._writes, []
            self._spawn(loop, self._run(batch, None))
        for mode, queue in self._reads.items():
            if queue:
                self._reads[mode] = []
                self._spawn(loop, self._run(queue, mode))

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ retry loop
    async def _run(self, items: list[_Pending], mode: str | None) -> None:
        try:
            await self._attempts(items, mode)
        except asyncio.CancelledError:
            self._fail(items, ClusterUnavailableError("the client was closed"))
            raise
        except Exception as exc:  # noqa: BLE001 - no call may be left hanging
            self._fail(items, RaftError(f"internal client error: {type(exc).__name__}: {exc}"))

    async def _attempts(self, items: list[_Pending], mode: str | None) -> None:
        backoff = _BACKOFF_START
        dead: set[int] = set()
        while True:
            items = [it for it in items if not it.future.done()]
            if not items:
                return
            if self._closed or self._cluster_closed():
                self._fail(items, ClusterUnavailableError("the cluster has been shut down"))
                return
            nodes = self._nodes()
            if not nodes or dead >= set(nodes):
                self._fail(items, ClusterUnavailableError(f"every node of the cluster is dead: {sorted(nodes)}"))
                return
            target = self._pick(nodes, mode, dead)
            now = time.monotonic()
            budget = min(_ATTEMPT_TIMEOUT, max(it.deadline for it in items) - now)
            if budget <= 0:
                for it in items:
                    it.expire()  # before their timers get to run
                return
            for it in items:
                it.in_flight = True
            try:
                outcomes = loads(await asyncio.wait_for(self._call(nodes[target], items, mode), budget))
            except ray.exceptions.RayTaskError as exc:
                # the node's method itself failed: deterministic, so do not retry
                for it in items:
                    text = f"node {target} failed to handle the call: {exc}"
                    it.fail(UnknownOutcomeError(text) if it.is_write else RaftError(text))
                return
            except (TimeoutError, ray.exceptions.RayError) as exc:
                for it in items:
                    it.in_flight = False
                    it.maybe_applied = True  # no answer: the write may have reached a leader
                if isinstance(exc, ray.exceptions.ActorDiedError):
                    dead.add(target)
                self._leader = 0
                await asyncio.sleep(backoff * random.random())
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            dead.discard(target)
            retry: list[_Pending] = []
            expired: list[_Pending] = []
            hint = 0
            for it, out in zip(items, outcomes):
                it.in_flight = False
                if out.ok:
                    it.resolve(out.value)
                elif isinstance(out.value, SessionExpiredError):
                    if it.maybe_applied or it.request is None:
                        it.fail(out.value)  # an earlier copy may have been applied: unknown
                    else:
                        expired.append(it)  # never sent before, so not applied: send it afresh
                elif isinstance(out.value, NotLeaderError | RaftTimeoutError):
                    # a plain NotLeaderError was refused before proposing; these two were not
                    it.maybe_applied |= isinstance(out.value, LeadershipLostError | RaftTimeoutError)
                    hint = getattr(out.value, "leader_hint", 0) or hint
                    retry.append(it)
                else:
                    it.fail(out.value)
            if retry:
                if mode in (None, LINEARIZABLE):
                    self._leader = hint if hint in nodes and hint != target else 0
                if not self._leader or mode not in (None, LINEARIZABLE):
                    await asyncio.sleep(backoff * random.random())
                    backoff = min(backoff * 2, _BACKOFF_MAX)
            elif mode in (None, LINEARIZABLE):
                self._leader = target
            if expired:
                retry += await self._in_new_session(expired)
            items = retry

    async def _in_new_session(self, items: list[_Pending]) -> list[_Pending]:
        """The cluster expired the session ``items`` were sent in, and none of them had been
        sent before: open a new session (once) and encode them again in it."""
        for it in items:
            assert it.request is not None
            if it.request[0] == self.client_id:
                self.client_id = None
        try:
            session = await self._session(max(1e-3, max(it.deadline for it in items) - time.monotonic()))
        except RaftError as exc:
            self._fail(items, exc)
            return []
        for it in items:
            assert it.request is not None
            _, seq, ack, command = it.request
            it.request = (session, seq, ack, command)
            it.payload = encode_request(session, seq, ack, command)
        return items

    def _pick(self, nodes: Mapping[int, Any], mode: str | None, dead: set[int]) -> int:
        alive = [i for i in sorted(nodes) if i not in dead] or sorted(nodes)
        if mode in (None, LINEARIZABLE):
            if self._leader in nodes and self._leader not in dead:
                return self._leader
            return alive[next(self._rr) % len(alive)]
        if mode == FOLLOWER:
            others = [i for i in alive if i != self._leader] or alive
            return others[next(self._rr) % len(others)]
        assert mode == STALE
        return alive[next(self._rr) % len(alive)]

    @staticmethod
    async def _call(handle: Any, items: list[_Pending], mode: str | None) -> bytes:
        payload = dumps([it.payload for it in items])
        if mode is None:
            return await handle.submit.remote(payload)
        return await handle.read.remote(payload, mode)

    @staticmethod
    def _fail(items: list[_Pending], exc: Exception) -> None:
        for it in items:
            it.fail(exc)

    def _fail_pending(self, exc: Exception) -> None:
        self._fail(list(self._pending), exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterUnavailableError("the client was closed")
        if self._cluster_closed():
            raise ClusterUnavailableError("the cluster has been shut down")


class RaftClient:
    """A blocking client session; safe to share between threads.

    Calls run on a private event loop thread, so calls made concurrently from several threads
    are batched into shared Ray calls. See :class:`AsyncRaftClient` for the semantics.
    """

    def __init__(self, nodes: Callable[[], Mapping[int, Any]], config: RaftConfig,
                 is_closed: Callable[[], bool] = lambda: False):
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raft-client", daemon=True)
        self._thread.start()
        self._async = AsyncRaftClient(nodes, config, is_closed)
        self._closed = False
        # stop the loop thread when the client is garbage collected without close()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, self._thread)

    @property
    def client_id(self) -> int:
        return self._async.client_id

    @property
    def leader_hint(self) -> int:
        return self._async.leader_hint

    def submit(self, command: Any, timeout: float | None = None) -> Any:
        """Commit ``command`` and return its result (see :meth:`AsyncRaftClient.submit`)."""
        return self._wait(self._async.submit(command, timeout))

    def submit_async(self, command: Any, timeout: float | None = None) -> ConcurrentFuture:
        """Like :meth:`submit`, but return a ``concurrent.futures.Future`` at once."""
        self._check_open()
        return asyncio.run_coroutine_threadsafe(self._async.submit(command, timeout), self._loop)

    def query(self, query: Any, consistency: str = LINEARIZABLE, timeout: float | None = None) -> Any:
        """Answer ``query`` (see :meth:`AsyncRaftClient.query` for ``consistency``)."""
        return self._wait(self._async.query(query, consistency, timeout))

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterUnavailableError("the client was closed")

    def _wait(self, coro: Any) -> Any:
        try:
            self._check_open()
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except BaseException:
            coro.close()
            raise
        # the call's own deadline always settles it; the margin only guards against a dead loop
        try:
            return future.result(timeout=self._config.request_timeout * 10 + 60)
        except FutureTimeoutError:
            # the call's own deadline errors (RaftTimeoutError, UnknownOutcomeError) are
            # TimeoutErrors too: only a future that never finished means the loop is stuck
            if future.done():
                raise
            raise RaftTimeoutError("the client's event loop did not answer") from None

    def close(self) -> None:
        """Fail pending calls with :class:`ClusterUnavailableError` and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result(timeout=5)
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout=5)
