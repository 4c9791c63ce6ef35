"""One Raft replica without a runtime: core + storage + state machine, driven in the right order.

The Ray actor (:mod:`raft_actors.node`) and the deterministic simulator (:mod:`raft_actors.sim`)
both wrap a :class:`Replica`; they differ only in how they move messages, keep time and run the
state machine. No Ray, asyncio, clock or sockets here: completions are delivered through
callbacks.

A replica has two sides:

- the **Raft side** (:meth:`tick`, :meth:`step`, :meth:`propose`, :meth:`read`,
  :meth:`process_ready`...) drives the core: it persists, sends, and hands committed entries
  over; it never waits for the state machine;
- the **apply side** (:meth:`apply_pending`) owns the state machine: it applies committed
  entries in order, answers their writers, serves reads once their read index is applied,
  restores snapshots from the leader and takes snapshots.

With ``inline_apply`` (the simulator, the default) the apply side runs at the end of each
:meth:`process_ready`, in the same thread. A node actor runs it in a thread of its own
(``inline_apply=False``, woken by ``on_apply_work``), so a slow ``apply`` never delays a
heartbeat or a vote. The two sides share only a queue, a lock-protected heap of reads and a
few counters.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from .applier import Applier, DecodedPart, decode_parts
from .config import RaftConfig
from .core import (
    ConfChange,
    ConfChangeError,
    ConfChangePending,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Ready,
)
from .core.membership import decode_conf_entry
from .core.messages import SnapshotMeta
from .envelope import Outcome, Results, decode_call, dumps, encode_values, seqs_of
from .errors import (
    CommandRejectedError,
    LeadershipLostError,
    MembershipChangeError,
    NotLeaderError,
    RaftTimeoutError,
)
from .metrics import drain
from .storage.base import SnapshotData, Storage

#: gets the outcome of each request of a batch, in request order
BatchCallback = Callable[[Results], None]
#: gets the outcome of a membership change (the new configuration)
WriteCallback = Callable[[Outcome], None]
#: gets the answer to each query, in order
ReadCallback = Callable[[Results], None]
#: sends messages to peers (the shell's transport)
Send = Callable[[list[Message]], None]

log = logging.getLogger(__name__)

#: read consistency levels, strongest first
LINEARIZABLE, FOLLOWER, STALE = "linearizable", "follower", "stale"
READ_MODES = (LINEARIZABLE, FOLLOWER, STALE)


class Batch:
    """A client call's write requests, decoded and checked, ready to be proposed as one entry.

    ``command`` is what goes into the log: the call's own bytes when every request was
    accepted. ``decoded`` are the accepted parts (the leader applies from them, without
    decoding the entry again); ``early`` holds the error of each refused request by its
    position in the call; ``size`` counts every request of the call.
    """

    __slots__ = ("command", "decoded", "early", "size")

    def __init__(self, command: bytes, decoded: list[DecodedPart], early: dict[int, BaseException], size: int):
        self.command = command
        self.decoded = decoded
        self.early = early
        self.size = size

    def merge(self, applied: Results) -> Results:
        """The call's outcomes: the refused requests' errors, the others' ``applied`` results."""
        if not self.early:
            return applied
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        k = 0
        for i in range(self.size):
            if i in self.early:
                errors[i] = self.early[i]
                values.append(None)
                continue
            values.append(applied.values[k])
            if k in applied.errors:
                errors[i] = applied.errors[k]
            k += 1
        return Results(values, errors)


class _Waiter:
    """A proposal waiting for its entry to be applied: a client batch or a membership change."""

    __slots__ = ("batch", "callback", "since", "term")

    def __init__(self, term: int, callback: Callable[[Any], None], batch: Batch | None = None, since: float = 0.0):
        self.term = term
        self.callback = callback
        self.batch = batch
        self.since = since  # when it was proposed (time.perf_counter), for metrics

    def finish(self, result: Results | Outcome | None) -> None:
        b = self.batch
        if b is None:
            self.callback(result)
            return
        assert isinstance(result, Results)
        if not b.early:
            self.callback(result)
            return
        self.callback(b.merge(result))

    def fail(self, exc: Exception) -> None:
        b = self.batch
        if b is None:
            self.callback(Outcome(False, exc))
            return
        self.callback(b.merge(Results.failed(b.size - len(b.early), exc)))


