"""One client channel per process and cluster: every client session's calls travel through it.

Blocking calls from any number of threads and coroutines from any number of event loops
coalesce into the same Ray calls. Per node and kind of call (writes, or reads at one
consistency) at most :data:`MAX_IN_FLIGHT` calls are out at once: what arrives meanwhile waits
and leaves together in the next call, so batches grow with the load by themselves, up to
``RaftConfig.client_batch`` requests a call (larger loads pipeline rather than move in
lock-step). After a call that answered blocked callers (threads), the next waits a moment for
them to come back (each within ``HOLD_GAP`` of the one before), so that they travel in one
call again rather than the first alone and the rest a round later. Otherwise a call whose
lane is idle leaves at once, from the caller's own thread, and its answer comes back through
Ray's own completion callback: a lone blocking call costs about what a ``ray.get`` costs.

The rules of what an answer means (retry where, in which session, whether the outcome is
known) are :mod:`raft_actors.session`'s; this module moves bytes and keeps time for them. One
daemon thread per channel keeps the timers: per-attempt timeouts, deadlines and backoffs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import ray

from .config import RaftConfig
from .envelope import OPEN_SESSION, decode_results, dumps, encode_values
from .errors import ClusterUnavailableError, CommandRejectedError, RaftError, RaftTimeoutError, UnknownOutcomeError
from .metrics import ClientMetrics
from .raycall import outcome, when_done
from .session import (
    ATTEMPT_TIMEOUT,
    LINEARIZABLE,
    OPEN,
    READ,
    WRITE,
    Request,
    Router,
    Session,
    Sink,
    backoff,
    expire,
    new_leader,
    settle,
    unreachable,
)

log = logging.getLogger(__name__)

#: calls in flight per lane: one, so that calls are as full as the load makes them (measured
#: here: two in flight made smaller calls and cost more CPU per write on every path), and a
#: session's writes cannot race each other
MAX_IN_FLIGHT = 1
#: seconds between two looks for requests past their deadline
SWEEP_EVERY = 0.02
#: seconds a channel trusts the list of the cluster's nodes it last saw (while all answer)
NODES_EVERY = 0.2
#: a lane whose call answered blocked callers holds its next call back until they are back
#: (or the call is full), as long as each comes within ``HOLD_GAP`` seconds of the one
#: before, for at most ``HOLD_MAX`` seconds and never longer than that call took
HOLD_GAP = 0.001
HOLD_MAX = 0.02

Nodes = Callable[[], Mapping[int, Any]]


class _Lock:
    """The channel's lock. A request that fails while it is held is told so once it is
    released, by the thread that releases it, outside it: a sink may run user code (a future's
    done callbacks, a replicated actor's ref callbacks) that calls into the channel again."""

    __slots__ = ("_lock", "acquire", "later")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquire = self._lock.acquire
        self.later: list[tuple[Request, BaseException]] = []  # failures to tell, once released

    def release(self) -> None:
        later = self.later
        if not later:
            self._lock.release()
            return
        self.later = []
        self._lock.release()
        left = iter(later)
        try:
            for req, exc in left:
                try:
                    req.fail(exc)
                except Exception:  # one sink's error must not keep the others from their results
                    log.exception("failing a request's sink raised")
        finally:  # an interrupt in a callback: the requests after it still get their failure
            for req, exc in left:
                with contextlib.suppress(Exception):
                    req.fail(exc)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Lane:
    """Requests waiting for one kind of call, and its calls in flight.

    Writes have one lane, whose node is the leader as known when a call leaves: a session's
    writes leave in the order they were made, and a retry goes back to the head of the lane,
    before anything made after it, so each session's writes are applied in order. Reads have a
    lane per node and consistency."""

    __slots__ = ("expect", "have", "hold_at", "hold_end", "in_flight", "items", "last_in", "mode", "node",
                 "paused", "queue")

    def __init__(self, node: int, mode: str | None):
        self.node = node
        self.mode = mode  # None: writes; else the reads' consistency
        self.queue: deque[Request] = deque()
        self.in_flight = 0
        self.paused = False  # backing off (writes): nothing leaves until it resumes
        # the hold (see Channel._holds): blocked callers' requests the next call waits for and
        # those queued, items queued, when the last came, when the hold ends at the latest,
        # when the timer that looks at it next is due
        self.expect = 0
        self.have = 0
        self.items = 0
        self.last_in = 0.0
        self.hold_end = 0.0
        self.hold_at = float("inf")


class _Call:
    __slots__ = ("before", "groups", "lane", "over", "probe_at", "reqs", "sent", "waited")

    def __init__(self, lane: _Lane, reqs: list[Request], groups: list[tuple]):
        self.lane = lane
        self.reqs = reqs
        #: what the call carries, decided under the lock (sessions change): each group is
        #: ``(head, requests)``, ``head`` being the part's ``(client_id, seq, ack)`` for writes,
        #: ``None`` for reads; its requests' items go in the part together, encoded once
        self.groups = groups
        self.over = False  # answered, or given up on (a late answer is then ignored)
        self.sent = 0.0  # when it left (time.monotonic())
        self.probe_at = float("inf")  # when to ask the others who leads, if still unanswered
        self.waited = 0  # requests it carries whose callers are blocked on them (counted by _take)
        self.before = 0  # blocked callers' requests in its lane when its answer came


class Channel:
    """The process's channel to one cluster (see the module doc). Get it with :meth:`of`."""

    _channels: ClassVar[weakref.WeakValueDictionary[Any, Channel]] = weakref.WeakValueDictionary()
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, nodes: Nodes, config: RaftConfig, is_closed: Callable[[], bool] = lambda: False,
                 name: str = ""):
        self._nodes = nodes
        #: retries and unknown outcomes, exported to Ray's metrics (tagged with the cluster's name)
        self.metrics = ClientMetrics(name)
        self._metrics_at = 0.0
        self.config = config
        self._cluster_closed = is_closed
        self.batch_limit = config.client_batch
        #: seconds a call to the leader may go unanswered before the others are asked who
        #: leads (the longest election timeout: by then a paused leader has been replaced)
        jitter = config.election_jitter_ticks
        self.probe_after = (config.election_ticks + (config.election_ticks - 1 if jitter is None else jitter)) \
            * config.tick_interval
        self._lock = _Lock()
        self._write_lane = _Lane(0, None)
        self._lanes: dict[tuple[int, str | None], _Lane] = {}  # reads, by node and consistency
        self.router = Router()
        self._dead_handles: dict[int, Any] = {}  # the handle each dead node had when it died
        self._ids: list[int] = []
        self._ids_until = 0.0
        self._closed = False
        self._rng = random.Random()
        # timers: a heap of (when, order, action); the timer thread sleeps until the first
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._sleeping_until = float("inf")
        self._timer_thread: threading.Thread | None = None
        self._pending: set[Request] = set()  # every request not yet ended
        self._sweeping = False  # a deadline sweep is scheduled
        self._out: set[_Call] = set()  # calls in flight (the sweep keeps their time too)
        self.calls = 0  # Ray calls made (for tests and benchmarks)

    @classmethod
    def of(cls, nodes: Nodes, config: RaftConfig, is_closed: Callable[[], bool] = lambda: False,
           name: str = "") -> Channel:
        """The channel every client of this process uses for the cluster ``nodes`` lists."""
        with cls._registry_lock:
            ch = cls._channels.get(nodes)
            if ch is None or ch._closed:
                ch = cls._channels[nodes] = Channel(nodes, config, is_closed, name)
            return ch

    # ------------------------------------------------------------------ requests in
    def write(self, session: Session, commands: list[Any], sink: Any, timeout: float, blocking: bool = False,
              blob: bytes | None = None) -> None:
        """Send ``commands`` of ``session``; results go to ``sink`` (see ``session.Sink``).
        ``blocking``: the caller waits for them on this thread (it may wait for its call here).
        Commands are encoded when they leave, together with what travels with them (unless
        ``blob`` holds them encoded already); a request that cannot be pickled fails, with
        :class:`~raft_actors.errors.CommandRejectedError`, and only it."""
        self._start(Request(WRITE, commands, sink, time.monotonic() + timeout, session, blob=blob), blocking)

    def read(self, queries: list[Any], mode: str, sink: Any, timeout: float, blocking: bool = False,
             blob: bytes | None = None) -> None:
        """Run ``queries`` at consistency ``mode``; results go to ``sink``."""
        self._start(Request(READ, queries, sink, time.monotonic() + timeout, mode=mode, blob=blob), blocking)

    def send_runs(self, items: Sequence[Any], sink: Sink, timeout: float, session: Session | None = None,
                  mode: str | None = None) -> None:
        """Send many items at once, all into ``sink`` (by position in ``items``): commands of
        ``session``, or queries at consistency ``mode``. They go in runs of ``batch_limit``,
        each encoded here, once, on the caller's thread: an item that cannot be pickled fails
        alone, at once (:class:`~raft_actors.errors.CommandRejectedError`), and the others of
        its run go without it."""
        what = "command" if mode is None else "query"
        size = max(1, self.batch_limit)
        for off in range(0, len(items), size):
            run = list(items[off:off + size])
            positions: Sequence[int] = range(off, off + len(run))
            try:
                blob = encode_values(run, what)
            except CommandRejectedError:
                keep = []
                for k, item in enumerate(run):
                    try:
                        encode_values([item], what)
                        keep.append(k)
                    except CommandRejectedError as exc:
                        sink.put_error(off + k, exc)
                if not keep:
                    continue
                run = [run[k] for k in keep]
                positions = [off + k for k in keep]
                blob = encode_values(run, what)
            target = _Shifted(sink, positions)
            if mode is None:
                assert session is not None
                self.write(session, run, target, timeout, blob=blob)
            else:
                self.read(run, mode, target, timeout, blob=blob)

    def _start(self, req: Request, blocking: bool = False) -> None:
        self._check_open()
        req.waited = blocking
        launch: list[_Call] = []
        with self._lock:
            self._add(req)
            self._route(req, launch)
        mine = self._launch(launch, req if blocking else None)
        if mine is not None:
            self._wait_for(*mine, req.deadline)

    def _route(self, req: Request, launch: list[_Call]) -> None:
        """Under the lock: put ``req`` in the lane of the node to ask (a write waits for its
        session to open first); collect the calls that can leave now."""
        if req.kind == WRITE:
            s = req.session
            assert s is not None
            if not s.is_open:
                s.waiting.append(req)
                if not s.opening:
                    s.opening = True
                    opener = Request(OPEN, [None], _Opened(self, s), req.deadline, s)
                    self._add(opener)
                    self._route(opener, launch)
                return
            if not req.seqs:
                s.number(req)
        if req.kind == READ:
            ids = self._node_ids()
            if not ids or self.router.all_dead(ids):
                self._end(req, ClusterUnavailableError(f"every node of the cluster is dead: {ids}"))
                return
            node = self.router.pick(ids, req.mode)
            lane = self._lanes.get((node, req.mode))
            if lane is None:
                lane = self._lanes[(node, req.mode)] = _Lane(node, req.mode)
        else:
            lane = self._write_lane
        lane.queue.append(req)
        arrived = 0.0  # a blocked caller's request, while the lane holds: when it came
        if lane.expect:
            lane.items += len(req)
            if req.waited:
                lane.have += 1
                arrived = time.monotonic()
        self._pump(lane, launch, arrived)

    def _node_ids(self) -> list[int]:
        """Under the lock: the cluster's nodes (a dead node whose actor was replaced counts
        again), looked up at most every ``NODES_EVERY`` seconds while all is well."""
        now = time.monotonic()
        if now < self._ids_until and not self.router.dead:
            return self._ids
        nodes = self._nodes()
        if self.router.dead:
            for i in list(self.router.dead):
                if i in nodes and nodes[i] is not self._dead_handles.get(i):
                    self.router.dead.discard(i)
        self._ids = sorted(nodes)
        self._ids_until = now + NODES_EVERY
        return self._ids

    def _pump(self, lane: _Lane, launch: list[_Call], arrived: float = 0.0) -> None:
        """Under the lock: the lane's next call, if it may leave now (``arrived``: when a
        request just queued came)."""
        if lane.queue and lane.in_flight < MAX_IN_FLIGHT and not lane.paused:
            if lane.expect and self._holds(lane, arrived):
                return
            if lane is self._write_lane:
                ids = self._node_ids()
                if not ids or self.router.all_dead(ids):
                    exc = ClusterUnavailableError(f"every node of the cluster is dead: {ids}")
                    while lane.queue:
                        self._end(lane.queue.popleft(), exc)
                    return
                lane.node = self.router.pick(ids, None)
            call = self._take(lane)
            if call is not None:
                launch.append(call)

    def _holds(self, lane: _Lane, arrived: float) -> bool:
        """Under the lock: whether the lane's next call waits for more requests.

        Blocked callers a call answered (threads in ``submit``, ``query``, a replicated
        actor's ``ray.get``) come back a moment later with their next request, one after
        another. Sent as they come, the first would leave alone and the rest wait a whole
        round for the next call: calls of 1 and 63 requests for 64 threads, not one of 64. So
        the next call waits until the blocked callers it answered are back, beside those that
        waited meanwhile, as long as they keep coming: each within ``HOLD_GAP`` of the one
        before, for at most ``HOLD_MAX`` and never longer than that call took (PostgreSQL's
        ``commit_delay`` with ``commit_siblings`` is the same idea). Only blocked callers'
        single requests are counted and keep the hold going: futures, coroutines, batch runs
        and open-loop loads are never waited for (they leave with the next call), and a lone
        blocked caller is not held (it is all its call answered). Only the leader's lanes hold:
        a follower's or any node's reads go round the nodes, so their callers come back to
        another lane."""
        now = arrived or time.monotonic()
        if (lane.have >= lane.expect or lane.items >= self.batch_limit or now >= lane.hold_end
                or now >= lane.last_in + HOLD_GAP):
            lane.expect = 0
            return False
        if arrived:
            lane.last_in = arrived
        due = min(lane.last_in + HOLD_GAP, lane.hold_end)
        if due < lane.hold_at:  # no timer looks at the lane by then: one more
            lane.hold_at = due
            self._timer(due, lambda: self._hold_over(lane))
        return True

    def _hold_over(self, lane: _Lane) -> None:
        """Timer thread: look again at a lane holding its next call."""
        launch: list[_Call] = []
        with self._lock:
            lane.hold_at = float("inf")
            self._pump(lane, launch)
        self._launch(launch)

    def _take(self, lane: _Lane) -> _Call | None:
        """Under the lock: the next call of ``lane`` (up to ``batch_limit`` requests' items).

        Consecutive writes of one session with consecutive sequence numbers travel as one part
        (one ``(client_id, seq, ack)`` and one encoding for all their commands), and all the
        queries of a read call as one: a replica then handles a part, not a request, at a time.
        """
        q = lane.queue
        reqs: list[Request] = []
        groups: list[tuple] = []
        n = waited = 0
        while q and (n == 0 or n + len(q[0]) <= self.batch_limit):
            r = q.popleft()
            if r not in self._pending:
                continue  # it expired while it waited
            reqs.append(r)
            n += len(r)
            waited += r.waited
            r.in_flight = True
            r.tries += 1
            r.target = lane.node
            if r.kind == READ:
                if groups:
                    groups[0][1].append(r)
                else:
                    groups.append((None, [r]))
            elif r.kind == OPEN:
                groups.append((OPEN_SESSION, [r]))
            else:
                s = r.session
                assert s is not None and s.client_id is not None
                r.cid = s.client_id
                seqs = r.seqs
                last = groups[-1] if groups else None
                if (last is not None and last[0] is not OPEN_SESSION and last[0] is not None
                        and last[0][0] == s.client_id and isinstance(seqs, range)
                        and isinstance(last[0][1], int) and last[2] == seqs.start):
                    last[1].append(r)
                    groups[-1] = (last[0], last[1], seqs.stop)
                elif isinstance(seqs, range):
                    groups.append(((s.client_id, seqs.start, s.ack()), [r], seqs.stop))
                else:
                    groups.append(((s.client_id, tuple(seqs), s.ack()), [r], 0))
        if not reqs:
            return None
        lane.in_flight += 1
        call = _Call(lane, reqs, groups)
        call.waited = waited
        return call

    def _payload(self, call: _Call) -> bytes:
        """The call's bytes: each group's items encoded once. A request whose items cannot be
        pickled fails alone (never sent) and leaves the call."""
        parts: list[tuple] = []
        bad: list[tuple[Request, BaseException]] = []
        for group in call.groups:
            head, reqs = group[0], group[1]
            if head is OPEN_SESSION:
                parts.append(OPEN_SESSION)
                continue
            what = "query" if head is None else "command"
            items = reqs[0].items if len(reqs) == 1 else [x for r in reqs for x in r.items]
            try:
                blob = reqs[0].blob if len(reqs) == 1 and reqs[0].blob is not None else encode_values(items, what)
            except CommandRejectedError:
                ok = []
                for r in reqs:
                    try:
                        encode_values(r.items, what)
                        ok.append(r)
                    except CommandRejectedError as exc:
                        bad.append((r, exc))
                if not ok:
                    continue
                reqs = ok
                blob = encode_values([x for r in ok for x in r.items], what)
            count = sum(len(r) for r in reqs)
            if head is None:
                parts.append((count, blob))
            elif len(reqs) == len(group[1]):
                parts.append((*head, count, blob))
            else:  # some requests left: name the sequence numbers of those that stay
                parts.append((head[0], tuple(q for r in reqs for q in r.seqs), head[2], count, blob))
        if bad:
            gone = {id(r) for r, _ in bad}
            call.reqs = [r for r in call.reqs if id(r) not in gone]
            with self._lock:
                for r, exc in bad:
                    r.in_flight = False
                    self._end(r, exc)
        return dumps(parts)

    # ------------------------------------------------------------------ calls out
    def _launch(self, calls: list[_Call], own: Request | None = None) -> tuple[_Call, Any] | None:
        """Send ``calls``. Their answers come back through Ray's completion callbacks, except
        for the call that carries ``own``, a blocking caller's request: that caller waits for
        it itself (a lone blocking call then costs what a ``ray.get`` costs), and gets
        ``(call, ref)`` back to do so with :meth:`_wait_for`."""
        mine = None
        for call in calls:
            lane = call.lane
            handle = self._nodes().get(lane.node)
            try:
                if handle is None:
                    raise ray.exceptions.ActorDiedError()
                payload = self._payload(call)
                if not call.reqs:  # nothing in it could be sent
                    self._after(call, [], [], 0, answered=False)
                    continue
                if lane.mode is None:
                    ref = handle.submit.remote(payload)
                else:
                    ref = handle.read.remote(payload, lane.mode)
            except Exception as exc:  # noqa: BLE001 - a handle Ray refuses: as if the call failed
                self._failed(call, exc)
                continue
            call.sent = time.monotonic()
            if lane.mode is None or lane.mode == LINEARIZABLE:
                call.probe_at = call.sent + self.probe_after
            with self._lock:
                self.calls += 1
                if not call.over:
                    self._out.add(call)
            if own is not None and mine is None and own in call.reqs:
                mine = (call, ref)
            else:
                when_done(ref, lambda res, c=call: self._answered(c, lambda: outcome(res)))
        return mine

    def _wait_for(self, call: _Call, ref: Any, deadline: float) -> None:
        """A blocking caller waits for the call carrying its request, on its own thread."""
        try:
            result = ray.get(ref, timeout=max(1e-3, min(self.probe_after, deadline - time.monotonic())))
        except ray.exceptions.GetTimeoutError:
            # slow: from now on the caller waits for its own result, however it comes (the
            # timers may send its request elsewhere); the call's answer still counts
            when_done(ref, lambda res, c=call: self._answered(c, lambda: outcome(res)))
            return
        except Exception as exc:  # noqa: BLE001 - the call failed: as through the callback
            self._answered(call, _raise(exc))
            return
        self._answered(call, lambda: result)

    def _answered(self, call: _Call, result: Callable[[], bytes]) -> None:
        """A call ended (Ray's callback thread, or a blocking caller's): ``result()`` gives the
        answer or raises what the call raised."""
        try:
            values, errors = decode_results(result())
        except ray.exceptions.RayTaskError as exc:
            # the node's method itself failed: deterministic, so not retried
            self._settle_call(call, None, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the node died, restarts, or the call was cancelled
            self._failed(call, exc)
            return
        self._settle_call(call, (values, errors), None)

    def _settle_call(self, call: _Call, answer: tuple[list, dict] | None, crash: BaseException | None) -> None:
        with self._lock:
            if call.over:
                return
            call.over = True
            self._out.discard(call)
            if call.waited:  # blocked callers queued before (not its own, come back already)
                call.before = sum(r.waited for r in call.lane.queue)
        again: list[Request] = []
        reopen: list[Request] = []
        hint = 0
        if answer is None:
            text = f"node {call.lane.node} failed to handle the call: {crash}"
            for r in call.reqs:
                r.in_flight = False
                if r.kind == OPEN:
                    with self._lock:
                        r.sink.give_up(RaftError(text))
                else:
                    if r.kind == WRITE:
                        self.metrics.unknown += 1
                    try:
                        r.fail(UnknownOutcomeError(text) if r.kind == WRITE else RaftError(text))
                    except Exception:  # a sink's error keeps neither the others nor the lane from going on
                        log.exception("a request's sink raised")
        elif not answer[1] and not any(r.kind == OPEN for r in call.reqs):
            # every request answered with its value (the common case): straight to the sinks
            values = answer[0]
            off = 0
            for r in call.reqs:
                n = len(r.items)
                r.in_flight = False
                try:
                    r.sink.put(r.positions, values[off:off + n] if n > 1 else (values[off],))
                except Exception:  # a sink's error keeps neither the others nor the lane from going on
                    log.exception("a request's sink raised")
                off += n
        else:
            values, errors = answer
            off = 0
            for r in call.reqs:
                n = len(r)
                if r.kind == OPEN:
                    r.in_flight = False
                    if not r.sink.open_answer(values[off], errors.get(off)):
                        again.append(r)  # not the leader (or a timeout there): ask again
                    off += n
                    continue
                errs = {i - off: e for i, e in errors.items() if off <= i < off + n} if errors else {}
                try:
                    st = settle(r, values[off:off + n], errs)
                except Exception:  # (as above)
                    log.exception("a request's sink raised")
                    off += n
                    continue
                off += n
                if st.expired and r.session is not None:
                    with self._lock:
                        r.session.forget(r.cid)
                hint = st.hint or hint
                if st.again is not None:
                    again.append(st.again)
                if st.reopen is not None:
                    reopen.append(st.reopen)
        self._after(call, again, reopen, hint, answered=answer is not None)

    def _failed(self, call: _Call, exc: BaseException, leader: int = 0) -> None:
        """A call got no answer: the node is dead, restarting or cut off (``leader``: another
        node is known to lead now; its requests go there at once)."""
        with self._lock:
            if call.over:
                return
            call.over = True
            self._out.discard(call)
            died = isinstance(exc, ray.exceptions.ActorDiedError) and not isinstance(
                exc, ray.exceptions.ActorUnavailableError)
            self.router.lost(call.lane.node, died)
            self._ids_until = 0.0  # look at the cluster's nodes again
            if died:
                self._dead_handles[call.lane.node] = self._nodes().get(call.lane.node)
            if leader:
                self.router.follow(leader, self._node_ids())
        for r in call.reqs:
            unreachable(r)
        self._after(call, list(call.reqs), [], 0, answered=False, backoff_all=not leader)

    def _probe(self, call: _Call) -> None:
        """Timer thread: a call to the leader is unanswered after ``probe_after`` seconds (the
        sweep asks again every ``probe_after`` while it stays so). Ask the other nodes who
        leads: if they name another leader, the old one is paused or cut off and the call's
        requests go to the new one (:func:`~raft_actors.session.new_leader`), well before
        ``ATTEMPT_TIMEOUT``."""
        asked = call.lane.node
        others = [h for i, h in self._nodes().items() if i != asked]
        hints: list[tuple[int, int]] = []
        left = [len(others)]
        lock = threading.Lock()

        def got(result: Any) -> None:  # Ray's callback thread
            with lock:
                if not isinstance(result, BaseException):
                    hints.append(tuple(result))
                left[0] -= 1
                if left[0]:
                    return
            leader = new_leader(asked, hints)
            if leader and not call.over:
                self._failed(call, TimeoutError(f"node {asked} is silent; node {leader} leads"), leader)

        for h in others:
            try:
                when_done(h.leader_hint.remote(), got)
            except Exception as exc:  # noqa: BLE001 - a handle Ray refuses: no hint from it
                got(exc)

    def _after(self, call: _Call, again: list[Request], reopen: list[Request], hint: int, answered: bool,
               backoff_all: bool = False) -> None:
        """What follows an answer (or its absence): the retries, the next call of the lane.
        ``again`` and ``reopen`` are in the call's order."""
        launch: list[_Call] = []
        with self._lock:
            if again or reopen:  # what its caller was given the end of (a failure, a deadline) goes no further
                again = [r for r in again if not r.ended]
                reopen = [r for r in reopen if not r.ended]
            lane = call.lane
            lane.in_flight -= 1
            wait = backoff_all
            if answered:
                if again:
                    wait = self.router.redirected(lane.node, hint, self._node_ids(), lane.mode)
                else:
                    self.router.answered(lane.node, lane.mode)
            going = {id(r) for r in again} | {id(r) for r in reopen}
            self.metrics.retries += len(going)
            for r in call.reqs:
                if id(r) not in going:
                    self._finish(r)  # every item is done (or goes on in a part of it: below)
            for r in again + reopen:
                if r not in self._pending:  # a part of a request: it carries on in its place
                    if r.kind == WRITE and r.session is not None:
                        r.session.track(r)
                    self._add(r)
            for r in reopen:
                assert r.session is not None
                r.session.lost(r)
                self._route(r, launch)  # behind its session's opening
            if lane is self._write_lane:
                # retries go back to the head of the lane, in order, before anything made later
                lane.queue.extendleft(reversed([r for r in again if r in self._pending]))
                if wait and again:
                    lane.paused = True
                    delay = backoff(max(r.tries for r in again), self._rng.random())
                    self._timer(time.monotonic() + delay, self._resume_writes)
            else:
                for r in again:
                    if wait:
                        delay = backoff(r.tries, self._rng.random())
                        self._timer(time.monotonic() + delay, lambda r=r: self._retry(r))
                    else:
                        self._route(r, launch)
            lane.expect = 0
            if answered and not again and not reopen:
                self._expect(lane, call)
            self._pump(lane, launch)
        self._launch(launch)

    def _expect(self, lane: _Lane, call: _Call) -> None:
        """Under the lock: after ``call`` was answered, how many blocked callers' requests the
        lane's next call waits for (see :meth:`_holds`): those it answered, and those that
        waited in the lane when its answer came; none unless it answered one at least and
        there are two, or if those queued fill a call already."""
        if not call.waited or (lane.mode is not None and lane.mode != LINEARIZABLE):
            return  # no blocked caller; or a follower's or any node's reads, whose callers' next go elsewhere
        answered = sum(r.waited and not r.ended for r in call.reqs)
        expect = answered + call.before
        if not answered or expect < 2:
            return
        items = have = 0
        for r in lane.queue:
            items += len(r)
            have += r.waited
        if items >= self.batch_limit:
            return
        now = time.monotonic()
        lane.expect = expect
        lane.have = have
        lane.items = items
        lane.last_in = now
        lane.hold_end = now + min(HOLD_MAX, now - call.sent)

    def _resume_writes(self) -> None:
        """Timer thread: the write lane's backoff ended."""
        launch: list[_Call] = []
        with self._lock:
            self._write_lane.paused = False
            self._pump(self._write_lane, launch)
        self._launch(launch)

    def _retry(self, req: Request) -> None:
        """Timer thread: a read's backoff ended."""
        launch: list[_Call] = []
        with self._lock:
            if req not in self._pending:
                return
            self._route(req, launch)
        self._launch(launch)

    def _finish(self, req: Request) -> None:
        """Under the lock: ``req`` has ended (its sink has every result)."""
        if req in self._pending:
            self._pending.discard(req)
            if req.kind == WRITE and req.session is not None:
                req.session.finished(req)

    def _end(self, req: Request, exc: BaseException) -> None:
        """Under the lock: fail ``req`` (and, for a session opening, the writes waiting on it);
        its sink is told once the lock is released (see :class:`_Lock`)."""
        if req not in self._pending:
            return
        self._pending.discard(req)
        req.ended = True
        if req.kind == OPEN:
            req.sink.give_up(exc)
            return
        self._lock.later.append((req, exc))
        if req.kind == WRITE and req.session is not None:
            req.session.finished(req)

    def _add(self, req: Request) -> None:
        """Under the lock: ``req`` is pending until it ends (by its deadline at the latest)."""
        self._pending.add(req)
        if not self._sweeping:
            self._sweeping = True
            self._timer(time.monotonic() + SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        """Timer thread, every ``SWEEP_EVERY`` seconds while anything is pending or out: end the
        requests whose deadline passed, give up on calls unanswered for ``ATTEMPT_TIMEOUT``
        and probe those to the leader unanswered for ``probe_after`` (times are kept within
        ``SWEEP_EVERY``, at no cost per request or call)."""
        if self._cluster_closed() and not self._closed:
            self.close()  # its cluster was shut down (RaftCluster.shutdown closes it too)
            return
        now = time.monotonic()
        with self._lock:
            late = [r for r in self._pending if r.deadline <= now]
            for r in late:
                self._pending.discard(r)
                r.ended = True
                if r.kind == OPEN:
                    r.sink.give_up(RaftTimeoutError("could not open a client session before the deadline"))
                elif r.kind == WRITE and r.session is not None:
                    if r in r.session.waiting:
                        r.session.waiting.remove(r)
                    r.session.finished(r)
            stuck: list[_Call] = []
            slow: list[_Call] = []
            for c in self._out:  # a handful: one per lane at most
                if now >= c.sent + ATTEMPT_TIMEOUT:
                    stuck.append(c)
                elif now >= c.probe_at:
                    c.probe_at = now + self.probe_after
                    slow.append(c)
            self._sweeping = bool(self._pending or self._out) and not self._closed
            if self._sweeping:
                self._timer(now + SWEEP_EVERY, self._sweep)
            export = now >= self._metrics_at or not self._sweeping
            if export:
                self._metrics_at = now + 1.0
        for r in late:
            if r.kind != OPEN and expire(r):
                self.metrics.unknown += 1
        for c in stuck:  # no answer in time: ask elsewhere
            self._failed(c, TimeoutError("no answer in time"))
        for c in slow:
            self._probe(c)
        if export:
            self.metrics.export()

    # ------------------------------------------------------------------ sessions
    def _opened(self, session: Session, cid: Any) -> None:
        launch: list[_Call] = []
        with self._lock:
            for r in session.opened(cid):
                if r in self._pending:
                    self._route(r, launch)
        self._launch(launch)

    def _open_failed(self, session: Session, exc: BaseException) -> None:
        """Under the lock: a session could not be opened: the writes waiting on it fail (they
        were never sent: a plain timeout, not an unknown outcome), told once the lock is released."""
        session.opening = False
        waiting, session.waiting = session.waiting, []
        if isinstance(exc, TimeoutError):
            exc = RaftTimeoutError(f"could not open a client session: {exc}")
        for r in waiting:
            if r in self._pending:
                self._pending.discard(r)
                r.ended = True
                self._lock.later.append((r, exc))

    # ------------------------------------------------------------------ timers
    def call_later(self, delay: float, action: Callable[[], None], slack: float = 0.0) -> bool:
        """Run ``action`` on the channel's timer thread in ``delay`` seconds, or up to ``slack``
        seconds later if the thread wakes by then anyway (no wake-up of its own: cheaper); it
        must not block. Returns whether it will run (not once the channel is closed)."""
        with self._lock:
            if self._closed:
                return False
            self._timer(time.monotonic() + delay, action, slack)
            return True

    def _timer(self, when: float, action: Callable[[], None], slack: float = 0.0) -> None:
        """Under the lock: run ``action`` on the timer thread at ``when`` (or by ``when +
        slack``, see :meth:`call_later`)."""
        heapq.heappush(self._timers, (when, next(self._order), action))
        if self._timer_thread is None:
            self._timer_thread = threading.Thread(target=self._timer_loop, name="raft-client-timers", daemon=True)
            self._timer_thread.start()
        elif when + slack < self._sleeping_until:
            self._wake.notify()

    def _timer_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closed and not self._timers:
                        return
                    now = time.monotonic()
                    if self._timers and self._timers[0][0] <= now:
                        _, _, action = heapq.heappop(self._timers)
                        break
                    self._sleeping_until = self._timers[0][0] if self._timers else now + 60
                    self._wake.wait(self._sleeping_until - now)
                    self._sleeping_until = float("inf")
            try:
                action()
            except Exception:  # a timer must never kill the thread
                log.exception("client timer failed")

    # ------------------------------------------------------------------ lifecycle
    def close(self, exc: BaseException | None = None) -> None:
        """Fail every pending request (:class:`ClusterUnavailableError`) and stop."""
        exc = exc or ClusterUnavailableError("the cluster has been shut down")
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            for r in pending:
                self._end(r, exc)
            self._timers.clear()
            self._wake.notify()

    def fail_session(self, session: Session, exc: BaseException) -> None:
        """Fail every pending request of ``session`` (its client was closed)."""
        with self._lock:
            for r in [r for r in self._pending if r.session is session]:
                self._end(r, exc)

    def _check_open(self) -> None:
        # RaftCluster.shutdown closes its channel: no need to ask the cluster at every call
        if self._closed:
            raise ClusterUnavailableError("the cluster has been shut down")


def _raise(exc: BaseException) -> Callable[[], bytes]:
    def fail() -> bytes:
        raise exc

    return fail


class _Opened:
    """The sink of a session opening: opens the session, or fails the writes waiting on it."""

    __slots__ = ("channel", "done", "session")

    def __init__(self, channel: Channel, session: Session):
        self.channel = channel
        self.session = session
        self.done = False

    def open_answer(self, value: Any, error: BaseException | None) -> bool:
        """The node's answer: the new session's id, or an error. Returns whether it is final."""
        from .errors import NotLeaderError

        if error is None:
            self.done = True
            self.channel._opened(self.session, value)
            return True
        if isinstance(error, NotLeaderError | TimeoutError):
            return False
        with self.channel._lock:
            self.give_up(error)
        return True

    def give_up(self, exc: BaseException) -> None:
        """Under the channel's lock."""
        self.done = True
        self.channel._open_failed(self.session, exc)

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:  # pragma: no cover - not used
        raise AssertionError("a session opening has no positions")

    def put_error(self, position: int, exc: BaseException) -> None:  # pragma: no cover - not used
        raise AssertionError("a session opening fails through give_up")


# ---------------------------------------------------------------------------- sinks


#: makes "the first result given counts" atomic in :class:`One` (two threads may give one at
#: once: a call's answer, and the channel's giving up on it)
_first_answer = threading.Lock()


class One:
    """The sink of one blocking call: the caller waits on it."""

    __slots__ = ("answered", "exc", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.answered = False
        self.value: Any = None
        self.exc: BaseException | None = None

    def _is_first(self) -> bool:
        with _first_answer:
            first, self.answered = not self.answered, True
        return first

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        if self._is_first():
            self.value = values[0]
            self.lock.release()

    def put_error(self, position: int, exc: BaseException) -> None:
        if self._is_first():
            self.exc = exc
            self.lock.release()

    def wait(self, timeout: float) -> Any:
        if not self.lock.acquire(timeout=timeout):
            raise RaftTimeoutError("the client channel did not answer")  # never: deadlines end every call
        if self.exc is not None:
            raise self.exc
        return self.value


class _Shifted:
    """A sink for one run of a batch: the run's positions mapped to the whole batch's."""

    __slots__ = ("positions", "sink")

    def __init__(self, sink: Sink, positions: Sequence[int]):
        self.sink = sink
        self.positions = positions

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        where = self.positions
        self.sink.put([where[p] for p in positions], values)

    def put_error(self, position: int, exc: BaseException) -> None:
        self.sink.put_error(self.positions[position], exc)


class Many:
    """The sink of a batch of calls: results by position; ``on_done`` once all are in."""

    __slots__ = ("errors", "left", "lock", "on_done", "values")

    _MISSING = object()

    def __init__(self, n: int, on_done: Callable[[Many], None] | None = None):
        self.values: list[Any] = [Many._MISSING] * n
        self.errors: dict[int, BaseException] = {}
        self.left = n
        self.lock = threading.Lock()
        self.on_done = on_done

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        with self.lock:
            vals, missing = self.values, Many._MISSING
            n = 0
            for p, v in zip(positions, values):
                if vals[p] is missing:
                    vals[p] = v
                    n += 1
            self.left -= n
            done = n and not self.left
        if done and self.on_done is not None:
            self.on_done(self)

    def put_error(self, position: int, exc: BaseException) -> None:
        with self.lock:
            if self.values[position] is not Many._MISSING:
                return
            self.values[position] = None
            self.errors[position] = exc
            self.left -= 1
            done = not self.left
        if done and self.on_done is not None:
            self.on_done(self)

    def results(self, return_exceptions: bool = False) -> list[Any]:
        """Once all are in: the values in order; the first error (by position) raised, or with
        ``return_exceptions`` each error in its place."""
        if self.errors and not return_exceptions:
            raise self.errors[min(self.errors)]
        if self.errors:
            return [self.errors.get(i, v) for i, v in enumerate(self.values)]
        return self.values


class Waiter(Many):
    """A :class:`Many` a blocking caller waits on."""

    __slots__ = ("_event",)

    def __init__(self, n: int):
        super().__init__(n, self._release)
        self._event = threading.Lock()
        self._event.acquire()

    def _release(self, _: Many) -> None:
        self._event.release()

    def wait(self, timeout: float) -> None:
        if not self._event.acquire(timeout=timeout):
            raise RaftTimeoutError("the client channel did not answer")


class AsyncRun:
    """The sink of coroutines' calls sent together (one, or a turn of an event loop's): resolves
    each one's asyncio future, by position, from any thread."""

    __slots__ = ("futures", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future]):
        self.loop = loop
        self.futures = futures

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        futures = self.futures
        _resolve_soon(self.loop, [(futures[p], v, None) for p, v in zip(positions, values)])

    def put_error(self, position: int, exc: BaseException) -> None:
        _resolve_soon(self.loop, [(self.futures[position], None, exc)])


# Coroutines are resolved in bunches: one call_soon_threadsafe (a write to the loop's wake-up
# pipe) per event loop for all the futures an answer resolves, not one per future.
_batches: dict[asyncio.AbstractEventLoop, list] = {}
_batches_lock = threading.Lock()


def _resolve_soon(loop: asyncio.AbstractEventLoop,
                  outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Resolve each ``(future, value, exception)`` of ``outcomes`` on ``loop``, soon."""
    with _batches_lock:
        batch = _batches.get(loop)
        if batch is None:
            batch = _batches[loop] = []
            first = True
        else:
            first = False
        batch += outcomes
    if first:
        try:
            loop.call_soon_threadsafe(_resolve_batch, loop)
        except RuntimeError:  # the loop is closed: nobody waits any more
            with _batches_lock:
                _batches.pop(loop, None)


def _resolve_batch(loop: asyncio.AbstractEventLoop) -> None:
    with _batches_lock:
        batch = _batches.pop(loop, [])
    for fut, value, exc in batch:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(value)
        elif isinstance(exc, StopIteration):  # a future refuses it (asyncio turns it into this too)
            err = RuntimeError(f"the call raised {exc!r}")
            err.__cause__ = exc
            fut.set_exception(err)
        else:
            fut.set_exception(exc)
