"""The Ray actor that hosts one Raft node: a thin shell around a :class:`~raft_actors.replica.Replica`.

It owns the tick loop (real time), the transport (Ray calls to peers) and the asyncio futures
of client requests; the protocol, persistence order and application live in the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import time
import warnings
from typing import Any

import cloudpickle
import ray

from .config import RaftConfig
from .core import ConfChange, ConfChangeType, HardState, Message, MsgType, NotLeader
from .core.messages import SnapshotMeta
from .envelope import Outcome, dumps, encode_outcomes, loads
from .errors import CommandRejectedError, NotLeaderError
from .lost_state import has_lost_state
from .replica import Replica
from .storage import FileStorage, MemoryStorage
from .storage.metered import MeteredStorage
from .transport import Transport

log = logging.getLogger(__name__)


class RaftNode:
    """One Raft node. Created by :class:`~raft_actors.cluster.RaftCluster` as an async Ray actor.

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
        self._snapshotting: asyncio.Task | None = None
        self.snapshot_timing: dict[str, float] = {}
        self._snapshots_in: dict[int, tuple[int, SnapshotMeta, bytearray]] = {}  # sender -> (term, meta, data so far)
        self.snapshot_chunks_received = 0
        self.snapshots_received = 0
        self._closed = False
        self._ready_scheduled = False
        self._tasks: list[asyncio.Task] = []
        self.transport = Transport(
            node_id, self._lookup_peer, self._on_reply, snapshot_source=self._snapshot_to_send,
            on_snapshot_done=self._on_snapshot_done, chunk_bytes=config.snapshot_chunk_bytes,
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
            random.Random(), lost_state=lost_state,
        )
        self.replica.background_snapshots = True  # see _snapshot: the file is written off the loop
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick_loop())]
        self._kick()

    def _snapshot_to_send(self) -> Any:
        return self.replica.snapshot_to_send()

    @property
    def _running(self) -> bool:
        return bool(self._tasks) and not self._closed

    async def has_state(self) -> bool:
        """Whether this node stored anything in its data directory before this start."""
        return self._had_state

    async def start(self, others_hold_state: bool) -> None:
        """Start a node created with ``wait_for_start``; ``others_hold_state``: other nodes of
        the cluster hold state (so this one, if it holds none, lost it)."""
        if not self._tasks:
            self._start(others_hold_state)

    def _lookup_peer(self, peer: int) -> Any:
        try:
            return ray.get_actor(node_actor_name(self.cluster_name, peer), namespace=self.namespace)
        except ValueError:
            return None

    # ------------------------------------------------------------------ loops
    async def _tick_loop(self) -> None:
        interval = self.config.tick_interval
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick = max(next_tick + interval, loop.time())
            self._guard(self.replica.tick)
            self._kick()

    def _kick(self) -> None:
        """Process what is ready soon: once for everything that arrives in this turn of the
        event loop (one fsync for all of it), before the loop waits for more."""
        if not self._ready_scheduled:
            self._ready_scheduled = True
            asyncio.get_running_loop().call_soon(self._process_ready)

    def _process_ready(self) -> None:
        self._ready_scheduled = False
        if not self._closed:
            self._guard(lambda: self.transport.send(self.replica.process_ready()))
            self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        if self._snapshotting is None and self.replica.snapshot_due and not self._closed:
            self._snapshotting = asyncio.get_running_loop().create_task(self._snapshot())

    async def _snapshot(self) -> SnapshotMeta | None:
        """Take a snapshot: serialize the state machine on the loop (it must not change
        meanwhile), write and fsync the file in a thread (the loop goes on with heartbeats and
        the log), then adopt it and compact the log on the loop."""
        try:
            t0 = time.perf_counter()
            prepared = self.replica.prepare_snapshot()
            if prepared is None:
                return None
            meta, data = prepared
            t1 = time.perf_counter()
            try:
                staged = await asyncio.to_thread(self.replica.storage.stage_snapshot, meta, data)
            except OSError:
                log.exception("node %s: could not write a snapshot; the log is not compacted", self.node_id)
                self.replica.snapshot_failed()
                return None
            done: list[SnapshotMeta | None] = [None]

            def finish() -> None:
                done[0] = self.replica.finish_snapshot(meta, data, staged)

            t2 = time.perf_counter()
            if not self._closed:
                self._guard(finish)
            # on the loop: prepare and finish; in a thread: write
            self.snapshot_timing = {"snapshot_prepare_ms": (t1 - t0) * 1e3, "snapshot_write_ms": (t2 - t1) * 1e3,
                                    "snapshot_finish_ms": (time.perf_counter() - t2) * 1e3}
            return done[0]
        finally:
            self._snapshotting = None

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except BaseException:
            # An invariant broke: stop at once (fail-stop) rather than run on with bad state.
            log.exception("node %s: internal error, exiting", self.node_id)
            os._exit(70)

    # ------------------------------------------------------------------ peer RPC
    async def connect(self, peers: dict[int, Any]) -> None:
        """Give this node the handles of its peers (again after a peer is replaced)."""
        self.transport.set_peers(peers)

    async def receive(self, sender: int, payload: bytes) -> bytes | None:
        """Raft messages from a peer (one pickled batch).

        Handles them at once (persisting before anything is sent) and returns this node's
        messages for ``sender`` as one pickled batch; others go out through the transport.
        """
        if not self._running or not self.transport.allows(sender):
            return None
        self._step_all(payload)
        return self._answer(sender)

    async def receive_snapshot(self, sender: int, term: int, meta: SnapshotMeta, offset: int, size: int,
                               chunk: bytes, done: bool) -> bytes | bool | None:
        """One chunk of the leader's snapshot (InstallSnapshot), sent in order, one at a time.

        Returns ``True`` for a chunk taken, ``False`` for one out of order (the sender gives up
        and the leader sends the snapshot again later); the last chunk installs the snapshot and
        returns this node's answer, as :meth:`receive` does.
        """
        if not self._running or not self.transport.allows(sender):
            return None
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
        self._guard(lambda: self.replica.install_snapshot(msg, bytes(got[2])))
        return self._answer(sender) or dumps([])

    def _answer(self, sender: int) -> bytes | None:
        """Process what is ready; this node's messages for ``sender`` come back as one batch."""
        replies: list = []

        def handle() -> None:
            out = self.replica.process_ready()
            # a snapshot travels on its own (in chunks, with its state): never in a reply
            replies.extend(m for m in out if m.to == sender and m.type != MsgType.SNAPSHOT)
            self.transport.send([m for m in out if m.to != sender or m.type == MsgType.SNAPSHOT])

        self._guard(handle)
        self._maybe_snapshot()
        replies = self.transport.faulty(replies)
        return dumps(replies) if replies else None

    def _on_snapshot_done(self, peer: int, delivered: bool, reply: bytes | None) -> None:
        if reply is not None:
            self._on_reply(peer, reply)
        self._guard(lambda: self.replica.report_snapshot(peer, delivered))
        self._kick()

    def _on_reply(self, sender: int, payload: bytes) -> None:
        if self._running and self.transport.allows(sender):
            self._step_all(payload)
            self._kick()

    def _step_all(self, payload: bytes) -> None:
        step = self.replica.step
        for m in loads(payload):
            self._guard(lambda m=m: step(m))

    # ------------------------------------------------------------------ client RPC
    async def submit(self, payload: bytes) -> bytes:
        """Propose a batch of encoded client requests; answer each once applied.

        Returns the pickled list of :class:`~raft_actors.envelope.Outcome`, one per request.
        """
        requests = loads(payload)
        if not self._running:
            return encode_outcomes([Outcome(False, NotLeaderError(0, "the node is not running"))] * len(requests))
        done = asyncio.get_running_loop().create_future()
        outcomes: list[Outcome | None] = [None] * len(requests)
        left = [len(requests)]

        def resolver(k: int) -> Any:
            def resolve(outcome: Outcome) -> None:
                if outcomes[k] is None:
                    outcomes[k] = outcome
                    left[0] -= 1
                    if not left[0] and not done.done():
                        done.set_result(None)
            return resolve

        try:
            self.replica.propose(requests, [resolver(k) for k in range(len(requests))])
        except NotLeaderError as exc:
            return encode_outcomes([Outcome(False, exc)] * len(requests))
        self._kick()
        if left[0]:
            await done  # one wake-up for the whole batch
        return encode_outcomes(outcomes)  # type: ignore[arg-type]

    async def read(self, payload: bytes, mode: str) -> bytes:
        """Run a batch of encoded queries at consistency ``mode`` (linearizable, follower or
        stale). Returns the pickled list of outcomes, one per query."""
        if not self._running:
            return encode_outcomes([Outcome(False, NotLeaderError(0, "the node is not running"))] * len(loads(payload)))
        outcomes: list[Outcome | None] = []
        queries = []
        for data in loads(payload):
            try:
                queries.append(loads(data))
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - e.g. a class this node cannot import
                outcomes.append(Outcome(False, CommandRejectedError(f"undecodable query: {type(exc).__name__}: {exc}")))
        if queries:
            future = asyncio.get_running_loop().create_future()
            try:
                self.replica.read(queries, mode, _resolver(future))
                self._kick()
                answers = iter(await future)
            except NotLeaderError as exc:
                answers = iter([Outcome(False, exc)] * len(queries))
            outcomes = [o if o is not None else next(answers) for o in outcomes]
        return encode_outcomes(outcomes)

    async def transfer_leadership(self, to: int) -> None:
        """Start handing leadership to node ``to`` (this node must be the leader)."""
        if not self._running:
            raise NotLeaderError(0, "the node is not running")
        try:
            self.replica.core.transfer_leader(to)
        except NotLeader as exc:
            raise NotLeaderError(exc.leader) from None
        self._kick()

    async def change_membership(self, kind: str, node_id: int, catch_up: bool = True) -> bytes:
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
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        start = loop.time()
        caught: dict[str, float] = {}

        def on_caught_up(rounds: int) -> None:
            caught.update(caught_up_s=loop.time() - start, rounds=rounds)

        try:
            if kind == "promote" and catch_up:
                self.replica.promote_when_caught_up(node_id, _resolver(done), on_caught_up)
            else:
                self.replica.change_membership(ConfChange(types[kind], node_id), _resolver(done))
        except NotLeaderError as exc:
            return dumps(Outcome(False, exc))
        self._kick()
        out = await done
        if out.ok:
            out = Outcome(True, (out.value, caught))
        return dumps(out)

    # ------------------------------------------------------------------ admin
    async def describe(self) -> dict[str, Any]:
        """How this node was made: what a driver that connects later needs to manage the cluster
        (config, state machine, data directory, slot, actor options)."""
        return {"node": self.node_id, "config": self.config, "state_machine": self._state_machine,
                "data_dir": self.data_dir, "slot": self.slot, "actor_options": self._actor_options,
                "bootstrap": list(self._voters)}

    async def status(self) -> dict[str, Any]:
        where = {"slot": self.slot, "ray_node": ray.get_runtime_context().get_node_id()}
        if not self._tasks:
            return {"node": self.node_id, "role": "starting", "pid": os.getpid(), **where}
        st = self.replica.status()
        st.update(where)
        st["pid"] = os.getpid()
        st["blocked"] = sorted(self.transport.blocked)
        st.update(self.storage.stats())
        st["rss_bytes"] = _rss_bytes()
        st.update(self.snapshot_timing)
        st["snapshots_received"] = self.snapshots_received
        st["snapshot_chunks_received"] = self.snapshot_chunks_received
        return st

    async def set_faults(self, blocked: list[int] | None = None, drop_rate: float | None = None,
                         delay: float | None = None, duplicate_rate: float | None = None) -> None:
        """Fault injection: cut this node off from ``blocked`` peers; drop, delay, duplicate messages."""
        if blocked is not None:
            self.transport.block(set(blocked))
        if drop_rate is not None:
            self.transport.drop_rate = drop_rate
        if duplicate_rate is not None:
            self.transport.duplicate_rate = duplicate_rate
        if delay is not None:
            self.transport.delay = delay

    async def ping(self) -> int:
        return self.node_id

    async def reset_metrics(self) -> None:
        """Start the storage's sync statistics afresh (benchmarks measure one phase at a time)."""
        if self._tasks:
            self.storage.reset()

    async def take_snapshot(self) -> SnapshotMeta | None:
        """Snapshot the state machine and compact the log now (as done past ``snapshot_entries``)."""
        if not self._running:
            return None
        while self._snapshotting is not None:
            await asyncio.shield(self._snapshotting)
        task = self._snapshotting = asyncio.get_running_loop().create_task(self._snapshot())
        return await task

    async def destroy_data(self) -> None:
        """Stop this node and delete its data directory (the node is about to be killed)."""
        started, self._closed = bool(self._tasks), True
        for t in self._tasks:
            t.cancel()
        if started:
            self.replica.fail_all("the node is shutting down")
            self.replica.storage.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def crash(self) -> None:
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


def _resolver(future: asyncio.Future) -> Any:
    def resolve(outcome: Any) -> None:
        if not future.done():
            future.set_result(outcome)

    return resolve