class _PendingRead:
    __slots__ = ("callback", "deadline", "done", "queries")

    def __init__(self, queries: Sequence[Any], callback: ReadCallback, deadline: int):
        self.queries = queries
        self.callback = callback
        self.deadline = deadline  # in ticks of the Raft side
        self.done = False


class Replica:
    """Drives one :class:`~raft_actors.core.RaftCore`: persist, then send, then apply.

    Args:
        node_id, voters, config, rng: as for :class:`~raft_actors.core.RaftCore`.
        storage: where the log, hard state and snapshot live; its contents are loaded now (the
            state machine is restored from the snapshot, committed entries after it re-applied).
        state_machine: the user's state machine (wrapped for exactly-once application).
        lost_state: this node had state before and lost it: it rejoins as a non-voter
            (see ``RaftCore.mark_lost_state``).
        observer: called as ``observer(replica, ready)`` after each ready is handled
            (the simulator checks safety properties through it).
        inline_apply: run the apply side inside :meth:`process_ready` (see the module doc).
    """

    def __init__(
        self,
        node_id: int,
        voters: Sequence[int],
        config: RaftConfig,
        storage: Storage,
        state_machine: Any,
        rng: random.Random,
        lost_state: bool = False,
        observer: Callable[[Replica, Ready], None] | None = None,
        inline_apply: bool = True,
    ):
        rec = storage.load()
        self._id = node_id
        self.config = config
        self.storage = storage
        self.applier = Applier(state_machine, config.max_sessions)
        if rec.snapshot is not None and rec.snapshot_data is not None:
            self.applier.restore(rec.snapshot_data, rec.snapshot.index)
        self.core = RaftCore(node_id, voters, config, rng, rec.hard_state, rec.entries, snapshot=rec.snapshot)
        hs = rec.hard_state
        self._synced_vote = (hs.term, hs.vote, hs.lost_state)
        if lost_state:
            self.mark_lost_state()
        elif hs.term == 0 and not rec.entries and rec.snapshot is None:
            # A new cluster's first boot: no node has a leader to hear from, so waiting out a
            # whole election timeout first is only delay. As etcd does, the election clock
            # starts one tick short of the shortest timeout: the first election comes after
            # 1 to jitter + 1 ticks instead of election_ticks more. (Timing is liveness, never
            # safety; a restarted node, which may have a leader to hear from, waits it out.)
            for _ in range(config.election_ticks - 1):
                self.core.tick()
        self.observer = observer
        self.inline_apply = inline_apply
        #: called (from the Raft side) whenever the apply side has new work
        self.on_apply_work: Callable[[], None] | None = None
        #: called (from the apply side) with a prepared snapshot ``(meta, data)`` when a
        #: snapshot was asked for, or with ``None`` when there was nothing new to snapshot or the
        #: state machine failed; the shell stages it and calls :meth:`finish_snapshot` on the
        #: Raft side. Unset: staged and finished at once, in the same thread (inline)
        self.on_snapshot_prepared: Callable[[tuple[SnapshotMeta, SnapshotData] | None], None] | None = None
        st = self.core.status()
        # ----- Raft side
        self._ticks = 0
        self._incoming: dict[SnapshotMeta, bytes] = {}  # snapshots received, until the core takes one
        self._writes: dict[int, _Waiter] = {}  # proposals not yet committed, by index
        self._promoting: dict[int, list[WriteCallback]] = {}  # learner -> who waits for its promotion
        self._caught_up_hooks: dict[int, Callable[[int], None]] = {}
        self._reads: dict[tuple[int, int], _PendingRead] = {}  # waiting for a read index
        # read contexts are unique across restarts, so a late answer to a read of an earlier
        # incarnation of this node can never complete a new read
        self._boot = rng.getrandbits(63)
        self._next_ctx = 1
        self._snap_index = st.snapshot_index  # the latest snapshot this node holds
        self._snapshot_asked = False  # a snapshot was queued for the apply side and is not done
        # metrics (read by metrics_snapshot)
        self.leader_changes = 0
        self._known_leader = 0
        self.commit_seconds: deque[float] = deque(maxlen=1000)  # proposal to commit, recent
        # ----- shared: the apply side's work, and reads waiting for their index to be applied
        self._tasks: deque[tuple] = deque()
        self._reads_lock = threading.Lock()
        self._waiting: list[tuple[int, int, _PendingRead]] = []  # a heap of (read index, order, read)
        self._order = itertools.count()
        # ----- apply side: what the state machine reflects
        self.applied_bytes = 0  # bytes of client commands applied so far
        self._applied_term = st.term if st.snapshot_index == 0 else self.core.log.offset_term
        self._applied_conf = self.core.conf_at(st.snapshot_index)
        self._snap_commands = self.applier.applied_commands  # counters as of the latest snapshot
        self._snap_bytes = 0
        self._snap_failed_at = -1  # applied index of a failed snapshot attempt (not retried at once)

    @property
    def id(self) -> int:
        return self._id

    @property
    def applied_index(self) -> int:
        """The last index the state machine reflects (the apply side's progress)."""
        return self.applier.applied_index

    def mark_lost_state(self) -> None:
        """This node lost its state: from now on a non-voter (``RaftCore.mark_lost_state``; the
        decision is :func:`raft_actors.lost_state.has_lost_state`'s). The mark is made durable
        at once, before the node does anything else."""
        self.core.mark_lost_state()
        hs = self.core.hard_state
        if self._synced_vote != (hs.term, hs.vote, hs.lost_state):
            self.storage.set_hard_state(hs)
            self.storage.sync()
            self._synced_vote = (hs.term, hs.vote, hs.lost_state)

    # ------------------------------------------------------------------ Raft side: inputs
    def tick(self) -> None:
        self.core.tick()
        self._ticks += 1
        now = self._ticks
        expired = [ctx for ctx, pr in self._reads.items() if pr.deadline <= now]
        for ctx in expired:
            self._fail_read(self._reads.pop(ctx), RaftTimeoutError("no read index from the leader in time"))
        if self._waiting:
            # a read index is known, but this node is not applying fast enough: give up in time
            late = now - self.config.election_ticks
            with self._reads_lock:
                gone = [item for item in self._waiting if item[2].deadline <= late]
                if gone:
                    self._waiting = [item for item in self._waiting if item[2].deadline > late]
                    heapq.heapify(self._waiting)
            for item in gone:
                self._fail_read(item[2], RaftTimeoutError("this node did not reach the read index in time"))

    def step(self, message: Message) -> None:
        if message.type == MsgType.SNAPSHOT:
            # the state travels beside the message: only install_snapshot may deliver one
            log.warning("node %s: ignoring a snapshot message without its state from %s", self.id, message.frm)
            return
        self.core.step(message)

    def install_snapshot(self, message: Message, data: bytes) -> None:
        """A ``SNAPSHOT`` message from the leader, with the snapshot's state (all chunks joined).

        The core decides whether it needs it; if so the next :meth:`process_ready` persists it in
        place of the log and has the apply side restore the state machine from it.
        """
        if message.snapshot is None:
            raise ValueError("not a snapshot message")
        self._incoming = {message.snapshot: data}  # the core takes it in the next ready, or never
        self.core.step(message)

    def snapshot_to_send(self) -> tuple[SnapshotMeta, int, BinaryIO] | None:
        """This node's latest snapshot as ``(meta, size, reader)`` (the caller closes the reader),
        to answer a ``SNAPSHOT`` message the core sent; it may be newer than the one named."""
        return self.storage.open_snapshot()

    def report_snapshot(self, to: int, delivered: bool) -> None:
        """Tell the core whether the snapshot for ``to`` was delivered."""
        self.core.report_snapshot(to, delivered)

    def prepare_batch(self, payload: bytes) -> Batch:
        """Decode a client call's write parts and check each command (the state machine's
        ``validate``). Pure work on the payload: any thread may do it, ahead of :meth:`propose`.

        A part that cannot be decoded, or a command ``validate`` refuses, gets a
        :class:`CommandRejectedError` outcome and never enters the log.
        """
        parts = decode_call(payload)
        try:
            decoded = decode_parts(parts)
        except BaseException:  # noqa: BLE001 - find the parts that do not decode
            decoded = None
        early: dict[int, BaseException] = {}
        if decoded is not None and self.applier.validate_all(decoded):
            return Batch(payload, decoded, early, sum(p[3] for p in parts))
        # some requests are refused: the entry carries the accepted ones only
        accepted: list[DecodedPart] = []
        kept: list[tuple] = []
        pos = 0
        for part in parts:
            cid, seq, ack, count, _ = part
            try:
                (one,) = decode_parts([part])
            except BaseException as exc:  # noqa: BLE001 - e.g. a class this node cannot import
                err = CommandRejectedError(f"undecodable request: {type(exc).__name__}: {exc}")
                early.update((pos + k, err) for k in range(count))
                pos += count
                continue
            cmds = one[3]
            if cmds is None:  # a session opening
                accepted.append(one)
                kept.append(part)
                pos += 1
                continue
            ok_cmds, ok_seqs = [], []
            for k, (s, c) in enumerate(zip(seqs_of(seq, len(cmds)), cmds)):
                try:
                    self.applier.validate(c)
                except CommandRejectedError as exc:
                    early[pos + k] = exc
                    continue
                ok_cmds.append(c)
                ok_seqs.append(s)
            if ok_cmds:
                accepted.append((cid, tuple(ok_seqs), ack, ok_cmds))
                kept.append((cid, tuple(ok_seqs), ack, len(ok_cmds), encode_values(ok_cmds)))
            pos += len(cmds)
        return Batch(dumps(kept), accepted, early, pos)

    def propose(self, batch: Batch, callback: BatchCallback) -> None:
        """Propose a prepared client batch as one log entry; ``callback`` gets every request's
        outcome, in call order, once the entry is applied (refused requests at once if nothing
        else of the call is accepted).

        Raises :class:`NotLeaderError` (with a leader hint) if this node cannot take
        proposals: nothing of the batch was proposed then.
        """
        st = self.core.status()
        if not st.is_leader:
            raise NotLeaderError(st.leader)
        if not batch.decoded:
            callback(batch.merge(Results([])))
            return
        try:
            index, term = self.core.propose([batch.command])
        except (NotLeader, ProposalDropped) as exc:
            raise NotLeaderError(self.core.status().leader, str(exc)) from exc
        self._writes[index] = _Waiter(term, callback, batch, time.perf_counter())

    def change_membership(self, change: ConfChange, callback: WriteCallback) -> None:
        """Propose a single-server membership change; ``callback`` gets the new
        :class:`~raft_actors.core.ConfState` once it is committed and applied here, or a
        :class:`MembershipChangeError` if it is refused (another change in progress, a node that
        is not a learner...). Raises :class:`NotLeaderError` if this node is not the leader."""
        try:
            index, term = self.core.propose_conf_change(change)
        except NotLeader as exc:
            raise NotLeaderError(exc.leader) from exc
        except ProposalDropped as exc:  # a transfer or this leader's removal: over shortly
            callback(Outcome(False, MembershipChangeError(str(exc), retryable=True)))
            return
        except ConfChangeError as exc:
            callback(Outcome(False, MembershipChangeError(str(exc), isinstance(exc, ConfChangePending))))
            return
        self._writes[index] = _Waiter(term, callback)

    def promote_when_caught_up(self, node: int, callback: WriteCallback,
                               on_caught_up: Callable[[int], None] | None = None) -> None:
        """Promote learner ``node`` once it has caught up (``RaftCore.request_promotion``);
        ``callback`` gets the new configuration once the promotion is committed, or a
        :class:`MembershipChangeError` if the learner did not catch up in time.
        ``on_caught_up(rounds)`` is called when the leader proposes the promotion."""
        st = self.core.status()
        if not st.is_leader:
            raise NotLeaderError(st.leader)
        self._promoting.setdefault(node, []).append(callback)
        if on_caught_up is not None:
            self._caught_up_hooks[node] = on_caught_up
        try:
            self.core.request_promotion(node)
        except ConfChangeError as exc:
            self._promoting.pop(node, None)
            callback(Outcome(False, MembershipChangeError(str(exc))))

    def read(self, queries: Sequence[Any], mode: str, callback: ReadCallback) -> None:
        """Run ``queries`` against the state machine at the given consistency.

        - ``linearizable``: on the leader, after a ReadIndex round confirms its leadership;
        - ``follower``: on this node, after the leader gives it a read index;
        - ``stale``: on this node, whatever it has applied.

        The apply side answers (once the read index is applied). Raises
        :class:`NotLeaderError` when the mode needs a leader this node is not or lacks.
        """
        if mode not in READ_MODES:
            raise ValueError(f"read mode must be one of {READ_MODES}, got {mode!r}")
        if mode == STALE:
            self._queue(("stale", queries, callback), run_inline=True)
            return
        st = self.core.status()
        if mode == LINEARIZABLE and not st.is_leader:
            raise NotLeaderError(st.leader)
        if mode == FOLLOWER and not st.leader:
            raise NotLeaderError(0)
        ctx = (self._boot, self._next_ctx)
        self._next_ctx += 1
        self._reads[ctx] = _PendingRead(queries, callback, self._ticks + 2 * self.config.election_ticks)
        self.core.read_index(ctx)

    # ------------------------------------------------------------------ Raft side: output
    def process_ready(self, send: Send) -> None:
        """Persist and send everything the core has ready, and hand what is committed to the
        apply side (which runs now, with ``inline_apply``).

        A message goes out only once the state it depends on is durable: a vote or term change
        and a follower's entries are synced first. A leader's own new entries are not needed
        for what it sends (it counts itself toward commit only once they are synced, see
        ``RaftCore.persisted``), so it sends its appends first and syncs while they travel.
        """
        core = self.core
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                self._install(rd.snapshot)
            vote = self._synced_vote
            if rd.hard_state is not None:
                # the commit index need not be synced: a node that forgets it learns it again
                # from the leader, so a change of commit alone rides along with the next sync
                self.storage.set_hard_state(rd.hard_state)
                vote = (rd.hard_state.term, rd.hard_state.vote, rd.hard_state.lost_state)
            must_sync = vote != self._synced_vote
            early = bool(rd.entries) and not must_sync and core.status().is_leader
            if early:
                send(rd.messages)
            if rd.entries:
                self.storage.append(rd.entries)
            if rd.entries or must_sync:
                self.storage.sync()
                self._synced_vote = vote
            if rd.entries:
                last = rd.entries[-1]
                core.persisted(last.index, last.term)
            if not early and rd.messages:
                send(rd.messages)
            if rd.committed_entries:
                waiters = {}
                if self._writes:
                    now = time.perf_counter()
                    for e in rd.committed_entries:
                        w = self._writes.pop(e.index, None)
                        if w is not None:
                            waiters[e.index] = w
                            if w.since:
                                self.commit_seconds.append(now - w.since)
                self._queue(("apply", rd.committed_entries, waiters))
            if rd.read_states:
                with self._reads_lock:
                    for rs in rd.read_states:
                        pr = self._reads.pop(rs.context, None)
                        if pr is not None:
                            heapq.heappush(self._waiting, (rs.index, next(self._order), pr))
                self._wake()
            for ctx in rd.dropped_reads:
                pr = self._reads.pop(ctx, None)
                if pr is not None:
                    self._fail_read(pr, NotLeaderError(core.status().leader, "lost the read index (leader changed)"))
            for p in rd.promotions:
                self._promoted(p.node, p.index, p.term, p.error)
                hook = self._caught_up_hooks.pop(p.node, None)
                if hook is not None and p.error is None:
                    hook(p.rounds)
            if core.lead and core.lead != self._known_leader:  # (a follower learns it without a soft change)
                self._known_leader = core.lead
                self.leader_changes += 1
            if rd.soft_state_changed and self._writes and not (st := core.status()).is_leader:
                # Outcome unknown: the entries may still commit under the next leader. The client
                # retries through its session, which makes the retry harmless. (What was already
                # committed went to the apply side with its waiter, and is answered from there.)
                err = LeadershipLostError(st.leader, "leadership lost before the write committed")
                writes, self._writes = self._writes, {}
                for w in writes.values():
                    w.fail(err)
            if self.observer is not None:
                self.observer(self, rd)
            if self.inline_apply:
                self.apply_pending()
        self._incoming.clear()  # a snapshot the core did not take is not needed
        self._maybe_ask_snapshot()

    def _promoted(self, node: int, index: int, term: int, error: str | None) -> None:
        waiters = self._promoting.pop(node, [])
        if not waiters:
            return
        if error is not None:
            for cb in waiters:
                cb(Outcome(False, MembershipChangeError(error)))
            return

        def done(outcome: Outcome) -> None:
            for cb in waiters:
                cb(outcome)

        self._writes[index] = _Waiter(term, done)

    def _install(self, meta: SnapshotMeta) -> None:
        data = self._incoming.pop(meta)
        self.storage.install_snapshot(meta, data)
        self.core.persisted(meta.index, meta.term)
        self._snap_index = meta.index
        self._queue(("restore", meta, data))

    def _queue(self, task: tuple, run_inline: bool = False) -> None:
        """Hand ``task`` to the apply side: wake it, or (inline, when asked) run it now."""
        self._tasks.append(task)
        if not self.inline_apply:
            self._wake()
        elif run_inline:
            self.apply_pending()

    def _wake(self) -> None:
        if self.on_apply_work is not None:
            self.on_apply_work()

    # ------------------------------------------------------------------ snapshots
    @property
    def snapshot_due(self) -> bool:
        """Whether enough was applied since the last snapshot to take a new one (counted in
        client commands and their bytes, however they were batched into entries)."""
        cfg = self.config
        commands = self.applier.applied_commands - self._snap_commands
        size = self.applied_bytes - self._snap_bytes
        due = (cfg.snapshot_commands and commands >= cfg.snapshot_commands) or (
            cfg.snapshot_bytes and size >= cfg.snapshot_bytes
        )
        if not due or self.applier.applied_index <= self._snap_index:
            return False
        since_failure = self.applier.applied_commands - self._snap_failed_at
        return self._snap_failed_at < 0 or since_failure >= max(1, (cfg.snapshot_commands or 10_000) // 2)

    def _maybe_ask_snapshot(self) -> None:
        """Raft side: queue a snapshot for the apply side once one is due."""
        if not self._snapshot_asked and self.snapshot_due:
            self.request_snapshot()

    def request_snapshot(self) -> None:
        """Raft side: have the apply side snapshot the state machine now (then the log is
        compacted); the outcome goes to ``on_snapshot_prepared``, or is done inline."""
        self._snapshot_asked = True
        self._queue(("snapshot",), run_inline=True)

    def take_snapshot(self) -> SnapshotMeta | None:
        """Snapshot the state machine now, persist it and compact the log, all in this thread
        (only while nothing else drives this replica). Returns the snapshot's metadata, or
        ``None`` when there is nothing new or the state machine could not snapshot itself."""
        prepared = self.prepare_snapshot()
        if prepared is None:
            return None
        meta, data = prepared
        return self.finish_snapshot(meta, data, self.storage.stage_snapshot(meta, data))

    def prepare_snapshot(self) -> tuple[SnapshotMeta, SnapshotData] | None:
        """Apply side: the state machine and sessions as of the applied index, with the
        snapshot's metadata. Then ``storage.stage_snapshot`` (which may run in another thread),
        then :meth:`finish_snapshot` on the Raft side."""
        applied = self.applier.applied_index
        if applied <= self._snap_index:
            return None
        conf = self._applied_conf
        if not conf.voters:
            # a joining node that has not yet received the entry adding it does not know the
            # configuration of this prefix: its snapshot would carry an empty one
            self.snapshot_failed()
            return None
        meta = SnapshotMeta(applied, self._applied_term, conf.voters, conf.learners, conf.max_id)
        try:
            data = self.applier.snapshot()
        except Exception:
            log.exception("node %s: the state machine failed to snapshot; the log is not compacted", self.id)
            self.snapshot_failed()
            return None
        self._snap_commands, self._snap_bytes = self.applier.applied_commands, self.applied_bytes
        return meta, data

    def finish_snapshot(self, meta: SnapshotMeta, data: SnapshotData, staged: Any = None) -> SnapshotMeta | None:
        """Raft side: persist a prepared snapshot (adopting ``staged``) and compact the log up
        to it; ``None`` if a newer snapshot was installed or taken meanwhile."""
        self._snapshot_asked = False
        if meta.index <= self._snap_index:
            return None
        self.storage.save_snapshot(meta, data, staged)
        keep = self._entries_to_keep(meta.index)
        self.storage.compact(meta.index - keep)
        self.core.compact(meta, keep)
        self._snap_index = meta.index
        return meta

    def _entries_to_keep(self, index: int) -> int:
        """How many entries up to ``index`` to keep when compacting: those holding the last
        ``keep_bytes`` of commands, so a follower a little behind catches up from the log."""
        budget = self.config.keep_bytes
        entries = self.core.log.entries
        offset = self.core.log.offset
        k = 0
        i = index - offset - 1
        while budget > 0 and i - k >= 0:
            e = entries[i - k]
            budget -= len(e.command) if e.command is not None else 1
            k += 1
        return k

    def snapshot_failed(self) -> None:
        """A snapshot could not be taken or stored: try again only after a while."""
        self._snap_failed_at = self.applier.applied_commands
        self._snapshot_asked = False

    # ------------------------------------------------------------------ apply side
    def has_apply_work(self) -> bool:
        return bool(self._tasks) or bool(self._waiting and self._waiting[0][0] <= self.applier.applied_index)

    def apply_pending(self) -> None:
        """Apply side: do everything queued, in order, then serve the reads whose index is
        applied. Safe to call from one thread at a time (the apply thread, or inline)."""
        tasks = self._tasks
        while tasks:
            task = tasks.popleft()
            kind = task[0]
            if kind == "apply":
                self._apply(task[1], task[2])
            elif kind == "stale":
                task[2](self.applier.query_all(task[1]))
            elif kind == "restore":
                meta, data = task[1], task[2]
                self.applier.restore(data, meta.index)  # a snapshot it cannot load: fail-stop (raises)
                self._applied_term, self._applied_conf = meta.term, ConfState(meta.voters, meta.learners, meta.max_id)
                self._snap_commands, self._snap_bytes = self.applier.applied_commands, self.applied_bytes
            elif kind == "snapshot":
                self._snapshot_now()
            self._serve_reads()
        self._serve_reads()

    def _snapshot_now(self) -> None:
        prepared = self.prepare_snapshot()
        if prepared is None:
            self._snapshot_asked = False
        if self.on_snapshot_prepared is not None:
            self.on_snapshot_prepared(prepared)
        elif prepared is not None:
            meta, data = prepared
            self.finish_snapshot(meta, data, self.storage.stage_snapshot(meta, data))

    def _apply(self, entries: list[Entry], waiters: dict[int, _Waiter]) -> None:
        applier = self.applier
        for e in entries:
            w = waiters.get(e.index)
            result: Results | Outcome | None
            if e.kind == EntryKind.CONFIG:
                applier.apply(e)
                self._applied_conf = decode_conf_entry(e.command)[1]
                result = Outcome(True, self._applied_conf)
            else:
                if e.command is not None:
                    self.applied_bytes += len(e.command)
                result = applier.apply(e, w.batch.decoded if w is not None and w.batch is not None else None)
            self._applied_term = e.term
            if w is None:
                continue
            if w.term == e.term and result is not None:
                w.finish(result)
            else:
                w.fail(LeadershipLostError(0, "the proposal was overwritten by a new leader"))

    def _serve_reads(self) -> None:
        applied = self.applier.applied_index
        while self._waiting and self._waiting[0][0] <= applied:
            with self._reads_lock:
                if not self._waiting or self._waiting[0][0] > applied:
                    break
                _, _, pr = heapq.heappop(self._waiting)
                if pr.done:
                    continue
                pr.done = True
            pr.callback(self.applier.query_all(pr.queries))

    def _fail_read(self, pr: _PendingRead, exc: Exception) -> None:
        with self._reads_lock:
            if pr.done:
                return
            pr.done = True
        pr.callback(Results.failed(len(pr.queries), exc))

    def fail_all(self, reason: str) -> None:
        """Answer every pending request: the node is going away (``reason`` says why). Call it
        once the apply side has stopped.

        A write or membership change waiting here is in this node's log and may yet commit under
        another leader: it fails with :class:`LeadershipLostError` (outcome unknown; its client
        retries it in the same session), never with a plain not-the-leader refusal, which tells
        the client the write was never proposed. A read fails with :class:`NotLeaderError`: it
        changed nothing, so it is simply retried elsewhere.
        """
        lead = self.core.status().leader
        maybe = LeadershipLostError(lead, f"{reason}; the write may still commit")
        waiters = list(self._writes.values())
        self._writes = {}
        for task in self._tasks:
            if task[0] == "apply":
                waiters.extend(task[2].values())
        for w in waiters:
            w.fail(maybe)
        promoting = [cb for cbs in self._promoting.values() for cb in cbs]
        self._promoting = {}
        for cb in promoting:
            cb(Outcome(False, maybe))
        refused = NotLeaderError(lead, reason)
        stale = [(t[1], t[2]) for t in self._tasks if t[0] == "stale"]
        self._tasks.clear()
        for queries, cb in stale:
            cb(Results.failed(len(queries), refused))
        reads = list(self._reads.values()) + [w[2] for w in self._waiting]
        self._reads = {}
        for pr in reads:
            self._fail_read(pr, refused)

    # ------------------------------------------------------------------ status
    def metrics_snapshot(self) -> dict[str, Any]:
        """Raft side: what :class:`~raft_actors.metrics.NodeMetrics` exports (the recent
        proposal-to-commit times are taken out of :attr:`commit_seconds`)."""
        st = self.status()
        core = self.core
        return {
            "term": st["term"], "role": st["role"], "commit_index": st["commit_index"],
            "applied_index": st["applied_index"], "last_index": st["log_length"], "storage_bytes": st["storage_bytes"],
            "follower_lag": core.follower_lag(), "leader_changes": self.leader_changes,
            "elections_started": core.elections_started,
            "commit_seconds": drain(self.commit_seconds),
        }

    def status(self) -> dict[str, Any]:
        st = self.core.status()
        if st.lost_state:
            role = "non-voter"
        elif not st.is_leader and st.role.name != "FOLLOWER":
            role = st.role.name.lower()
        elif st.is_leader:
            role = "leader"
        else:
            role = {"voter": "follower", "learner": "learner"}.get(st.conf.role_of(st.id) or "", "")
            role = role or ("removed" if st.id <= st.conf.max_id else "joining")
        return {
            "node": st.id,
            "role": role,
            "term": st.term,
            "leader": st.leader,
            "commit_index": st.commit,
            "applied_index": self.applier.applied_index,
            "log_length": st.last_index,
            "snapshot_index": st.snapshot_index,
            "log_entries": st.log_entries,
            "storage_bytes": self.storage.size(),
            "commands_applied": self.applier.applied_commands,
            "commands_since_snapshot": self.applier.applied_commands - self._snap_commands,
            # the configuration in effect here (the newest in the log, maybe not committed yet)...
            "voters": st.conf.voters,
            "learners": st.conf.learners,
            "conf_index": st.conf_index,
            "max_id": st.conf.max_id,
            # ... and the one as of the commit index: a change is done once it is committed
            "committed_voters": st.committed_conf.voters,
            "committed_learners": st.committed_conf.learners,
            "committed_max_id": st.committed_conf.max_id,
        }
