"""The Raft protocol as a pure state machine (the shape of etcd-io/raft's ``raft`` + ``RawNode``).

``RaftCore`` imports no Ray, asyncio, clock or file system. Time enters as :meth:`RaftCore.tick`,
peer messages as :meth:`RaftCore.step`, client work as :meth:`RaftCore.propose`,
:meth:`RaftCore.read_index` and :meth:`RaftCore.transfer_leader`. Everything the outside must do
comes back from :meth:`RaftCore.ready` as one :class:`~raft_actors.core.messages.Ready` value.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

from .log import RaftLog
from .membership import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    decode_conf_entry,
    encode_conf_entry,
)
from .messages import NONE, Entry, EntryKind, HardState, Message, MsgType, Promotion, ReadState, Ready, SnapshotMeta
from .progress import Progress, ProgressState
from .settings import CoreConfig

#: ``Message.context`` of a vote request sent because of a leadership transfer.
TRANSFER = "transfer"
#: ``Message.context`` of every append/heartbeat response from a node that lost its storage.
LOST_STATE = "lost-state"


_NO_STATE = HardState()
_FROM_LEADER = (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT)


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class NotLeader(Exception):
    """The operation needs the leader; ``leader`` is the one this node knows of (0 if none)."""

    def __init__(self, leader: int):
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader cannot take proposals right now (a leadership transfer is in progress)."""


class ConfChangePending(ConfChangeError):
    """Another membership change is still in progress (or the leader has not yet committed an
    entry of its own term): try again shortly."""


#: ``Message.context`` tag of a heartbeat that asks a learner in catch-up to answer
CATCH_UP = "catch-up"


class _CatchUp:
    """A learner catching up before its promotion: the current round replicates everything up to
    ``target``, which the leader had when the round ``started`` (in leader ticks).

    ``token`` is the context of this round's heartbeats to the learner; ``confirmed`` says the
    learner echoed it without saying it lost its state, so it holds its log *now* (its match
    index may predate a restart with an empty disk). A round succeeds only once confirmed.
    """

    __slots__ = ("confirmed", "round", "started", "target", "token")

    def __init__(self, target: int, started: int, token: tuple[str, int]):
        self.round = 1
        self.target = target
        self.started = started
        self.token = token
        self.confirmed = False

    def next_round(self, target: int, started: int, token: tuple[str, int]) -> None:
        self.target, self.started, self.token, self.confirmed = target, started, token, False


class _ReadRound:
    """One ReadIndex round: the commit index at its start and who confirmed leadership since."""

    __slots__ = ("acks", "index", "requests")

    def __init__(self, index: int, leader: int):
        self.index = index
        self.acks = {leader}
        self.requests: list[tuple[int, Any]] = []


class CoreStatus(NamedTuple):
    """What a shell may read of a :class:`RaftCore` (see :meth:`RaftCore.status`)."""

    id: int
    role: Role
    term: int
    vote: int
    leader: int  #: the leader this node knows of (itself when leading; 0: none)
    commit: int
    applied: int  #: last index handed out for applying
    last_index: int
    snapshot_index: int
    log_entries: int  #: entries held in memory
    conf: ConfState  #: the newest configuration in the log (in effect, committed or not)
    conf_index: int  #: the index of the entry that made ``conf`` (the snapshot's if none)
    committed_conf: ConfState  #: the configuration as of the commit index
    lost_state: bool

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def conf_committed(self) -> bool:
        """Whether ``conf`` is committed (``conf_index <= commit``)."""
        return self.conf_index <= self.commit


