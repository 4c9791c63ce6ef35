"""The Ray actor that hosts one Raft node: a thin shell around a :class:`~raft_actors.replica.Replica`.

A node is a *threaded* Ray actor (a Ray call to a threaded actor costs less than to an asyncio
one; measured in ``benchmarks/user_paths.py``). Its methods run on Ray's threads, grouped so
that one kind of call never waits for another kind:

- ``peer`` (:meth:`RaftNode.receive`, :meth:`RaftNode.receive_snapshot`): Raft messages;
- ``client`` (:meth:`RaftNode.submit`, :meth:`RaftNode.read`): client calls, which wait until
  their entries are applied;
- ``admin``: status, faults, membership and the rest.

Three threads of its own:

- the Raft side is run by whichever thread has work for it (*flat combining*): a thread posts
  its work (messages, a proposal, a tick) and, if nobody is running the Raft side, runs it
  itself, for everything posted meanwhile too, then persists and sends once for all of it
  (group commit: one fsync for everything that arrived while the last one ran);
- the **timer** thread ticks the core, runs the work Ray's callback threads hand over (peer
  answers) and sends delayed messages;
- the **apply** thread owns the state machine: it applies committed entries, answers clients
  and serves reads, so a slow command never delays a heartbeat or a vote.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle
import ray

from .config import RaftConfig
from .core import ConfChange, ConfChangeType, HardState, Message, MsgType, NotLeader
from .core.messages import SnapshotMeta
from .envelope import Outcome, Results, decode_call, dumps, encode_results, loads
from .errors import CommandRejectedError, NotLeaderError
from .lost_state import has_lost_state
from .metrics import NodeMetrics, drain
from .replica import Replica
from .storage import FileStorage, MemoryStorage
from .storage.metered import MeteredStorage
from .transport import Transport, decode_messages, encode_messages

log = logging.getLogger(__name__)

#: Ray concurrency groups of a node actor's methods: threads per group
CONCURRENCY_GROUPS = {"peer": 16, "client": 128, "admin": 8}


class _Work:
    """Something for the Raft side to do, posted by a thread that may wait for it to be done."""

    __slots__ = ("done", "fn", "replies", "sender")

    def __init__(self, fn: Callable[[], None], sender: int = 0, wait: bool = True):
        self.fn = fn
        self.sender = sender  # a peer whose messages come back in ``replies`` instead of by call
        self.replies: list[Message] = []
        self.done = threading.Lock() if wait else None
        if wait:
            self.done.acquire()


class _Answer:
    """A client call's outcome, waited for on the calling thread (a one-shot lock)."""

    __slots__ = ("given", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: Any = None
        self.given = False

    def __call__(self, value: Any) -> None:
        if not self.given:
            self.given = True
            self.value = value
            self.lock.release()

    def wait(self) -> Any:
        self.lock.acquire()
        return self.value


class RaftNode:
    """One Raft node. Created by :class:`~raft_actors.cluster.RaftCluster` as a threaded Ray
    actor with :data:`CONCURRENCY_GROUPS`.

    Args:
        node_id: this node's id.
        voters: every voting member's id.
        config: protocol and timing settings.
        state_machine: cloudpickled zero-argument factory of the state machine (usually a class).
        others_hold_state: other nodes of the cluster hold state (see
            :func:`~raft_actors.lost_state.has_lost_state`, which decides whether this node
            lost its state and so rejoins as a non-voter).
        cluster_name: peers are named actors ``node_actor_name(cluster_name, id)``; a node
            finds them by name when it has no handle (after a restart).
        data_dir: the node's directory for its write-ahead log and snapshots
            (:class:`~raft_actors.storage.FileStorage`); ``None`` keeps everything in memory.
            The node replays what it finds there.
        restarted: this node ran before (the driver restarts it). A node that ran before, or
            that Ray restarted, and finds no state at all has lost it: it rejoins as a non-voter.
            With in-memory storage that is every restart.
        wait_for_start: do not run until :meth:`start` says whether other nodes hold state (at
            launch the driver first asks every node :meth:`has_state`). A node Ray restarts runs
            at once.
        namespace: the Ray namespace of the cluster's named actors.
        slot: the machine this node is pinned to (see :mod:`raft_actors.placement`), if any.
        actor_options: the ``ray.remote`` options the cluster's node actors are made with
            (:meth:`describe` hands them to a driver that connects later).
    """

    def __init__(self, node_id: int, voters: list[int], config: RaftConfig, state_machine: bytes,
                 others_hold_state: bool = False, cluster_name: str = "", data_dir: str | None = None,
                 restarted: bool = False, wait_for_start: bool = False, namespace: str | None = None,
                 slot: str | None = None, actor_options: dict[str, Any] | None = None):
        with warnings.catch_warnings():  # Ray's property trips its own deprecation warning
            warnings.simplefilter("ignore", DeprecationWarning)
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        # hand the GIL over sooner: the Raft side, the apply thread and Ray's threads take turns
        sys.setswitchinterval(0.001)
        self.node_id = node_id
        self.config = config
        self.cluster_name = cluster_name
        self.namespace = namespace
        self.slot = slot
        self._actor_options = dict(actor_options or {})
        self.data_dir = data_dir
        self._voters = voters
        self._state_machine = state_machine
        # whether this node stored anything here before (checked without creating anything)
        self._had_state = data_dir is not None and FileStorage.holds_state(data_dir)
        self._ran_before = reconstructed or restarted
        self.snapshot_timing: dict[str, float] = {}
        self._snapshots_in: dict[int, tuple[int, SnapshotMeta, bytearray]] = {}  # sender -> (term, meta, data so far)
        self._snapshots_lock = threading.Lock()
        self.snapshot_chunks_received = 0
        self.snapshots_received = 0
        self._closed = False
        self._started = threading.Event()
        self.metrics: NodeMetrics | None = None
        self._metrics_snap: dict[str, Any] | None = None  # collected on the Raft side, for the timer thread
        self._snapshots_taken: deque[tuple[float, int]] = deque(maxlen=100)  # (seconds, bytes), for metrics
        # the Raft side: posted work, and who runs it
        self._inbox: deque[_Work] = deque()
        self._deferred: deque[Callable[[], None]] = deque()  # for the timer thread, off the Raft side
        self._raft = threading.Lock()
        self._wakeup = threading.Condition()
        self._timer_pending = False
        self._apply_wakeup = threading.Condition()
        self._apply_pending = False
        self._apply_idle = False  # the apply thread waits for work (see _post_later)
        self._snapshot_waiters: list[_Answer] = []
        self._threads: list[threading.Thread] = []
        self.transport = Transport(
            node_id, self._lookup_peer, self._on_reply, snapshot_source=self._snapshot_to_send,
            on_snapshot_done=self._on_snapshot_done, chunk_bytes=config.snapshot_chunk_bytes, max_calls=2,
            defer=self._defer,
        )
        if reconstructed or not wait_for_start:
            self._start(others_hold_state)

    def _start(self, others_hold_state: bool) -> None:
        """Open the storage (replaying it) and run. A node that lost its state is marked so in
        its storage before anything else is written there."""
        lost_state = has_lost_state(holds_state=self._had_state, ran_before=self._ran_before,
                                    others_hold_state=others_hold_state)
        mark = HardState(lost_state=True) if lost_state else None
        self.storage = MeteredStorage(
            FileStorage(self.data_dir, segment_bytes=self.config.wal_segment_bytes, initial_hard_state=mark)
            if self.data_dir else MemoryStorage()
        )
        self.replica = Replica(
            self.node_id, self._voters, self.config, self.storage, cloudpickle.loads(self._state_machine)(),
            random.Random(), lost_state=lost_state, inline_apply=False,
        )
        self.replica.on_apply_work = self._wake_apply
        self.replica.on_snapshot_prepared = self._snapshot_prepared
        if self.config.metrics_interval > 0:
            try:
                self.metrics = NodeMetrics(self.cluster_name, self.node_id)
            except Exception:  # a Ray without metrics: the node runs without them
                log.warning("node %s: Ray's metrics are unavailable; not exporting any", self.node_id, exc_info=True)
        for name, target in (("raft-timer", self._timer_loop), ("raft-apply", self._apply_loop)):
            t = threading.Thread(target=target, name=f"{name}-{self.node_id}", daemon=True)
            t.start()
            self._threads.append(t)
        self._started.set()
        self._post(lambda: None)  # the first ready: what the log replay committed

    def _snapshot_to_send(self) -> Any:
        return self.replica.snapshot_to_send()

    @property
    def _running(self) -> bool:
        return self._started.is_set() and not self._closed

    @ray.method(concurrency_group="admin")
    def has_state(self) -> bool:
        """Whether this node stored anything in its data directory before this start."""
        return self._had_state

    @ray.method(concurrency_group="admin")
    def start(self, others_hold_state: bool) -> None:
        """Start a node created with ``wait_for_start``; ``others_hold_state``: other nodes of
        the cluster hold state (so this one, if it holds none, lost it)."""
        if not self._started.is_set():
            self._start(others_hold_state)

    def _lookup_peer(self, peer: int) -> Any:
        try:
            return ray.get_actor(node_actor_name(self.cluster_name, peer), namespace=self.namespace)
        except ValueError:
            return None

    # ------------------------------------------------------------------ the Raft side
    def _post(self, fn: Callable[[], None], sender: int = 0) -> list[Message] | None:
        """Run ``fn`` on the Raft side (with everything else posted meanwhile), then persist and
        send; returns the messages for ``sender``, which its caller answers with, or ``None``
        if the node stopped before ``fn`` could run."""
        work = _Work(fn, sender)
        self._inbox.append(work)
        self._drain()
        work.done.acquire()  # already released if this thread ran it
        return None if work.fn is None else work.replies

    def _defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the timer thread, outside the Raft side (work that may block)."""
        self._deferred.append(fn)
        with self._wakeup:
            self._timer_pending = True
            self._wakeup.notify()

    def _post_later(self, fn: Callable[[], None]) -> None:
        """Have ``fn`` run on the Raft side by another thread (from one that must not block,
        e.g. Ray's callback thread). The apply thread, when idle, runs it and then applies at
        once what it committed (a write's answer takes one thread hand-off less); while the
        apply thread is busy, the timer thread does (a slow command never delays the Raft side)."""
        self._inbox.append(_Work(fn, wait=False))
        with self._apply_wakeup:
            if self._apply_idle:
                self._apply_pending = True
                self._apply_wakeup.notify()
                return
        with self._wakeup:
            self._timer_pending = True
            self._wakeup.notify()

    def _drain(self) -> None:
        """Flat combining: run the Raft side for all posted work unless another thread is."""
        inbox = self._inbox
        while inbox:
            if not self._raft.acquire(blocking=False):
                return  # the thread running it will see our work (it checks after releasing)
            try:
                batch = []
                while inbox:
                    batch.append(inbox.popleft())
                self._run(batch)
            finally:
                self._raft.release()

    def _run(self, batch: list[_Work]) -> None:
        senders: dict[int, _Work] = {}
        try:
            for w in batch:
                if self._closed:
                    w.fn = None  # type: ignore[assignment]  # not run: the node stopped
                    continue
                w.fn()
                if w.sender:
                    senders[w.sender] = w
            if not self._closed:
                self.replica.process_ready(self._sender(senders) if senders else self.transport.send)
        except BaseException:
            # An invariant broke: stop at once (fail-stop) rather than run on with bad state.
            log.exception("node %s: internal error, exiting", self.node_id)
            os._exit(70)
        finally:
            for w in batch:
                if w.done is not None:
                    w.done.release()

    def _sender(self, callers: dict[int, _Work]) -> Callable[[list[Message]], None]:
        """Send messages, except those for a peer whose call is being answered: they go back
        as that call's return value (a snapshot travels on its own, in chunks)."""
        def send(messages: list[Message]) -> None:
            rest = []
            for m in messages:
                w = callers.get(m.to)
                if w is not None and m.type != MsgType.SNAPSHOT:
                    w.replies.append(m)
                else:
                    rest.append(m)
            if rest:
                self.transport.send(rest)
        return send

    def _timer_loop(self) -> None:
        interval = self.config.tick_interval
        next_tick = time.monotonic() + interval
        every = self.config.metrics_interval
        next_metrics = time.monotonic() + every
        while not self._closed:
            with self._wakeup:
                if not self._timer_pending:
                    self._wakeup.wait(max(0.0, min(next_tick - time.monotonic(), 0.05)))
                self._timer_pending = False
            while self._deferred:
                try:
                    self._deferred.popleft()()
                except Exception:
                    log.exception("node %s: deferred work failed", self.node_id)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = max(next_tick + interval, now)
                self._inbox.append(_Work(self._tick, wait=False))
            if self.metrics is not None and now >= next_metrics:
                next_metrics = now + every
                self._inbox.append(_Work(self._collect_metrics, wait=False))
            self._drain()
            self.transport.due()
            if self._metrics_snap is not None:
                self._export_metrics()

    def _tick(self) -> None:
        self.replica.tick()

    def _collect_metrics(self) -> None:
        """Raft side: what the timer thread exports next (a consistent view of the core)."""
        self._metrics_snap = self.replica.metrics_snapshot()

    def _export_metrics(self) -> None:
        """Timer thread: hand the node's metrics to Ray's (see :mod:`raft_actors.metrics`)."""
        snap, self._metrics_snap = self._metrics_snap, None
        try:
            assert self.metrics is not None and snap is not None
            self.metrics.export(snap, drain(self.storage.recent), drain(self._snapshots_taken))
        except Exception:  # metrics must never stop a node
            log.exception("node %s: exporting metrics failed", self.node_id)

    # ------------------------------------------------------------------ the apply side
    def _wake_apply(self) -> None:
        with self._apply_wakeup:
            self._apply_pending = True
            self._apply_wakeup.notify()

    def _apply_loop(self) -> None:
        replica = self.replica
        while not self._closed:
            with self._apply_wakeup:
                self._apply_idle = True
                while not self._apply_pending and not self._closed:
                    self._apply_wakeup.wait(0.5)
                self._apply_pending = False
                self._apply_idle = False
            try:
                if self._inbox:
                    self._drain()  # Raft side work handed over by _post_later
                replica.apply_pending()
            except BaseException:
                log.exception("node %s: the apply side failed, exiting", self.node_id)
                os._exit(71)

    def _snapshot_prepared(self, prepared: tuple[SnapshotMeta, Any] | None) -> None:
        """Apply side: a snapshot was prepared (``None``: there was nothing new, or it failed);
        write it in a thread of its own, then adopt it and compact the log on the Raft side."""
        if prepared is None:
            self._snapshot_finished(None)
            return
        meta, data = prepared
        t0 = time.perf_counter()

        def write() -> None:
            t1 = time.perf_counter()
            try:
                staged = self.replica.storage.stage_snapshot(meta, data)
            except OSError:
                log.exception("node %s: could not write a snapshot; the log is not compacted", self.node_id)
                self._post_later(self.replica.snapshot_failed)
                self._snapshot_finished(None)
                return
            t2 = time.perf_counter()
            done: list[SnapshotMeta | None] = [None]

            def finish() -> None:
                done[0] = self.replica.finish_snapshot(meta, data, staged)

            if not self._closed:
                self._post(finish)
            self.snapshot_timing = {"snapshot_prepare_ms": (t1 - t0) * 1e3, "snapshot_write_ms": (t2 - t1) * 1e3,
                                    "snapshot_finish_ms": (time.perf_counter() - t2) * 1e3}
            if done[0] is not None:
                size = len(data) if isinstance(data, bytes | bytearray) else sum(len(b) for b in data)
                self._snapshots_taken.append((time.perf_counter() - t0, size))
            self._snapshot_finished(done[0])

        threading.Thread(target=write, name=f"snapshot-write-{self.node_id}", daemon=True).start()

    def _snapshot_finished(self, meta: SnapshotMeta | None) -> None:
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        for w in waiters:
            w(meta if meta is not None else False)

    # ------------------------------------------------------------------ peer RPC
    @ray.method(concurrency_group="admin")
    def connect(self, peers: dict[int, Any]) -> None:
        """Give this node the handles of its peers (again after a peer is replaced)."""
        self.transport.set_peers(peers)

    @ray.method(concurrency_group="peer")
    def receive(self, sender: int, payload: bytes) -> bytes | None:
        """Raft messages from a peer (one encoded batch).

        Handles them at once (persisting before anything is sent) and returns this node's
        messages for ``sender`` as one encoded batch; others go out through the transport.
        """
        if not self._running or not self.transport.allows(sender):
            return None
        msgs = decode_messages(payload)
        step = self.replica.step

        def handle() -> None:
            for m in msgs:
                step(m)

        replies = self.transport.faulty(self._post(handle, sender) or [])
        return encode_messages(replies) if replies else None

    @ray.method(concurrency_group="peer")
    def receive_snapshot(self, sender: int, term: int, meta: SnapshotMeta, offset: int, size: int,
                         chunk: bytes, done: bool) -> bytes | bool | None:
        """One chunk of the leader's snapshot (InstallSnapshot), sent in order, one at a time.

        Returns ``True`` for a chunk taken, ``False`` for one out of order (the sender gives up
        and the leader sends the snapshot again later); the last chunk installs the snapshot and
        returns this node's answer, as :meth:`receive` does.
        """
        if not self._running or not self.transport.allows(sender):
            return None
        with self._snapshots_lock:
            if offset == 0:  # a new transfer: any unfinished one (an earlier leader's) is dropped
                self._snapshots_in = {sender: (term, meta, bytearray())}
            got = self._snapshots_in.get(sender)
            if got is None or got[0] != term or got[1] != meta or len(got[2]) != offset:
                self._snapshots_in.pop(sender, None)
                return False
            got[2].extend(chunk)
            self.snapshot_chunks_received += 1
            if not done:
                return True
            del self._snapshots_in[sender]
        if len(got[2]) != size:
            return False
        self.snapshots_received += 1
        msg = Message(MsgType.SNAPSHOT, self.node_id, sender, term, snapshot=meta)
        data = bytes(got[2])
        replies = self._post(lambda: self.replica.install_snapshot(msg, data), sender)
        if replies is None:
            return None
        replies = self.transport.faulty(replies)
        return encode_messages(replies) if replies else dumps([])

    def _on_snapshot_done(self, peer: int, delivered: bool, reply: bytes | None) -> None:
        """A snapshot transfer ended: the core always hears how (even from a peer cut off since,
        or it would wait for the report for ever); the peer's answer only if it may get through."""
        msgs = decode_messages(reply) if reply and self.transport.allows(peer) else []

        def handle() -> None:
            for m in msgs:
                self.replica.step(m)
            self.replica.report_snapshot(peer, delivered)

        if self._running:
            self._post_later(handle)

    def _on_reply(self, sender: int, payload: bytes) -> None:
        """Ray's callback thread: a peer's answer. Decoded here, stepped by the timer thread."""
        if self._running and self.transport.allows(sender):
            msgs = decode_messages(payload)
            step = self.replica.step

            def handle() -> None:
                for m in msgs:
                    step(m)

            self._post_later(handle)

    # ------------------------------------------------------------------ client RPC
    @ray.method(concurrency_group="client")
    def submit(self, payload: bytes) -> bytes:
        """Propose a client call's write requests (as one log entry); answer once applied.

        Returns :func:`~raft_actors.envelope.encode_results` of every request, in call order.
        """
        if not self._running:
            n = sum(p[3] for p in decode_call(payload))
            return encode_results(Results.failed(n, NotLeaderError(0, "the node is not running")))
        batch = self.replica.prepare_batch(payload)
        answer = _Answer()
        refused: list[NotLeaderError] = []

        def propose() -> None:
            try:
                self.replica.propose(batch, answer)
            except NotLeaderError as exc:
                refused.append(exc)

        if self._post(propose) is None:
            refused.append(NotLeaderError(0, "the node is shutting down"))
        res = batch.merge(Results.failed(batch.size - len(batch.early), refused[0])) if refused else answer.wait()
        if self.metrics is not None:
            self.metrics.counts.add("write", len(res.values), res.errors)
        return encode_results(res)

    @ray.method(concurrency_group="client")
    def read(self, payload: bytes, mode: str) -> bytes:
        """Run a read call's queries at consistency ``mode`` (linearizable, follower or
        stale). Returns :func:`~raft_actors.envelope.encode_results`, one per query."""
        t0 = time.perf_counter()
        parts = loads(payload)
        queries: list[Any] = []
        undecodable: dict[int, BaseException] = {}  # by position in the call
        positions: list[int] = []  # of the decoded queries
        pos = 0
        for count, blob in parts:
            try:
                qs = loads(blob)
            except Exception as exc:  # noqa: BLE001 - e.g. a class this node cannot import
                err = CommandRejectedError(f"undecodable query: {type(exc).__name__}: {exc}")
                undecodable.update((pos + k, err) for k in range(count))
                pos += count
                continue
            queries += qs
            positions += range(pos, pos + len(qs))
            pos += len(qs)
        answers = Results([])
        if queries:
            if not self._running:
                answers = Results.failed(len(queries), NotLeaderError(0, "the node is not running"))
            else:
                answer = _Answer()
                refused: list[NotLeaderError] = []

                def start() -> None:
                    try:
                        self.replica.read(queries, mode, answer)
                    except NotLeaderError as exc:
                        refused.append(exc)

                if self._post(start) is None:
                    refused.append(NotLeaderError(0, "the node is shutting down"))
                answers = Results.failed(len(queries), refused[0]) if refused else answer.wait()
        m = self.metrics
        if m is not None:
            m.counts.add(mode, pos, {**undecodable, **answers.errors} if undecodable else answers.errors)
            m.counts.read_seconds.append(time.perf_counter() - t0)
        if not undecodable:
            return encode_results(answers)
        values: list[Any] = [None] * pos
        errors = dict(undecodable)
        for k, p in enumerate(positions):
            values[p] = answers.values[k]
            if k in answers.errors:
                errors[p] = answers.errors[k]
        return encode_results(Results(values, errors))

    @ray.method(concurrency_group="admin")
    def transfer_leadership(self, to: int) -> None:
        """Start handing leadership to node ``to`` (this node must be the leader)."""
        if not self._running:
            raise NotLeaderError(0, "the node is not running")
        refused: list[NotLeaderError] = []

        def transfer() -> None:
            try:
                self.replica.core.transfer_leader(to)
            except NotLeader as exc:
                refused.append(NotLeaderError(exc.leader))

        if self._post(transfer) is None:
            raise NotLeaderError(0, "the node is shutting down")
        if refused:
            raise refused[0]

    @ray.method(concurrency_group="admin")
    def change_membership(self, kind: str, node_id: int, catch_up: bool = True) -> bytes:
        """Make one membership change through this node (the leader) and wait until it is
        committed: ``kind`` is ``"add_learner"``, ``"promote"`` (once caught up, unless
        ``catch_up`` is false) or ``"remove"``.

        Returns a pickled :class:`~raft_actors.envelope.Outcome`: the new configuration and, for
        a promotion, ``{"caught_up_s": ..., "rounds": ...}``; or the error
        (:class:`NotLeaderError`, :class:`LeadershipLostError`, :class:`MembershipChangeError`).
        """
        if not self._running:
            return dumps(Outcome(False, NotLeaderError(0, "the node is not running")))
        types = {"add_learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.PROMOTE,
                 "remove": ConfChangeType.REMOVE}
        if kind not in types:
            raise ValueError(f"kind must be one of {sorted(types)}, not {kind!r}")
        answer = _Answer()
        start = time.monotonic()
        caught: dict[str, float] = {}
        refused: list[NotLeaderError] = []

        def on_caught_up(rounds: int) -> None:
            caught.update(caught_up_s=time.monotonic() - start, rounds=rounds)

        def change() -> None:
            try:
                if kind == "promote" and catch_up:
                    self.replica.promote_when_caught_up(node_id, answer, on_caught_up)
                else:
                    self.replica.change_membership(ConfChange(types[kind], node_id), answer)
            except NotLeaderError as exc:
                refused.append(exc)

        if self._post(change) is None:
            refused.append(NotLeaderError(0, "the node is shutting down"))
        if refused:
            return dumps(Outcome(False, refused[0]))
        out = answer.wait()
        if out.ok:
            out = Outcome(True, (out.value, caught))
        return dumps(out)

    # ------------------------------------------------------------------ admin
    @ray.method(concurrency_group="admin")
    def describe(self) -> dict[str, Any]:
        """How this node was made: what a driver that connects later needs to manage the cluster
        (config, state machine, data directory, slot, actor options)."""
        return {"node": self.node_id, "config": self.config, "state_machine": self._state_machine,
                "data_dir": self.data_dir, "slot": self.slot, "actor_options": self._actor_options,
                "bootstrap": list(self._voters)}

    @ray.method(concurrency_group="admin")
    def status(self) -> dict[str, Any]:
        where = {"slot": self.slot, "ray_node": ray.get_runtime_context().get_node_id()}
        if not self._started.is_set():
            return {"node": self.node_id, "role": "starting", "pid": os.getpid(), **where}
        got: list[dict[str, Any]] = []
        if self._post(lambda: got.append(self.replica.status())) is None:
            return {"node": self.node_id, "role": "stopped", "pid": os.getpid(), **where}
        st = got[0]
        st.update(where)
        st["pid"] = os.getpid()
        st["blocked"] = sorted(self.transport.blocked)
        st.update(self.storage.stats())
        st["rss_bytes"] = _rss_bytes()
        st["cpu_s"] = time.process_time()
        st.update(self.snapshot_timing)
        st["snapshots_received"] = self.snapshots_received
        st["snapshot_chunks_received"] = self.snapshot_chunks_received
        return st

    @ray.method(concurrency_group="admin")
    def set_faults(self, blocked: list[int] | None = None, drop_rate: float | None = None,
                   delay: float | None = None, duplicate_rate: float | None = None,
                   blocked_out: list[int] | None = None, long_delay_rate: float | None = None,
                   long_delay: tuple[float, float] | None = None, disk: str | None = None) -> None:
        """Fault injection: cut this node off from ``blocked`` peers (both ways) or only its
        messages to ``blocked_out``; drop, delay, duplicate messages (see
        :class:`~raft_actors.transport.Transport`). ``disk``: ``"fail_fsync"`` makes the next
        fsync fail, ``"full"`` the next write (no space left): the node stops at once
        (fail-stop), as it must when it cannot know what reached its disk; ``"ok"`` clears it."""
        t = self.transport
        if blocked is not None:
            t.block(set(blocked))
        if blocked_out is not None:
            t.blocked_out = set(blocked_out)
        if drop_rate is not None:
            t.drop_rate = drop_rate
        if duplicate_rate is not None:
            t.duplicate_rate = duplicate_rate
        if delay is not None:
            t.delay = delay
        if long_delay_rate is not None:
            t.long_delay_rate = long_delay_rate
        if long_delay is not None:
            t.long_delay = (float(long_delay[0]), float(long_delay[1]))
        if disk is not None:
            if disk not in ("ok", "fail_fsync", "full"):
                raise ValueError(f"disk must be 'ok', 'fail_fsync' or 'full', not {disk!r}")
            self.storage.inject(None if disk == "ok" else disk)

    @ray.method(concurrency_group="admin")
    def leader_hint(self) -> tuple[int, int]:
        """``(term, leader)`` as this node knows them (0: none), read at once, without waiting
        for the Raft loop: a client whose leader went silent asks the others who leads now."""
        if not self._started.is_set():
            return (0, 0)
        core = self.replica.core
        return (core.term, core.lead)

    @ray.method(concurrency_group="admin")
    def ping(self) -> int:
        return self.node_id

    @ray.method(concurrency_group="admin")
    def reset_metrics(self) -> None:
        """Start the storage's sync statistics afresh (benchmarks measure one phase at a time)."""
        if self._started.is_set():
            self.storage.reset()

    @ray.method(concurrency_group="admin")
    def take_snapshot(self) -> SnapshotMeta | None:
        """Snapshot the state machine and compact the log now (as done past
        ``RaftConfig.snapshot_commands``); ``None`` if there is nothing new to snapshot."""
        if not self._running:
            return None
        answer = _Answer()
        self._snapshot_waiters.append(answer)
        if self._post(self.replica.request_snapshot) is None:
            self._snapshot_finished(None)
        return answer.wait() or None

    @ray.method(concurrency_group="admin")
    def destroy_data(self) -> None:
        """Stop this node and delete its data directory (the node is about to be killed)."""
        started, self._closed = self._started.is_set(), True
        self._wake_apply()
        with self._wakeup:
            self._wakeup.notify()
        if started:
            for t in self._threads:
                t.join(timeout=5)
            with self._raft:
                self.replica.fail_all("the node is shutting down")
                self.replica.storage.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @ray.method(concurrency_group="admin")
    def crash(self) -> None:
        """Die abruptly, as a crashed process would (Ray restarts the actor if allowed)."""
        os._exit(1)


def node_actor_name(cluster_name: str, node_id: int) -> str:
    """The Ray actor name of a cluster's node."""
    return f"{cluster_name}-node-{node_id}"


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; elsewhere the peak, from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
