"""Helpers for driving :class:`raft_actors.core.RaftCore` by hand in tests.

Cores are built from a list of entry terms, elected by feeding them the vote responses their
peers would send, and wired into :class:`Net`, a tiny in-test network whose messages can be
delivered, held back or dropped one by one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from raft_actors.core import (
    NONE,
    CoreConfig,
    Entry,
    HardState,
    Message,
    MsgType,
    RaftCore,
    Ready,
    Role,
)

#: election timeout (ticks) of every test config
ET = 10


def config(**kw) -> CoreConfig:
    base = {"election_ticks": ET, "heartbeat_ticks": 1}
    base.update(kw)
    return CoreConfig(**base)


def ents(terms: Sequence[int], start: int = 1) -> list[Entry]:
    """Entries ``start, start+1, ...`` with the given terms (commands name their term and index)."""
    return [Entry(t, start + i, f"{t}:{start + i}".encode()) for i, t in enumerate(terms)]


def core(
    nid: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    *,
    terms: Sequence[int] = (),
    term: int | None = None,
    vote: int = NONE,
    commit: int = 0,
    seed: int = 0,
    lost_state: bool = False,
    **cfg,
) -> RaftCore:
    """A follower whose log has entries of ``terms`` (term defaults to the last entry's term)."""
    if term is None:
        term = max(terms, default=0)
    return RaftCore(
        nid,
        voters,
        config(**cfg),
        random.Random(seed),
        hard_state=HardState(term, vote, commit),
        entries=ents(terms),
        lost_state=lost_state,
    )


def drain(c: RaftCore) -> Ready:
    """Take ``c``'s ready as a shell does: the entries it asks to persist are persisted, and the
    core is told (a leader counts itself toward commit only for what it has synced)."""
    rd = c.ready()
    if rd.entries:
        c.persisted(rd.entries[-1].index, rd.entries[-1].term)
    return rd


def of(msgs: Iterable[Message], type: MsgType | None = None, to: int | None = None) -> list[Message]:
    return [m for m in msgs if (type is None or m.type == type) and (to is None or m.to == to)]


def tick_until(c: RaftCore, pred: Callable[[RaftCore], bool], limit: int = 4 * ET) -> int:
    """Tick ``c`` until ``pred(c)``; returns the number of ticks."""
    for n in range(1, limit + 1):
        c.tick()
        if pred(c):
            return n
    raise AssertionError(f"condition not reached in {limit} ticks")


def peers(c: RaftCore) -> list[int]:
    return [v for v in c.voters if v != c.id]


def elect(c: RaftCore, granters: Sequence[int] | None = None) -> Ready:
    """Make follower ``c`` time out and win (pre-vote and) vote with grants from ``granters``.

    Returns the first Ready of the new leader (its NOOP broadcast).
    """
    granters = list(peers(c) if granters is None else granters)
    tick_until(c, lambda x: x.role != Role.FOLLOWER)
    if c.role == Role.PRE_CANDIDATE:
        for p in granters:
            if c.role != Role.PRE_CANDIDATE:
                break
            c.step(Message(MsgType.PRE_VOTE_RESP, c.id, p, c.term + 1))
    if c.role == Role.CANDIDATE:
        for p in granters:
            if c.role != Role.CANDIDATE:
                break
            c.step(Message(MsgType.VOTE_RESP, c.id, p, c.term))
    assert c.role == Role.LEADER, c.role
    return drain(c)


def ack(c: RaftCore, frm: int, index: int | None = None) -> Ready:
    """Leader ``c`` hears that ``frm`` matches up to ``index`` (its last index by default)."""
    idx = c.log.last_index() if index is None else index
    c.step(Message(MsgType.APPEND_RESP, c.id, frm, c.term, index=idx))
    return drain(c)


def leader(nid: int = 1, voters: Iterable[int] = (1, 2, 3), *, caught_up: Iterable[int] = (), **kw) -> RaftCore:
    """A leader (elected from a follower built by :func:`core`) with its first Ready drained.

    Followers in ``caught_up`` acknowledge everything, so their progress is REPLICATE at the end.
    """
    c = core(nid, voters, **kw)
    elect(c)
    for p in caught_up:
        ack(c, p)
    drain(c)
    return c


def terms_of(c: RaftCore) -> list[int]:
    return [e.term for e in c.log.entries]


class Net:
    """A few cores and the messages between them.

    ``flush`` takes every core's Ready (entries are "persisted" by the core itself; committed
    entries are recorded as applied) and queues its messages; ``deliver`` steps queued
    messages; ``held``/``blocked`` keep some of them back. Election safety is checked on every
    flush: at most one leader per term, ever.
    """

    def __init__(self, cores: Iterable[RaftCore]):
        self.cores = {c.id: c for c in cores}
        self.pending: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.cores}
        self.read_states: dict[int, list] = {i: [] for i in self.cores}
        self.dropped_reads: dict[int, list] = {i: [] for i in self.cores}
        self.leaders_by_term: dict[int, set[int]] = {}
        self.delivered: list[Message] = []
        self.snapshots: dict[int, list] = {i: [] for i in self.cores}  # installed from the leader
        self.promotions: dict[int, list] = {i: [] for i in self.cores}  # reported by a leader
        #: assert election safety on every flush (a test that expects a violation turns it off)
        self.check_safety = True

    def __getitem__(self, nid: int) -> RaftCore:
        return self.cores[nid]

    # -- topology
    def isolate(self, nid: int) -> None:
        for o in self.cores:
            if o != nid:
                self.blocked |= {(nid, o), (o, nid)}

    def cut(self, a: int, b: int) -> None:
        self.blocked |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.blocked.clear()

    def add(self, c: RaftCore) -> None:
        """A new node (joining the cluster: see the membership tests)."""
        self.cores[c.id] = c
        for d in (self.applied, self.read_states, self.dropped_reads, self.snapshots, self.promotions):
            d[c.id] = []

    def replace(self, c: RaftCore) -> None:
        """Swap in a fresh core for the same id (a restart); its queued messages are dropped."""
        self.cores[c.id] = c
        self.pending = [m for m in self.pending if m.to != c.id]
        self.applied[c.id] = []

    # -- traffic
    def flush(self) -> None:
        for nid, c in self.cores.items():
            if nid in self.down:
                continue
            rd = drain(c)
            if rd.snapshot is not None:
                self.snapshots[nid].append(rd.snapshot)
            self.applied[nid].extend(rd.committed_entries)
            self.read_states[nid].extend(rd.read_states)
            self.dropped_reads[nid].extend(rd.dropped_reads)
            self.promotions[nid].extend(rd.promotions)
            for m in rd.messages:
                if (m.frm, m.to) not in self.blocked and m.to not in self.down:
                    self.pending.append(m)
            if c.is_leader():
                self.leaders_by_term.setdefault(c.term, set()).add(nid)
        if self.check_safety:
            assert self.two_leader_terms() == [], "two leaders in one term"

    def two_leader_terms(self) -> list[int]:
        """Terms in which more than one node has been leader (election safety says: none)."""
        return sorted(t for t, ids in self.leaders_by_term.items() if len(ids) > 1)

    def deliver(self, pred: Callable[[Message], bool] = lambda m: True, limit: int = 100_000) -> int:
        """Step queued messages matching ``pred`` (and those they cause) until none is left."""
        n = 0
        self.flush()
        while True:
            i = next((k for k, m in enumerate(self.pending) if pred(m)), None)
            if i is None:
                return n
            m = self.pending.pop(i)
            if (m.frm, m.to) in self.blocked or m.to in self.down:
                if m.type == MsgType.SNAPSHOT:
                    self.cores[m.frm].report_snapshot(m.to, False)
                continue
            self.cores[m.to].step(m)
            if m.type == MsgType.SNAPSHOT:
                self.cores[m.frm].report_snapshot(m.to, True)  # the shell's report after sending it
            self.delivered.append(m)
            n += 1
            assert n < limit, "message storm"
            self.flush()

    def drop(self, pred: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        self.flush()
        gone = [m for m in self.pending if pred(m)]
        self.pending = [m for m in self.pending if not pred(m)]
        for m in gone:
            if m.type == MsgType.SNAPSHOT:
                self.cores[m.frm].report_snapshot(m.to, False)
        return gone

    def tick(self, n: int = 1, nodes: Iterable[int] | None = None) -> None:
        """Tick ``nodes`` (every live node by default) ``n`` times, delivering everything after each tick."""
        for _ in range(n):
            for nid in list(nodes if nodes is not None else self.cores):
                if nid not in self.down:
                    self.cores[nid].tick()
            self.deliver()

    def leader(self) -> RaftCore | None:
        """The live leader of the highest term, if any."""
        ls = [c for i, c in self.cores.items() if c.is_leader() and i not in self.down]
        return max(ls, key=lambda c: c.term) if ls else None

    def elect(self, limit: int = 20 * ET) -> RaftCore:
        for _ in range(limit):
            ld = self.leader()
            if ld is not None and all(
                self.cores[i].term == ld.term for i in self.cores if i not in self.down and (ld.id, i) not in self.blocked
            ):
                return ld
            self.tick()
        raise AssertionError("no leader elected")


def cluster(n: int = 3, seed: int = 0, terms: Sequence[int] = (), **cfg) -> Net:
    ids = list(range(1, n + 1))
    return Net(core(i, ids, terms=terms, seed=seed * 100 + i, **cfg) for i in ids)
