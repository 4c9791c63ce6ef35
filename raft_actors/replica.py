"""One Raft replica without a runtime: core + storage + state machine, driven in the right order.

The Ray actor (:mod:`raft_actors.node`) and the deterministic simulator (:mod:`raft_actors.sim`)
both wrap a :class:`Replica`; they differ only in how they move messages and keep time.
No Ray, asyncio, clock or sockets here: completions are delivered through callbacks.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from .applier import Applier
from .config import RaftConfig
from .core import (
    ConfChange,
    ConfChangeError,
    ConfChangePending,
    EntryKind,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Ready,
    Role,
)
from .core.membership import decode_conf_entry
from .core.messages import SnapshotMeta
from .envelope import Outcome, decode_request
from .errors import (
    CommandRejectedError,
    LeadershipLostError,
    MembershipChangeError,
    NotLeaderError,
    RaftTimeoutError,
)
from .storage.base import SnapshotData, Storage

WriteCallback = Callable[[Outcome], None]
ReadCallback = Callable[[list[Outcome]], None]

log = logging.getLogger(__name__)

#: read consistency levels, strongest first
LINEARIZABLE, FOLLOWER, STALE = "linearizable", "follower", "stale"
READ_MODES = (LINEARIZABLE, FOLLOWER, STALE)


class _PendingRead:
    __slots__ = ("callback", "queries", "ticks_left")

    def __init__(self, queries: Sequence[Any], callback: ReadCallback, ticks_left: int):
        self.queries = queries
        self.callback = callback
        self.ticks_left = ticks_left


class Replica:
    """Drives one :class:`~raft_actors.core.RaftCore`: persist, then send, then apply.

    Args:
        node_id, voters, config, rng: as for :class:`~raft_actors.core.RaftCore`.
        storage: where the log, hard state and snapshot live; its contents are loaded now (the
            state machine is restored from the snapshot, committed entries after it re-applied).
        state_machine: the user's state machine (wrapped for exactly-once application).
        lost_state: this node had state before and lost it: it rejoins as a non-voter
            (see ``RaftCore``).
        observer: called as ``observer(replica, ready)`` after each ready is handled
            (the simulator checks safety properties through it).
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
        self.observer = observer
        self._snap_index = self.core.status().snapshot_index  # entries applied since then count toward the next
        self._bytes_since_snap = 0
        self._snap_failed_at = -1  # applied index of a failed snapshot attempt (not retried at once)
        self._incoming: dict[SnapshotMeta, bytes] = {}  # snapshots received, until the core takes one
        #: the shell takes snapshots itself when ``snapshot_due`` (off the event loop, in part);
        #: otherwise they are taken inline, as soon as they are due
        self.background_snapshots = False
        self._writes: dict[int, tuple[int, WriteCallback]] = {}
        self._promoting: dict[int, list[WriteCallback]] = {}  # learner -> who waits for its promotion
        self._caught_up_hooks: dict[int, Callable[[int], None]] = {}
        self._reads: dict[tuple[int, int], _PendingRead] = {}
        self._waiting: list[tuple[int, tuple[int, int], _PendingRead]] = []  # (read index, ctx, read)
        # read contexts are unique across restarts, so a late answer to a read of an earlier
        # incarnation of this node can never complete a new read
        self._boot = rng.getrandbits(63)
        self._next_ctx = 1

    @property
    def id(self) -> int:
        return self._id

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

    # ------------------------------------------------------------------ inputs
    def tick(self) -> None:
        self.core.tick()
        expired = []
        for ctx, pr in self._reads.items():
            pr.ticks_left -= 1
            if pr.ticks_left <= 0:
                expired.append(ctx)
        for ctx in expired:
            self._fail_read(self._reads.pop(ctx), RaftTimeoutError("no read index from the leader in time"))
        if self._waiting:
            # a read index is known, but this node is not applying fast enough: give up in time
            keep = []
            for item in self._waiting:
                item[2].ticks_left -= 1
                if item[2].ticks_left > -self.config.election_ticks:
                    keep.append(item)
                else:
                    self._fail_read(item[2], RaftTimeoutError("this node did not reach the read index in time"))
            if len(keep) != len(self._waiting):
                heapq.heapify(keep)
                self._waiting = keep

    def step(self, message: Message) -> None:
        if message.type == MsgType.SNAPSHOT:
            # the state travels beside the message: only install_snapshot may deliver one
            log.warning("node %s: ignoring a snapshot message without its state from %s", self.id, message.frm)
            return
        self.core.step(message)

    def install_snapshot(self, message: Message, data: bytes) -> None:
        """A ``SNAPSHOT`` message from the leader, with the snapshot's state (all chunks joined).

        The core decides whether it needs it; if so the next :meth:`process_ready` restores the
        state machine from ``data`` and persists it in place of the log.
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

    def propose(self, commands: Sequence[bytes], callbacks: Sequence[WriteCallback]) -> None:
        """Propose encoded requests; each callback gets its command's outcome once applied.

        Raises :class:`NotLeaderError` (with a leader hint) if this node cannot take proposals.
        A command the state machine's ``validate`` refuses gets a :class:`CommandRejectedError`
        outcome at once and never enters the log.
        """
        st = self.core.status()
        if not st.is_leader:
            raise NotLeaderError(st.leader)
        accepted: list[bytes] = []
        waiting: list[WriteCallback] = []
        for data, cb in zip(commands, callbacks):
            try:
                req = decode_request(data)
                if req.client_id is not None:  # not a session opening
                    self.applier.validate(req.command)
            except CommandRejectedError as exc:
                cb(Outcome(False, exc))
                continue
            except BaseException as exc:  # noqa: BLE001 - any decoding failure rejects the request
                cb(Outcome(False, CommandRejectedError(f"undecodable request: {type(exc).__name__}: {exc}")))
                continue
            accepted.append(data)
            waiting.append(cb)
        if not accepted:
            return
        try:
            first, term = self.core.propose(accepted)
        except (NotLeader, ProposalDropped) as exc:
            raise NotLeaderError(self.core.status().leader, str(exc)) from exc
        for i, cb in enumerate(waiting):
            self._writes[first + i] = (term, cb)

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
        self._writes[index] = (term, callback)

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
        - ``stale``: on this node now, whatever it has applied.

        Raises :class:`NotLeaderError` when the mode needs a leader this node is not or lacks.
        """
        if mode == STALE:
            callback([self.applier.query(q) for q in queries])
            return
        st = self.core.status()
        if mode == LINEARIZABLE and not st.is_leader:
            raise NotLeaderError(st.leader)
        if mode == FOLLOWER and not st.leader:
            raise NotLeaderError(0)
        if mode not in READ_MODES:
            raise ValueError(f"read mode must be one of {READ_MODES}, got {mode!r}")
        ctx = (self._boot, self._next_ctx)
        self._next_ctx += 1
        self._reads[ctx] = _PendingRead(queries, callback, 2 * self.config.election_ticks)
        self.core.read_index(ctx)

    # ------------------------------------------------------------------ output
    def process_ready(self) -> list[Message]:
        """Persist, apply and serve everything the core has ready; return the messages to send.

        Messages are returned only after the state they depend on is synced to storage.
        """
        out: list[Message] = []
        core = self.core
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                self._install(rd.snapshot)
            if rd.entries:
                self.storage.append(rd.entries)
            vote = self._synced_vote
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
                vote = (rd.hard_state.term, rd.hard_state.vote, rd.hard_state.lost_state)
            # Entries, term and vote must be durable before anything that depends on them is
            # sent. The commit index need not: a node that forgets it learns it again from the
            # leader, so a change of commit alone rides along with the next sync.
            if rd.entries or vote != self._synced_vote:
                self.storage.sync()
                self._synced_vote = vote
            out.extend(rd.messages)
            if rd.committed_entries:
                self._apply(rd.committed_entries)
            for rs in rd.read_states:
                pr = self._reads.pop(rs.context, None)
                if pr is not None:
                    heapq.heappush(self._waiting, (rs.index, rs.context, pr))
            for ctx in rd.dropped_reads:
                pr = self._reads.pop(ctx, None)
                if pr is not None:
                    self._fail_read(pr, NotLeaderError(core.status().leader, "lost the read index (leader changed)"))
            self._serve_reads()
            for p in rd.promotions:
                self._promoted(p.node, p.index, p.term, p.error)
                hook = self._caught_up_hooks.pop(p.node, None)
                if hook is not None and p.error is None:
                    hook(p.rounds)
            if rd.soft_state_changed and self._writes and not (st := core.status()).is_leader:
                # Outcome unknown: the entries may still commit under the next leader. The client
                # retries through its session, which makes the retry harmless.
                err = LeadershipLostError(st.leader, "leadership lost before the write committed")
                writes, self._writes = self._writes, {}
                for _, cb in writes.values():
                    cb(Outcome(False, err))
            if self.observer is not None:
                self.observer(self, rd)
            if rd.committed_entries:
                self._maybe_snapshot()  # last: a crash while it writes comes after all of the above
        self._incoming.clear()  # a snapshot the core did not take is not needed
        return out

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

        self._writes[index] = (term, done)

    def _install(self, meta: SnapshotMeta) -> None:
        data = self._incoming.pop(meta)
        # restore first: a snapshot the state machine cannot load must not replace the log
        self.applier.restore(data, meta.index)
        self.storage.install_snapshot(meta, data)
        self._snap_index, self._bytes_since_snap = meta.index, 0

    @property
    def snapshot_due(self) -> bool:
        """Whether enough was applied since the last snapshot to take a new one."""
        cfg = self.config
        applied = self.applier.applied_index
        due = (cfg.snapshot_entries and applied - self._snap_index >= cfg.snapshot_entries) or (
            cfg.snapshot_bytes and self._bytes_since_snap >= cfg.snapshot_bytes
        )
        return bool(due) and applied - self._snap_failed_at >= max(1, (cfg.snapshot_entries or 10_000) // 2)

    def _maybe_snapshot(self) -> None:
        if not self.background_snapshots and self.snapshot_due:
            self.take_snapshot()

    def take_snapshot(self) -> SnapshotMeta | None:
        """Snapshot the state machine now, persist it and compact the log (done automatically
        past ``snapshot_entries``/``snapshot_bytes``). Returns the snapshot's metadata, or
        ``None`` when there is nothing new or the state machine could not snapshot itself."""
        prepared = self.prepare_snapshot()
        if prepared is None:
            return None
        meta, data = prepared
        return self.finish_snapshot(meta, data, self.storage.stage_snapshot(meta, data))

    def prepare_snapshot(self) -> tuple[SnapshotMeta, SnapshotData] | None:
        """The first step of :meth:`take_snapshot`: the state machine and sessions as of the
        applied index. Then ``storage.stage_snapshot`` (which may run in another thread), then
        :meth:`finish_snapshot`."""
        applied = self.applier.applied_index
        if applied <= self._snap_index:
            return None
        meta = self.core.snapshot_meta(applied)
        if not meta.voters:
            # a joining node that has not yet received the entry adding it does not know the
            # configuration of this prefix: its snapshot would carry an empty one
            self.snapshot_failed()
            return None
        try:
            data = self.applier.snapshot()
        except Exception:
            log.exception("node %s: the state machine failed to snapshot; the log is not compacted", self.id)
            self.snapshot_failed()
            return None
        return meta, data

    def finish_snapshot(self, meta: SnapshotMeta, data: SnapshotData, staged: Any = None) -> SnapshotMeta | None:
        """Persist a prepared snapshot (adopting ``staged``) and compact the log up to it;
        ``None`` if a newer snapshot was installed or taken meanwhile."""
        if meta.index <= self._snap_index:
            return None
        self.storage.save_snapshot(meta, data, staged)
        keep = self.config.keep_entries
        self.storage.compact(meta.index - keep)
        self.core.compact(meta, keep)
        self._snap_index = meta.index
        self._bytes_since_snap = 0
        return meta

    def snapshot_failed(self) -> None:
        """A snapshot could not be taken or stored: try again only after a while."""
        self._snap_failed_at = self.applier.applied_index

    def _apply(self, entries: list) -> None:
        for e in entries:
            if e.command is not None:
                self._bytes_since_snap += len(e.command)
            outcome = self.applier.apply(e)
            if e.kind == EntryKind.CONFIG:
                outcome = Outcome(True, decode_conf_entry(e.command)[1])
            waiter = self._writes.pop(e.index, None)
            if waiter is None:
                continue
            term, cb = waiter
            if term == e.term and outcome is not None:
                cb(outcome)
            else:
                cb(Outcome(False, LeadershipLostError(self.core.status().leader,
                                                      "the proposal was overwritten by a new leader")))

    def _serve_reads(self) -> None:
        applied = self.applier.applied_index
        while self._waiting and self._waiting[0][0] <= applied:
            _, _, pr = heapq.heappop(self._waiting)
            pr.callback([self.applier.query(q) for q in pr.queries])

    @staticmethod
    def _fail_read(pr: _PendingRead, exc: Exception) -> None:
        pr.callback([Outcome(False, exc)] * len(pr.queries))

    def fail_all(self, reason: str) -> None:
        """Answer every pending request: the node is going away (``reason`` says why).

        A write or membership change waiting here is in this node's log and may yet commit under
        another leader: it fails with :class:`LeadershipLostError` (outcome unknown; its client
        retries it in the same session), never with a plain not-the-leader refusal, which tells
        the client the write was never proposed. A read fails with :class:`NotLeaderError`: it
        changed nothing, so it is simply retried elsewhere.
        """
        lead = self.core.status().leader
        maybe = Outcome(False, LeadershipLostError(lead, f"{reason}; the write may still commit"))
        writes, self._writes = self._writes, {}
        waiters = [cb for cbs in self._promoting.values() for cb in cbs]
        self._promoting = {}
        for cb in [cb for _, cb in writes.values()] + waiters:
            cb(maybe)
        refused = NotLeaderError(lead, reason)
        reads = list(self._reads.values()) + [w[2] for w in self._waiting]
        self._reads, self._waiting = {}, []
        for pr in reads:
            self._fail_read(pr, refused)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        st = self.core.status()
        if st.lost_state:
            role = "non-voter"
        elif st.role != Role.FOLLOWER:
            role = st.role.name.lower()
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
