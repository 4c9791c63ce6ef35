"""Clients of a Raft cluster: blocking (:class:`RaftClient`) and asyncio (:class:`AsyncRaftClient`).

Each client is a session: its writes carry ``(session id, sequence number)``, so a write retried
after a timeout or a leader change is applied once. Every client of a process shares the
process's channel to the cluster (:mod:`raft_actors.channel`): calls made at the same time from
any threads, coroutines and clients travel together in the same Ray calls. The rules of
retrying are :mod:`raft_actors.session`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import InvalidStateError
from typing import Any, Self

from .channel import AsyncRun, Channel, Many, One, Waiter, _resolve_soon
from .config import RaftConfig
from .errors import ClusterUnavailableError
from .session import LINEARIZABLE, READ_MODES, Session

__all__ = ["AsyncRaftClient", "RaftClient"]


class _Base:
    """What both clients share: a session, the channel, deadlines, chunking of batches."""

    def __init__(self, nodes: Callable[[], Mapping[int, Any]], config: RaftConfig,
                 is_closed: Callable[[], bool] = lambda: False, channel: Channel | None = None):
        self._config = config
        self._channel = channel if channel is not None else Channel.of(nodes, config, is_closed)
        self._session = Session()
        self._closed = False

    @property
    def client_id(self) -> Any:
        """The session the cluster opened for this client (``None`` before its first write)."""
        return self._session.client_id

    @property
    def leader_hint(self) -> int:
        """The node this process currently believes is the leader (0: unknown)."""
        return self._channel.router.leader

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._config.request_timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return timeout

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterUnavailableError("the client was closed")

    @staticmethod
    def _mode(consistency: str) -> str:
        if consistency not in READ_MODES:
            raise ValueError(f"consistency must be one of {READ_MODES}, got {consistency!r}")
        return consistency

class RaftClient(_Base):
    """A blocking client session; safe to share between threads.

    Get one from :meth:`RaftCluster.client <raft_actors.cluster.RaftCluster.client>`. A call
    runs on the caller's thread: it hands its request to the process's channel and waits for
    the answer (no thread of its own). Every call ends by its deadline (``timeout`` seconds,
    default ``RaftConfig.request_timeout``): with its result or a typed error.
    """

    def submit(self, command: Any, timeout: float | None = None) -> Any:
        """Commit ``command`` through the log and return the state machine's result.

        Raises :class:`~raft_actors.errors.CommandRejectedError` (malformed or unpicklable
        command: nothing was written), :class:`~raft_actors.errors.CommandError` (the state
        machine raised: the command is committed and this is its result),
        :class:`~raft_actors.errors.UnknownOutcomeError` (deadline passed, the write may or may
        not have been applied), :class:`~raft_actors.errors.RaftTimeoutError` (deadline passed
        before the write could reach a leader), :class:`~raft_actors.errors.ClusterUnavailableError`.
        """
        self._check_open()
        t = self._timeout(timeout)
        sink = One()
        self._channel.write(self._session, [command], sink, t, blocking=True)
        return sink.wait(t * 10 + 60)

    def submit_many(self, commands: Sequence[Any], timeout: float | None = None,
                    return_exceptions: bool = False) -> list[Any]:
        """Commit ``commands`` (in this order, as one session's) and return their results, in
        order. They travel in as few Ray calls as the batch size allows: one thread can keep
        thousands of writes in flight. With ``return_exceptions``, a failed command's
        exception takes its place in the list; otherwise the first one is raised once all
        have ended."""
        self._check_open()
        t = self._timeout(timeout)
        if not commands:
            return []
        sink = Waiter(len(commands))
        self._channel.send_runs(commands, sink, t, self._session)
        sink.wait(t * 10 + 60)
        return sink.results(return_exceptions)

    def submit_async(self, command: Any, timeout: float | None = None) -> ConcurrentFuture:
        """Like :meth:`submit`, but return a ``concurrent.futures.Future`` at once."""
        self._check_open()
        t = self._timeout(timeout)
        fut: ConcurrentFuture = ConcurrentFuture()
        self._channel.write(self._session, [command], _FutureSink(fut), t)
        return fut

    def query(self, query: Any, consistency: str = LINEARIZABLE, timeout: float | None = None) -> Any:
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
        mode = self._mode(consistency)
        t = self._timeout(timeout)
        sink = One()
        self._channel.read([query], mode, sink, t, blocking=True)
        return sink.wait(t * 10 + 60)

    def query_many(self, queries: Sequence[Any], consistency: str = LINEARIZABLE, timeout: float | None = None,
                   return_exceptions: bool = False) -> list[Any]:
        """Answer ``queries`` (see :meth:`query`), in order, in as few Ray calls as possible."""
        self._check_open()
        mode = self._mode(consistency)
        t = self._timeout(timeout)
        if not queries:
            return []
        sink = Waiter(len(queries))
        self._channel.send_runs(queries, sink, t, mode=mode)
        sink.wait(t * 10 + 60)
        return sink.results(return_exceptions)

    def close(self) -> None:
        """Fail this client's pending calls with :class:`ClusterUnavailableError`; later calls
        raise it too."""
        if not self._closed:
            self._closed = True
            self._channel.fail_session(self._session, ClusterUnavailableError("the client was closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FutureSink:
    __slots__ = ("future",)

    def __init__(self, future: ConcurrentFuture):
        self.future = future

    # the first result given counts: another (a call's answer and the channel's giving up on it,
    # at once) or the caller's cancelling first leaves the future as it is
    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(values[0])

    def put_error(self, position: int, exc: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)


class AsyncRaftClient(_Base):
    """An asyncio client session.

    Get one from :meth:`RaftCluster.async_client <raft_actors.cluster.RaftCluster.async_client>`.
    Calls from any number of coroutines (and event loops) share the process's channel; each
    ends by its deadline, with its result or a :class:`~raft_actors.errors.RaftError`. See
    :class:`RaftClient` for the semantics of each call.

    The calls its coroutines make in one turn of an event loop leave together at the end of
    the turn, in the order made: one request per run of consecutive writes (or reads at one
    consistency) with one deadline, encoded once, as :meth:`submit_many` sends them (a
    :meth:`submit_many` or :meth:`query_many` sends them first, at once). Each still ends on its
    own: its result, or its own error (a command that cannot be pickled fails alone).
    """

    def __init__(self, nodes: Callable[[], Mapping[int, Any]], config: RaftConfig,
                 is_closed: Callable[[], bool] = lambda: False, channel: Channel | None = None):
        super().__init__(nodes, config, is_closed, channel)
        # the calls made in this turn of each loop, in order: (read mode or None, timeout, item, future)
        self._turns: dict[asyncio.AbstractEventLoop, list[tuple[str | None, float, Any, asyncio.Future]]] = {}

    async def submit(self, command: Any, timeout: float | None = None) -> Any:
        """Commit ``command`` and return its result (see :meth:`RaftClient.submit`)."""
        self._check_open()
        return await self._in_turn(command, None, self._timeout(timeout))

    async def submit_many(self, commands: Sequence[Any], timeout: float | None = None,
                          return_exceptions: bool = False) -> list[Any]:
        """Commit ``commands`` and return their results, in order (see
        :meth:`RaftClient.submit_many`)."""
        self._check_open()
        t = self._timeout(timeout)
        if not commands:
            return []
        self._send_turns_now()  # calls made before these leave before them
        sink, fut = _async_many(len(commands))
        self._channel.send_runs(commands, sink, t, self._session)
        await fut
        return sink.results(return_exceptions)

    async def query(self, query: Any, consistency: str = LINEARIZABLE, timeout: float | None = None) -> Any:
        """Answer ``query`` (see :meth:`RaftClient.query` for ``consistency``)."""
        self._check_open()
        return await self._in_turn(query, self._mode(consistency), self._timeout(timeout))

    async def query_many(self, queries: Sequence[Any], consistency: str = LINEARIZABLE,
                         timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        """Answer ``queries``, in order (see :meth:`RaftClient.query_many`)."""
        self._check_open()
        mode = self._mode(consistency)
        t = self._timeout(timeout)
        if not queries:
            return []
        self._send_turns_now()
        sink, fut = _async_many(len(queries))
        self._channel.send_runs(queries, sink, t, mode=mode)
        await fut
        return sink.results(return_exceptions)

    def _in_turn(self, item: Any, mode: str | None, timeout: float) -> asyncio.Future:
        """Queue a call (a command, or a query at consistency ``mode``) to leave with the others
        made in this turn of the running loop; the future of its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = []
            loop.call_soon(self._send_turn, loop)  # runs once every coroutine ready now has run
        turn.append((mode, timeout, item, fut))
        return fut

    def _send_turns_now(self) -> None:
        """Send what the running loop's coroutines queued in this turn now: a batch sent at
        once must not overtake them (a session applies its writes in the order it made them)."""
        self._send_turn(asyncio.get_running_loop())

    def _send_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the turn's calls in the order made: one request per run of consecutive writes
        (or reads at one consistency) with one deadline."""
        turn = self._turns.pop(loop, None)
        if not turn:  # sent already (by _send_turns_now)
            return
        start = 0
        for i in range(1, len(turn) + 1):
            if i == len(turn) or turn[i][0] != turn[start][0] or turn[i][1] != turn[start][1]:
                self._send_run(loop, turn[start:i])
                start = i

    def _send_run(self, loop: asyncio.AbstractEventLoop, run: list[tuple[str | None, float, Any, asyncio.Future]]) -> None:
        mode, timeout = run[0][0], run[0][1]
        items = [c[2] for c in run]
        sink = AsyncRun(loop, [c[3] for c in run])
        try:
            self._check_open()  # closed since: not sent
            if len(items) > 1:
                self._channel.send_runs(items, sink, timeout, self._session if mode is None else None, mode)
            elif mode is None:
                self._channel.write(self._session, items, sink, timeout)
            else:
                self._channel.read(items, mode, sink, timeout)
        except Exception as exc:  # noqa: BLE001 - closed since (RaftError), or anything else: each call
            for i in range(len(items)):  # fails with it, rather than wait for a request never made
                sink.put_error(i, exc)

    async def aclose(self) -> None:
        """Fail this client's pending calls with :class:`ClusterUnavailableError`."""
        if not self._closed:
            self._closed = True
            self._channel.fail_session(self._session, ClusterUnavailableError("the client was closed"))


def _async_many(n: int) -> tuple[Many, asyncio.Future]:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    return Many(n, lambda _: _resolve_soon(loop, [(fut, None, None)])), fut