class RaftCore:
    """One Raft node's protocol state.

    Args:
        node_id: this node's id (a positive int).
        voters: the cluster's initial voters (the configuration before any change in the log or
            snapshot); empty for a node that joins a running cluster: it learns the
            configuration from the leader (membership changes travel in the log).
        config: timing and flow-control settings, in ticks (a ``RaftConfig`` is one).
        rng: the source of randomized election timeouts (seed it for a replayable run).
        hard_state: term, vote and commit restored from storage.
        entries: the log restored from storage: the entries after ``snapshot`` (from index 1
            without one).
        lost_state: this node had state before and lost it (its storage died): the same as
            calling :meth:`mark_lost_state` at once. A mark persisted earlier comes back in
            ``hard_state.lost_state``.
        snapshot: the latest snapshot restored from storage (its state is already in the
            shell's state machine): the log continues after it.
    """

    def __init__(
        self,
        node_id: int,
        voters: Iterable[int],
        config: CoreConfig,
        rng: random.Random,
        hard_state: HardState = _NO_STATE,
        entries: Sequence[Entry] = (),
        lost_state: bool = False,
        snapshot: SnapshotMeta | None = None,
    ):
        if node_id <= 0 or any(v <= 0 for v in voters):
            raise ValueError("node ids are positive integers")
        self.id = node_id
        self.cfg = config
        self.rng = rng
        boot = ConfState.initial(tuple(voters))
        snap = snapshot or SnapshotMeta(0, 0, boot.voters, boot.learners, boot.max_id)
        self.snapshot = snap  # the latest snapshot the shell holds (what a lagging follower is sent)
        self.log = RaftLog(entries, commit=max(hard_state.commit, snap.index), offset=snap.index, offset_term=snap.term)
        # the configuration is the latest one in the log (committed or not), else the snapshot's
        self._base_conf = _conf_of(snap)
        self._confs: list[tuple[int, ConfState]] = []  # (index, configuration) of CONFIG entries in the log
        self.conf = self._base_conf
        self.voters = self.conf.voters
        self.learners = self.conf.learners
        self._catchups: dict[int, _CatchUp] = {}
        self._promotions: list[Promotion] = []
        self._leader_ticks = 0
        self._pending_snapshot: SnapshotMeta | None = None  # received from the leader, to install
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.lead_transferee = NONE
        self.read_rounds: OrderedDict[int, _ReadRound] = OrderedDict()
        self.deferred_reads: list[tuple[int, Any]] = []
        self._next_round = 1
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[Any] = []
        self._bcast_pending = False
        self._soft_changed = True
        self._persisted_hs = hard_state
        self._lost_state = hard_state.lost_state
        self._verified = 0  # last index known to match the current leader's log (this term)
        self.elections_started = 0  #: times this node became a candidate (for metrics)
        self._reset_randomized_timeout()
        self._scan_confs(self.log.offset + 1)
        if lost_state:
            self.mark_lost_state()

    # ------------------------------------------------------------------ queries
    @property
    def lost_state(self) -> bool:
        """This node lost its storage once (see :meth:`mark_lost_state`): a non-voter for good."""
        return self._lost_state

    def status(self) -> CoreStatus:
        """A read-only view of this node's protocol state, for the shells."""
        log = self.log
        committed = self.conf_at(log.commit)
        return CoreStatus(self.id, self.role, self.term, self.vote, self.lead, log.commit, log.applied,
                          log.last_index(), self.snapshot.index, len(log.entries), self.conf, self.conf_index,
                          committed, self._lost_state)

    def follower_lag(self) -> dict[int, int]:
        """A leader's view of how many entries each other member's log is behind its own
        (empty when not leading)."""
        if self.role != Role.LEADER:
            return {}
        last = self.log.last_index()
        return {i: last - pr.match for i, pr in self.progress.items() if i != self.id}

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit, self._lost_state)

    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    def _promotable(self) -> bool:
        """Whether this node may campaign. Never after losing its state. A voter of its newest
        configuration does. So does a member that is not a voter there but whose log may be the
        one a cluster needs (:meth:`_campaign` does not count its own vote):

        - a voter whose removal is in its log but not known to be committed (Raft dissertation
          §4.2.2: it may be needed to commit its own removal; e.g. a leader that appended its
          removal and was cut off before the entry left it has the longest log);
        - a learner: its log may be newer than every voter's that can still vote (it got the
          new leader's first entry, then that leader lost its disk), and voters refuse a
          candidate with an older log than theirs.

        Such a node that wins leads as a non-voter: it commits its first entry (and with it the
        configuration) and hands leadership to a caught-up voter at once (:meth:`_leave`).
        """
        if self._lost_state:
            return False
        me = self.id
        return me in self.voters or me in self.learners or me in self.conf_at(self.log.commit).voters

    def conf_at(self, index: int) -> ConfState:
        """The configuration as of log index ``index`` (at least the snapshot's)."""
        for i, conf in reversed(self._confs):
            if i <= index:
                return conf
        return self._base_conf

    @property
    def conf_index(self) -> int:
        """The index of the entry that made the current configuration (the snapshot's if none)."""
        return self._confs[-1][0] if self._confs else self.snapshot.index

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The metadata of a snapshot of the state machine at applied index ``index``."""
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"index {index} is not in the log")
        conf = self.conf_at(index)
        return SnapshotMeta(index, term, conf.voters, conf.learners, conf.max_id)

    # ------------------------------------------------------------------ inputs
    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, commands: Sequence[bytes]) -> tuple[int, int]:
        """Append client commands to the leader's log.

        Returns ``(first_index, term)``: command ``i`` sits at ``first_index + i`` in ``term``.
        Raises :class:`NotLeader` or :class:`ProposalDropped`.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to node {self.lead_transferee} in progress")
        if self.id not in self.voters:
            raise ProposalDropped("this leader is not a voter (being removed, or a learner): it hands over shortly")
        first = self.log.last_index() + 1
        term = self.term
        self._append_own([Entry(term, first + i, c) for i, c in enumerate(commands)])
        return first, term

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Append a single-server membership change to the leader's log; returns its
        ``(index, term)``. It takes effect at once (on each node as soon as the entry is in its
        log); the next change may be proposed once it is committed.

        Raises :class:`NotLeader`, :class:`ProposalDropped` (leadership transfer or removal of
        this leader in progress), :class:`ConfChangePending` (a change not yet committed, or no
        entry of this leader's term committed yet: Ongaro's fix for single-server changes) or
        :class:`~raft_actors.core.membership.ConfChangeError` (the change does not apply).
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE or self.id not in self.voters:
            raise ProposalDropped("leadership is being handed over")
        if self.conf_index > self.log.commit:
            raise ConfChangePending(f"the membership change at index {self.conf_index} is not committed yet")
        if self.log.term(self.log.commit) != self.term:
            raise ConfChangePending("the new leader has not committed an entry of its term yet")
        conf = self.conf.apply(change)
        if change.type == ConfChangeType.PROMOTE and self.progress[change.node].lost:
            raise ConfChangeError(f"node {change.node} lost its state: remove it and add a new node instead")
        if conf.voters != self.voters:
            healthy = [v for v in conf.voters if self._healthy(v)]
            if len(healthy) < len(conf.voters) // 2 + 1:
                if self._leader_ticks <= self.cfg.election_ticks and any(
                        self.progress[v].heard_at is None for v in conf.voters if v in self.progress and v != self.id):
                    # a new leader has not heard from every voter yet: ask again in a moment
                    raise ConfChangePending("the new leader has not heard from every voter yet")
                raise ConfChangeError(
                    f"{change.type.name.lower()} of node {change.node} would leave voters {conf.voters}, of which only "
                    f"{tuple(healthy)} are healthy (answered within an election timeout, state not lost): a quorum "
                    f"needs {len(conf.voters) // 2 + 1}. Bring the others back, or remove or replace them first"
                )
        index, term = self.log.last_index() + 1, self.term
        self._append_own([Entry(term, index, encode_conf_entry(change, conf), EntryKind.CONFIG)])
        return index, term

    def _healthy(self, node: int) -> bool:
        """On the leader: ``node`` is the leader itself, or answered within the last election
        timeout and has not lost its state (etcd's strict reconfiguration check counts these)."""
        if node == self.id:
            return True
        pr = self.progress.get(node)
        return (pr is not None and not pr.lost and pr.heard_at is not None
                and self._leader_ticks - pr.heard_at <= self.cfg.election_ticks)

    def request_promotion(self, node: int) -> None:
        """Promote learner ``node`` to voter once it has caught up (Raft dissertation §4.2.1).

        The leader replicates to it in rounds, each up to the last index the leader had when the
        round began; when a round takes less than an election timeout, the learner is close
        enough not to stall commits, and the leader proposes its promotion. After
        ``RaftConfig.catchup_rounds`` rounds, or a round longer than
        ``RaftConfig.catchup_round_ticks``, it gives up. Either way a :class:`Promotion` comes
        out of :meth:`ready`.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if node not in self.learners:
            raise ConfChangeError(f"node {node} is not a learner (voters {self.voters}, learners {self.learners})")
        if self.progress[node].lost:
            raise ConfChangeError(f"node {node} lost its state: remove it and add a new node instead")
        if node not in self._catchups:
            self._catchups[node] = _CatchUp(self.log.last_index(), self._leader_ticks, self._catchup_token())
            self._ask_learner(node)
        self._check_catchup(node)

    def read_index(self, context: Any) -> None:
        """Ask for a linearizable read point for ``context``.

        A ``ReadState(context, index)`` comes out of :meth:`ready` once it is safe to serve the
        read from a state machine that has applied ``index``; or ``context`` comes out in
        ``dropped_reads`` if this node cannot get one (no leader known, leadership lost).
        On a follower the request is forwarded to the leader (follower reads).
        """
        if self.role == Role.LEADER:
            self._leader_read(self.id, context)
        elif self.role == Role.FOLLOWER and self.lead != NONE:
            self._send(Message(MsgType.READ_INDEX, self.lead, self.id, self.term, context=context))
        else:
            self._dropped_reads.append(context)

    def persisted(self, index: int, term: int) -> None:
        """The shell made this node's log durable up to entry ``(index, term)`` (the last entry
        of a ready it persisted).

        A leader counts itself toward commit only for what it has synced, so it may send its
        appends before writing them itself (Raft dissertation §10.2.1): followers write in
        parallel with it, and nothing counts as committed on the strength of its unsynced
        copy. Ignored if the log no longer holds that entry."""
        if self.role == Role.LEADER and self.log.term(index) == term and self.progress[self.id].maybe_update(index):
            self._maybe_commit()

    def mark_lost_state(self) -> None:
        """This node had state and lost it (its storage died or was wiped): it may have forgotten
        votes it cast and entries it acknowledged, so from now on it never votes, never
        campaigns and never counts in a quorum; it follows the log as a non-voting replica. The
        mark is part of the hard state: the next :meth:`ready` asks the shell to persist it,
        and it can never be taken back (a membership change replaces such a node)."""
        if self._lost_state:
            return
        self._lost_state = True
        self._soft_changed = True
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term, NONE)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to voter ``to`` once its log is caught up (Raft dissertation §3.10)."""
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if to not in self.voters:
            raise ValueError(f"node {to} is not a voter of this cluster")
        if to == self.id or to == self.lead_transferee:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def compact(self, snapshot: SnapshotMeta, keep: int = 0) -> None:
        """The shell durably saved ``snapshot`` of its state machine: drop the log up to it,
        keeping the last ``keep`` entries before it for followers that are only a little behind."""
        if snapshot.index > self.log.applied:
            raise ValueError(f"snapshot at {snapshot.index} is beyond the applied index {self.log.applied}")
        if snapshot.index <= self.snapshot.index:
            return
        if self.log.term(snapshot.index) != snapshot.term:
            raise ValueError(f"snapshot term {snapshot.term} does not match the log at {snapshot.index}")
        conf = self.conf_at(snapshot.index)
        if _conf_of(snapshot) != conf:
            raise ValueError(f"snapshot configuration {snapshot} differs from the log's {conf}")
        self.snapshot = snapshot
        self._base_conf = conf
        self._confs = [(i, c) for i, c in self._confs if i > snapshot.index]
        self.log.compact_to(snapshot.index - keep)

    def report_snapshot(self, to: int, delivered: bool) -> None:
        """The shell finished sending a snapshot to ``to``: ``delivered`` or failed.

        Either way the leader goes back to probing ``to``; after a failure it sends the snapshot
        again when the follower next answers (a heartbeat), after a success the follower's
        answer to the snapshot moves it on.
        """
        pr = self.progress.get(to) if self.role == Role.LEADER else None
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        pending = pr.pending_snapshot
        pr.become_probe()
        if delivered:
            pr.next = max(pr.next, pending + 1)
            pr.probe_sent = True  # wait for the follower's answer (or the next heartbeat's)

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                in_lease = self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_ticks
                if in_lease and m.context != TRANSFER:
                    return  # leader stickiness: we heard from a live leader recently
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # a pre-vote never changes anybody's term
            elif m.type in _FROM_LEADER:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in _FROM_LEADER:
                # tell a stale leader about the newer term so that it steps down
                self._send(Message(MsgType.APPEND_RESP, m.frm, self.id, self.term))
            elif m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
                # reject with our term: a candidate stuck in an old term (e.g. one whose
                # configuration no longer includes the nodes that would tell it) learns of ours
                resp = MsgType.PRE_VOTE_RESP if m.type == MsgType.PRE_VOTE else MsgType.VOTE_RESP
                self._send(Message(resp, m.frm, self.id, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._on_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ------------------------------------------------------------------ output
    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._bcast_pending
            or self._read_states
            or self._dropped_reads
            or self._soft_changed
            or self._pending_snapshot is not None
            or self._promotions
            or self.log.unstable_from <= self.log.last_index()
            or self.log.commit > self.log.applied
            or self.hard_state != self._persisted_hs
        )

    def ready(self) -> Ready:
        """Take everything the shell must now persist, send, apply and serve (see :class:`Ready`).

        The core assumes the shell does all of it before the next call into the core.
        """
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == Role.LEADER:
                self._bcast_append()
        hs = self.hard_state
        rd = Ready(
            hard_state=hs if hs != self._persisted_hs else None,
            snapshot=self._pending_snapshot,
            entries=self.log.unstable_entries(),
            messages=self._msgs,
            committed_entries=self.log.next_committed(),
            read_states=self._read_states,
            dropped_reads=self._dropped_reads,
            soft_state_changed=self._soft_changed,
            promotions=self._promotions,
        )
        self._promotions = []
        self._persisted_hs = hs
        self._pending_snapshot = None
        self.log.stable_to_end()
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        self._soft_changed = False
        return rd

    # ------------------------------------------------------------------ roles
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.progress = {}
        self.lead_transferee = NONE
        self._verified = 0
        self._abort_reads()
        self._soft_changed = True
        for node in self._catchups:
            self._promotions.append(Promotion(node, error="leadership lost during the catch-up"))
        self._catchups = {}
        self._leader_ticks = 0

    def _reset_randomized_timeout(self) -> None:
        et, jitter = self.cfg.election_ticks, self.cfg.election_jitter_ticks
        self.randomized_timeout = et + self.rng.randint(0, et - 1 if jitter is None else jitter)

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def _become_pre_candidate(self) -> None:
        # like etcd: the term and vote stay, so a failed pre-vote disturbs nobody
        self.votes = {}
        self.role = Role.PRE_CANDIDATE
        self.lead = NONE
        self._abort_reads()
        self._soft_changed = True

    def _become_candidate(self) -> None:
        self.elections_started += 1
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        last = self.log.last_index()
        # a leader elected while its own removal is pending is not a member: it tracks itself too
        for v in {*self.conf.members, self.id}:
            self.progress[v] = Progress(last + 1, self.cfg.max_inflight)
        # the leader counts itself toward commit for what it has synced (see persisted): its
        # NOOP's sync tells it, and that covers the whole log before the NOOP
        self.progress[self.id].become_replicate()
        # Raft §8: a leader commits an entry of its own term before it can know what is committed
        self._append_own([Entry(self.term, last + 1, None, EntryKind.NOOP)])

    def _append_own(self, ents: list[Entry]) -> None:
        self.log.append(ents)
        if ents[-1].kind == EntryKind.CONFIG:
            self._scan_confs(ents[-1].index)
        self._bcast_pending = True

    # ------------------------------------------------------------------ elections
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(pre=self.cfg.pre_vote)

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if pre:
            self._become_pre_candidate()
            vote_term, kind = self.term + 1, MsgType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term, kind = self.term, MsgType.VOTE
        # a candidate whose own removal is pending campaigns under its newest configuration,
        # which leaves it out: its own vote is not counted there (dissertation §4.2.2)
        self.votes[self.id] = True
        if self._tally()[0] >= self.quorum:
            self._won(pre)
            return
        ctx = TRANSFER if transfer else None
        for v in self.voters:
            if v != self.id:
                self._send(Message(kind, v, self.id, vote_term, self.log.last_term(), self.log.last_index(), context=ctx))

    def _tally(self) -> tuple[int, int]:
        """Votes granted and refused by voters of the current configuration."""
        granted = sum(1 for v, ok in self.votes.items() if ok and v in self.voters)
        refused = sum(1 for v, ok in self.votes.items() if not ok and v in self.voters)
        return granted, refused

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _on_vote_request(self, m: Message) -> None:
        pre = m.type == MsgType.PRE_VOTE
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (pre and m.term > self.term)
        )
        # the candidate may know a newer configuration than ours: its membership is not checked
        # here (as in etcd); its own configuration decides what a quorum is
        if can_vote and not self._lost_state and self.log.is_up_to_date(m.index, m.log_term):
            # a granted vote answers in the term asked about (for a pre-vote, a future term)
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        my_resp = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if m.type in _FROM_LEADER:
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type == my_resp:
            self.votes.setdefault(m.frm, not m.reject)
            granted, rejected = self._tally()
            if granted >= self.quorum:
                self._won(self.role == Role.PRE_CANDIDATE)
            elif rejected >= self.quorum:
                self._become_follower(self.term, NONE)
        elif m.type == MsgType.READ_INDEX_RESP:
            self._dropped_reads.append(m.context)

    # ------------------------------------------------------------------ follower
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.APPEND:
            self.election_elapsed = 0
            self.lead = m.frm
            self._on_append(m)
        elif t == MsgType.SNAPSHOT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._on_snapshot(m)
        elif t == MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            if self._lost_state:
                # the leader may not know yet that we lost our log: trust only what we verified
                self.log.commit_to(min(m.commit, self._verified))
                self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=LOST_STATE))
            else:
                if m.commit > self.log.last_index():
                    raise AssertionError(f"leader {m.frm} commits {m.commit} beyond our last index {self.log.last_index()}")
                self.log.commit_to(m.commit)
                self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))
        elif t == MsgType.TIMEOUT_NOW:
            if self._promotable():
                self._campaign(pre=False, transfer=True)
        elif t == MsgType.READ_INDEX:
            self._send(Message(MsgType.READ_INDEX_RESP, m.frm, self.id, self.term, reject=True, context=m.context))
        elif t == MsgType.READ_INDEX_RESP:
            if m.reject:
                self._dropped_reads.append(m.context)
            else:
                self._read_states.append(ReadState(m.context, m.index))

    def _on_append(self, m: Message) -> None:
        if m.index < self.log.commit:
            self._send(Message(MsgType.APPEND_RESP, m.frm, self.id, self.term, index=self.log.commit,
                               context=self._mark()))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if self.log.appended_from:
                self._scan_confs(self.log.appended_from)
            self._verified = max(self._verified, last_new)
            self._send(Message(MsgType.APPEND_RESP, m.frm, self.id, self.term, index=last_new, context=self._mark()))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(
            Message(
                MsgType.APPEND_RESP, m.frm, self.id, self.term,
                log_term=hint_term, index=m.index, reject=True, reject_hint=hint_index,
                context=self._mark(),
            )
        )

    def _on_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        if snap.index > self.log.commit:
            if self.log.match_term(snap.index, snap.term):
                # we hold the snapshot's last entry, hence (log matching) everything before it
                self.log.commit_to(snap.index)
            else:
                # etcd/raft-rs do the same: the log is replaced whole, whatever suffix it had
                self.log.restore(snap.index, snap.term)
                self.snapshot = snap
                self._pending_snapshot = snap
                self._base_conf, self._confs = _conf_of(snap), []
                self._scan_confs(snap.index + 1)
            self._verified = max(self._verified, snap.index)
        self._send(Message(MsgType.APPEND_RESP, m.frm, self.id, self.term, index=self.log.commit, context=self._mark()))

    # ------------------------------------------------------------------ leader
    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        self._leader_ticks += 1
        for node in list(self._catchups):
            self._check_catchup(node)
            if self.role != Role.LEADER:
                return
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = sum(1 for v in self.voters if v == self.id or self.progress[v].recent_active)
                if active < self.quorum:
                    self._become_follower(self.term, NONE)  # isolated: step down
                    return
                for v, pr in self.progress.items():
                    pr.recent_active = v == self.id
            self.lead_transferee = NONE  # a transfer that took an election timeout has failed
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(None)

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        t = m.type
        if t == MsgType.READ_INDEX:
            self._leader_read(m.frm, m.context)
            return
        if pr is None:
            return
        if m.context == LOST_STATE and not pr.lost:
            pr.lost = True
            pr.forget_match()
        if pr.lost:
            if m.context != LOST_STATE:
                return  # sent before it lost its state: void
        else:
            pr.recent_active = True
            pr.heard_at = self._leader_ticks
        if t == MsgType.APPEND_RESP:
            if m.reject:
                if pr.lost and m.index <= pr.match:
                    pr.forget_match()  # a node that lost its state may lose it again
                next_probe = m.reject_hint
                if m.log_term > 0:
                    next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decrease_to(m.index, next_probe):
                    self._send_append(m.frm)
                return
            was_paused = pr.is_paused()
            if not pr.maybe_update(m.index):
                if pr.state == ProgressState.PROBE and m.index == pr.match:
                    pr.become_replicate()  # the probe found the follower already up to date
                    self._send_append(m.frm, send_if_empty=False)
                elif was_paused and not pr.is_paused():
                    self._send_append(m.frm, send_if_empty=False)
                return
            if pr.state == ProgressState.PROBE or (
                pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
            ):
                pr.become_replicate()
            if m.frm in self._catchups:
                self._check_catchup(m.frm)
            # a commit alone is not broadcast: the commit index rides on the next append or
            # heartbeat, so it never takes a follower's call slot nor delays a client's answer
            if self._maybe_commit() and self.role != Role.LEADER:
                return
            while self._send_append(m.frm, send_if_empty=False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self.id, self.term))
        elif t == MsgType.HEARTBEAT_RESP:
            pr.probe_sent = False
            cu = self._catchups.get(m.frm)
            if cu is not None and not pr.lost and m.context == cu.token:
                cu.confirmed = True
                self._check_catchup(m.frm)
                if self.role != Role.LEADER:
                    return
            if pr.state == ProgressState.REPLICATE and pr.is_paused():
                # a lost append must not stall the pipeline for good: free a slot, so the next
                # append goes out and, if there is a gap, is rejected and we probe
                pr.inflight.pop(0)
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context is not None and not pr.lost:
                self._on_read_ack(m.frm, m.context)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            if prev >= self.log.offset:
                raise AssertionError(f"leader has no term for index {prev}")
            # the entries the follower needs are compacted away: send the snapshot instead
            self._send(Message(MsgType.SNAPSHOT, to, self.id, self.term, snapshot=self.snapshot))
            pr.become_snapshot(self.snapshot.index)
            return True
        hi = min(self.log.last_index() + 1, pr.next + self.cfg.max_entries_per_message)
        ents = self.log.slice(pr.next, hi)
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APPEND, to, self.id, self.term, prev_term, prev, ents, self.log.commit))
        pr.sent_entries(ents[-1].index if ents else 0)
        return True

    def _bcast_append(self) -> None:
        for v in self.progress:  # voters and learners
            if v != self.id:
                self._send_append(v)

    def _bcast_heartbeat(self, context: Any) -> None:
        for v in self.progress:
            if v != self.id:
                # a learner in catch-up does not count in read rounds: it gets its round's token
                cu = self._catchups.get(v)
                self._heartbeat(v, context if cu is None else cu.token)

    def _heartbeat(self, to: int, context: Any) -> None:
        commit = min(self.progress[to].match, self.log.commit)
        self._send(Message(MsgType.HEARTBEAT, to, self.id, self.term, commit=commit, context=context))

    def _maybe_commit(self) -> bool:
        # a node that lost its state counts as holding nothing: it may forget again
        matches = sorted((0 if (pr := self.progress[v]).lost else pr.match for v in self.voters), reverse=True)
        mci = matches[self.quorum - 1]
        # Raft §5.4.2: only an entry of the current term is committed by counting replicas
        if mci > self.log.commit and self.log.term(mci) == self.term:
            first_in_term = self.log.term(self.log.commit) != self.term
            self.log.commit_to(mci)
            if first_in_term:
                deferred, self.deferred_reads = self.deferred_reads, []
                for frm, ctx in deferred:
                    self._leader_read(frm, ctx)
            if self.id not in self.voters and self.conf_index <= mci:
                self._leave()
            return True
        return False

    def _leave(self) -> None:
        """The configuration without this leader is committed: hand leadership to the voter
        with the most complete log (at once, with ``TIMEOUT_NOW``) and step down."""
        able = [v for v in self.voters if not self.progress[v].lost]  # a lost-state voter never campaigns
        best = max(able, key=lambda v: self.progress[v].match, default=NONE)
        if best != NONE and self.progress[best].match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, best, self.id, self.term))
        self._bcast_heartbeat(None)  # the followers learn the commit index before we go
        self._become_follower(self.term, NONE)

    # ------------------------------------------------------------------ membership
    def _scan_confs(self, first: int) -> None:
        """The log changed from index ``first`` on: recompute the configuration from it."""
        while self._confs and self._confs[-1][0] >= first:
            self._confs.pop()
        for e in self.log.slice(first, self.log.last_index() + 1):
            if e.kind == EntryKind.CONFIG:
                self._confs.append((e.index, decode_conf_entry(e.command)[1]))
        conf = self._confs[-1][1] if self._confs else self._base_conf
        if conf != self.conf:
            self._set_conf(conf)

    def _set_conf(self, conf: ConfState) -> None:
        self.conf, self.voters, self.learners = conf, conf.voters, conf.learners
        self._soft_changed = True
        if self.role == Role.LEADER:
            last = self.log.last_index()
            for n in conf.members:
                if n not in self.progress:
                    self.progress[n] = Progress(last + 1, self.cfg.max_inflight)
            for n in [n for n in self.progress if n != self.id and n not in conf.members]:
                del self.progress[n]
            for n in [n for n in self._catchups if n not in conf.learners]:
                del self._catchups[n]
                if n not in conf.voters:
                    self._promotions.append(Promotion(n, error=f"node {n} was removed during its catch-up"))
            if self.lead_transferee not in conf.voters:
                self.lead_transferee = NONE
            self._bcast_pending = True
            self._maybe_commit()  # a smaller quorum may commit more
        elif self.role != Role.FOLLOWER and not self._promotable():
            self._become_follower(self.term, NONE)

    def _check_catchup(self, node: int) -> None:
        cu = self._catchups[node]
        pr = self.progress[node]
        elapsed = self._leader_ticks - cu.started
        if pr.lost:
            self._end_catchup(node, f"node {node} lost its state during its catch-up")
        elif pr.match >= cu.target and cu.confirmed:
            if elapsed <= self.cfg.election_ticks:
                del self._catchups[node]
                try:
                    index, term = self.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, node))
                except ProposalDropped:
                    self._promotions.append(Promotion(node, error="the leader is handing over leadership"))
                    return
                except ConfChangePending:  # the previous change commits shortly: a round more
                    self._catchups[node] = cu
                    self._next_catchup_round(node)
                    return
                except ConfChangeError as exc:  # e.g. too few healthy voters for the new quorum
                    self._promotions.append(Promotion(node, error=str(exc)))
                    return
                self._promotions.append(Promotion(node, index, term, rounds=cu.round))
                return
            cu.round += 1
            if cu.round > self.cfg.catchup_rounds:
                self._end_catchup(node, f"node {node} was still behind after {self.cfg.catchup_rounds} rounds")
            else:
                self._next_catchup_round(node)
        elif elapsed > self.cfg.catchup_round_ticks:
            self._end_catchup(node, f"round {cu.round} of node {node}'s catch-up took more than "
                                    f"{self.cfg.catchup_round_ticks} ticks (it is down or too slow)")

    def _catchup_token(self) -> tuple[str, int]:
        self._next_round += 1
        return (CATCH_UP, self._next_round)

    def _next_catchup_round(self, node: int) -> None:
        self._catchups[node].next_round(self.log.last_index(), self._leader_ticks, self._catchup_token())
        self._ask_learner(node)

    def _ask_learner(self, node: int) -> None:
        """A heartbeat with the learner's round token: its answer confirms it holds its log now."""
        self._heartbeat(node, self._catchups[node].token)

    def _end_catchup(self, node: int, error: str) -> None:
        del self._catchups[node]
        self._promotions.append(Promotion(node, error=error))

    # ------------------------------------------------------------------ ReadIndex
    def _leader_read(self, frm: int, context: Any) -> None:
        if self.log.term(self.log.commit) != self.term:
            # until it commits an entry of its term a new leader does not know the commit index
            self.deferred_reads.append((frm, context))
            return
        if self.voters == (self.id,):
            self._release_read(frm, context, self.log.commit)
            return
        round_id = self._next_round
        self._next_round += 1
        rnd = _ReadRound(self.log.commit, self.id)
        rnd.requests.append((frm, context))
        self.read_rounds[round_id] = rnd
        self._bcast_heartbeat(round_id)

    def _on_read_ack(self, frm: int, round_id: Any) -> None:
        rnd = self.read_rounds.get(round_id)
        if rnd is None:
            return
        rnd.acks.add(frm)
        if sum(1 for v in rnd.acks if v in self.voters) < self.quorum:
            return
        # leadership confirmed at this round's start, hence at every earlier round's start too
        while self.read_rounds:
            rid, r = self.read_rounds.popitem(last=False)
            for req_from, ctx in r.requests:
                self._release_read(req_from, ctx, r.index)
            if rid == round_id:
                break

    def _release_read(self, frm: int, context: Any, index: int) -> None:
        if frm == self.id:
            self._read_states.append(ReadState(context, index))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, frm, self.id, self.term, index=index, context=context))

    def _abort_reads(self) -> None:
        for rnd in self.read_rounds.values():
            for frm, ctx in rnd.requests:
                if frm == self.id:
                    self._dropped_reads.append(ctx)
        for frm, ctx in self.deferred_reads:
            if frm == self.id:
                self._dropped_reads.append(ctx)
        self.read_rounds.clear()
        self.deferred_reads = []

    # ------------------------------------------------------------------ plumbing
    def _mark(self) -> str | None:
        return LOST_STATE if self._lost_state else None

    def _send(self, m: Message) -> None:
        self._msgs.append(m)


def _conf_of(snap: SnapshotMeta) -> ConfState:
    members = tuple(snap.voters) + tuple(snap.learners)
    return ConfState(tuple(snap.voters), tuple(snap.learners), max((snap.max_id, *members), default=0))
