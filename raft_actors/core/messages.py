"""Values that flow in and out of the pure Raft core: log entries, hard state and messages.

Everything here is plain data: picklable, comparable, free of Ray, asyncio, clocks and files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

#: Node id meaning "nobody" (no leader known, no vote cast).
NONE = 0


class EntryKind(IntEnum):
    """What a log entry carries."""

    NORMAL = 0  #: a client command (opaque bytes for the core)
    NOOP = 1  #: the empty entry a new leader appends to commit its term
    CONFIG = 2  #: a membership change (see :mod:`raft_actors.core.membership`)


class Entry(NamedTuple):
    """One log entry. ``(term, index)`` names it uniquely across the cluster."""

    term: int
    index: int
    command: bytes | None = None
    kind: int = EntryKind.NORMAL


class HardState(NamedTuple):
    """The state a node must persist before it sends or acknowledges anything.

    ``lost_state`` marks a node that once lost its storage: it has forgotten votes and
    acknowledged entries, so it may never again vote or count toward a quorum (until a
    membership change re-adds it as a new member). The mark is persisted like the term.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0
    lost_state: bool = False


class SnapshotMeta(NamedTuple):
    """What a snapshot covers: every entry up to ``index`` (whose term is ``term``) is in it.

    ``voters``, ``learners`` and ``max_id`` are the cluster configuration as of ``index`` (a
    :class:`~raft_actors.core.membership.ConfState`). The state itself (opaque bytes for the
    core) travels beside the metadata, never inside the core.
    """

    index: int = 0
    term: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    max_id: int = 0


class MsgType(IntEnum):
    """Kinds of peer message (the RPCs of the Raft paper, plus etcd-style extensions)."""

    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    READ_INDEX = 9
    READ_INDEX_RESP = 10
    TIMEOUT_NOW = 11
    SNAPSHOT = 12


@dataclass(slots=True)
class Message:
    """A message between two Raft nodes.

    One shape serves every RPC (as in etcd-io/raft); each type uses the fields it needs:

    - ``APPEND``: ``index``/``log_term`` name the entry preceding ``entries``; ``commit`` is the
      leader's commit index.
    - ``APPEND_RESP``: ``index`` is the last index the follower now matches, or, with ``reject``,
      the index it rejected; ``reject_hint``/``log_term`` are the conflict hint for fast backtracking.
    - ``VOTE``/``PRE_VOTE``: ``index``/``log_term`` are the candidate's last index and term;
      ``context`` is ``b"transfer"`` for an election started by leadership transfer.
    - ``HEARTBEAT``: ``commit`` is the leader's commit index (clamped to the follower's match);
      ``context`` carries a ReadIndex round id, echoed in ``HEARTBEAT_RESP``.
    - ``READ_INDEX``/``READ_INDEX_RESP``: a follower asks the leader for a read index on behalf
      of a read request ``context``; the answer carries ``index`` (or ``reject``).
    - ``SNAPSHOT``: ``snapshot`` names the leader's snapshot (InstallSnapshot); the shell carries
      the state itself beside the message. The answer is an ``APPEND_RESP``.
    - ``APPEND_RESP``/``HEARTBEAT_RESP`` from a node that lost its storage carry
      ``context == LOST_STATE``: the leader replicates to it but never counts it in a quorum.
    """

    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: Any = None
    snapshot: SnapshotMeta | None = None


class Promotion(NamedTuple):
    """The end of a learner's catch-up (:meth:`RaftCore.request_promotion`): the leader proposed
    its promotion at ``(index, term)``, or gave up for the reason in ``error``."""

    node: int
    index: int = 0
    term: int = 0
    error: str | None = None
    rounds: int = 0


class ReadState(NamedTuple):
    """A read request ``context`` may be served once the applied index reaches ``index``."""

    context: Any
    index: int


@dataclass(slots=True)
class Ready:
    """Everything the shell must do after driving the core, in this order.

    0. if ``snapshot`` is set: persist the snapshot received from the leader (replacing the
       whole log) and restore the state machine from it;
    1. persist ``entries`` (replacing any stored entries at the same or later indexes)
       and ``hard_state`` (if not ``None``), durably;
    2. send ``messages``;
    3. apply ``committed_entries`` in order;
    4. serve ``read_states`` once the applied index reaches each one's index;
       fail the requests in ``dropped_reads`` (the core could not get a read index for them);
       report ``promotions`` to whoever asked for them.
    """

    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[Any] = field(default_factory=list)
    soft_state_changed: bool = False
    promotions: list[Promotion] = field(default_factory=list)
