"""A deterministic simulator: a whole cluster and its clients in one process, in virtual time.

A seed decides every tick, message delay, drop, duplicate, reorder, partition and crash, so a
failing run replays exactly: ``python -m raft_actors.sim --seed N``. The simulator runs the
same :class:`~raft_actors.replica.Replica` (core + storage + applier) as the Ray actors, and
checks the Raft safety properties as it goes:

- election safety: at most one leader per term;
- leader completeness: a new leader holds every entry committed before its election;
- state machine safety: no two nodes commit or apply different entries at one index;
- log matching (at the end): logs that agree on an entry's term agree on everything before it;
- durability: every acknowledged write is in the committed log.

With ``Faults.reconfigure_every`` the cluster also changes its membership as it runs: new nodes
join as learners and are promoted once caught up, voters and learners are removed (the leader
too), and nodes that lost their storage are replaced; a removed node is stopped once its
removal commits, as the driver does.

Client histories come back in :class:`SimResult` for a linearizability check
(:mod:`raft_actors.linearizability`). Users can simulate their own state machine by passing
``state_machine`` and a ``workload``.
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .applier import decode_parts
from .config import RaftConfig
from .core import ConfChange, ConfChangeType, ConfState, Entry, EntryKind, HardState, Message, MsgType, Ready, Role
from .envelope import OPEN_SESSION_CALL, Outcome, Results, decode_call, dumps, encode_values, seqs_of
from .errors import NotLeaderError, RaftTimeoutError, UnknownOutcomeError
from .linearizability import Operation
from .lost_state import has_lost_state
from .replica import Replica
from .session import FOLLOWER, LINEARIZABLE, OPEN, READ, WRITE, Request, Router, Session, expire, settle, unreachable
from .state_machines import KVStore
from .storage.file import FileStorage
from .storage.simdisk import SimCrash, SimDisk

#: each simulated node keeps its data here, on its own simulated disk
_DATA_DIR = "/data"
_DIRECTORY_OPS = frozenset({"create", "rename", "remove", "sync_dir", "truncate"})

#: a workload returns ("write", command) or ("read", query) for a client, given the sim's rng
Workload = Callable[[random.Random, int, int], tuple[str, Any]]


def kv_workload(keys: tuple[str, ...] = ("a", "b", "c"), read_ratio: float = 0.4) -> Workload:
    """Random puts (unique values), cas, deletes and gets over a few keys."""

    def make(rng: random.Random, client: int, n: int) -> tuple[str, Any]:
        key = rng.choice(keys)
        r = rng.random()
        if r < read_ratio:
            return "read", ("get", key)
        value = f"{client}.{n}"
        if r < read_ratio + 0.1:
            return "write", ("cas", key, rng.choice([None, f"{rng.randrange(4)}.{rng.randrange(n + 1)}"]), value)
        if r < read_ratio + 0.15:
            return "write", ("delete", key)
        return "write", ("put", key, value)

    return make


@dataclass
class Faults:
    """What goes wrong during a simulated run (probabilities per message, intervals in virtual ms)."""

    drop: float = 0.03
    duplicate: float = 0.02
    min_delay: int = 1
    max_delay: int = 8
    #: chance that a message is held back much longer (so it arrives out of order)
    long_delay: float = 0.03
    long_delay_max: int = 80
    #: mean virtual ms between partition changes (None: never partition)
    partition_every: int | None = 700
    #: mean virtual ms between crashes (None: never crash)
    crash_every: int | None = 900
    #: how long a crashed node stays down, at most
    max_downtime: int = 400
    #: chance that a crash strikes in the middle of the node's next persist steps (at a random
    #: file operation, before or after it), and the disk keeps only part of what was not fsynced
    torn_crash: float = 0.5
    #: chance that a crash also destroys the node's storage (it then rejoins as a non-voter);
    #: never so many that fewer than a majority of voters remain
    lose_storage: float = 0.0
    #: chance that a crash picks a leader rather than any node
    target_leader: float = 0.5
    #: mean virtual ms between membership changes (None: the membership never changes)
    reconfigure_every: int | None = None
    #: the most voters a reconfiguring run grows to (it never shrinks below 3)
    max_voters: int = 5

    @classmethod
    def chaos(cls) -> Faults:
        """Frequent leader crashes, partitions and loss: the schedules that break weak protocols."""
        return cls(drop=0.1, duplicate=0.05, long_delay=0.1, partition_every=150, crash_every=200,
                   max_downtime=300, target_leader=0.8)


@dataclass
class SimResult:
    """What happened in one simulated run."""

    seed: int
    history: list[Operation]
    violations: list[str]
    leaders: dict[int, int]
    committed: dict[int, Entry]
    final_states: dict[int, bytes]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {'OK' if self.ok else 'VIOLATIONS'}  stats={self.stats}"]
        lines += [f"  - {v}" for v in self.violations]
        lines.append(f"  replay: python -m raft_actors.sim --seed {self.seed}")
        return "\n".join(lines)


class _Client:
    """A simulated client process: one session, one operation at a time, driven by the same
    rules as the Ray client (:mod:`raft_actors.session`). It is the sink of its requests: what
    they end with goes into the history."""

    def __init__(self, sim: Simulator, cid: int):
        self.sim = sim
        self.id = cid
        self.session = Session()
        self.router = Router(sim.rng.choice)
        self.n_ops = 0
        self.kind = ""
        self.payload: Any = None
        self.req: Request | None = None  # the operation's request (or the session opening first)
        self.op: Request | None = None  # the operation's own request
        self.call = 0
        self.attempt = 0

    # the sink of the operation's request
    def put(self, positions: Any, values: Any) -> None:
        sim = self.sim
        sim.history.append(Operation(self.id, self.payload, self.call, sim.now, values[0]))
        if self.kind == "write":
            assert self.op is not None
            sim.acked.append((self.op.cid, self.op.seqs[0]))
        self._finish()

    def put_error(self, position: int, exc: BaseException) -> None:
        sim = self.sim
        if isinstance(exc, UnknownOutcomeError):
            if self.kind == "write":  # it may have been applied: the checker allows either
                sim.history.append(Operation(self.id, self.payload, self.call, None))
        elif not isinstance(exc, RaftTimeoutError):
            # a result (e.g. the state machine raised): it happened, with this answer
            sim.history.append(Operation(self.id, self.payload, self.call, sim.now, f"error:{type(exc).__name__}"))
        # a plain timeout: nothing was applied (a write never reached a leader), nothing observed
        self._finish()

    def _finish(self) -> None:
        if self.op is not None and self.op.kind == WRITE:
            self.session.finished(self.op)
        self.req = self.op = None
        self.attempt += 1
        self.sim._at(1 + self.sim.rng.randrange(20), lambda: self.sim._next_op(self))


class _Opener:
    """The sink of a simulated client's session opening."""

    def __init__(self, client: _Client):
        self.client = client

    def put(self, positions: Any, values: Any) -> None:
        c = self.client
        c.session.opened(values[0])
        c.req = c.op
        c.sim._attempt(c)

    def put_error(self, position: int, exc: BaseException) -> None:
        c = self.client
        c.session.opening = False
        assert c.op is not None
        c.op.fail(RaftTimeoutError(f"could not open a session: {exc}"))


class Simulator:
    """A seeded, virtual-time cluster of ``num_nodes`` replicas and ``num_clients`` clients.

    Args:
        seed: decides everything; the same seed gives the same run.
        num_nodes: cluster size.
        config: Raft settings (``tick_interval`` is ignored: a tick is ``tick_ms`` virtual ms).
        state_machine: a zero-argument factory of the state machine each node runs.
        faults: what goes wrong, and how often.
        num_clients: concurrent clients, one outstanding request each.
        workload: makes each client's next operation (default: :func:`kv_workload`).
        follower_reads: share of reads sent to followers (served after a ReadIndex from the leader).
    """

    def __init__(
        self,
        seed: int,
        num_nodes: int = 3,
        config: RaftConfig | None = None,
        state_machine: Callable[[], Any] = KVStore,
        faults: Faults | None = None,
        num_clients: int = 3,
        workload: Workload | None = None,
        tick_ms: int = 10,
        follower_reads: float = 0.3,
    ):
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = config or RaftConfig()
        self.faults = faults if faults is not None else Faults()
        self.ids = list(range(1, num_nodes + 1))  # every node that ever existed
        self.bootstrap = list(self.ids)  # the initial voters; nodes added later start empty
        self.retired: set[int] = set()  # removed from the cluster and stopped for good
        self.sm_factory = state_machine
        self.workload = workload or kv_workload()
        self.tick_ms = tick_ms
        self.follower_reads = follower_reads
        self.now = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        # each node runs the real write-ahead log on a simulated disk that loses unsynced writes
        self.disks = {i: SimDisk(random.Random(self.rng.getrandbits(64))) for i in self.ids}
        self.lost_storage: set[int] = set()
        self.started: set[int] = set()  # nodes that ran before: one that comes back empty lost its state
        self.nodes: dict[int, Replica | None] = {}
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that carry nothing
        self.clients = [_Client(self, 1000 + c) for c in range(num_clients)]
        self.history: list[Operation] = []
        self.violations: list[str] = []
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, Entry] = {}
        # the term of the node that first saw each index committed: it was committed in that
        # term or earlier, so every leader of a later term must hold it (leader completeness)
        self._commit_term: dict[int, int] = {}
        self.applied: dict[int, Entry] = {}
        self._seen_commit: dict[int, int] = {}
        self._seen_applied: dict[int, int] = {}
        self.acked: list[tuple[int, int]] = []
        self.stats = {"messages": 0, "dropped": 0, "crashes": 0, "torn_crashes": 0, "partitions": 0, "elections": 0,
                      "snapshots": 0, "added": 0, "promoted": 0, "removed": 0, "conf_refused": 0}
        self.faults_on = True
        self.clients_on = True
        for i in self.ids:
            self._start_node(i)
            self._at(self.rng.randrange(tick_ms), lambda i=i: self._tick(i))

    # ------------------------------------------------------------------ event loop
    def _at(self, delay: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, fn))

    def _run_until(self, t_end: int) -> None:
        while self._events and self._events[0][0] <= t_end:
            t, _, fn = heapq.heappop(self._events)
            self.now = t
            fn()
        self.now = t_end

    def run(self, duration: int = 3000, settle: int = 3000) -> SimResult:
        """Run faults and clients for ``duration`` virtual ms, then heal everything and let the
        cluster settle for ``settle`` ms; check the end state and return the result."""
        if self.faults.partition_every:
            self._at(self._exp(self.faults.partition_every), self._repartition)
        if self.faults.crash_every:
            self._at(self._exp(self.faults.crash_every), self._crash_someone)
        if self.faults.reconfigure_every:
            self._at(self._exp(self.faults.reconfigure_every), self._reconfigure)
            self._at(100, self._janitor)
        for c in self.clients:
            self._at(self.rng.randrange(50), lambda c=c: self._next_op(c))
        self._run_until(duration)
        # heal: no more faults or new client operations, restart everything, let it converge
        self.faults_on = False
        self.clients_on = False
        self.cut = set()
        for i in self.active():
            self.disks[i].disarm()
            if self.nodes[i] is None:
                self._start_node(i)
        self._run_until(duration + settle)
        self._final_checks()
        finals = {i: n.applier.sm.snapshot() for i, n in self.nodes.items() if n is not None and hasattr(n.applier.sm, "snapshot")}
        return SimResult(self.seed, self.history, self.violations, dict(self.leaders), dict(self.committed), finals, dict(self.stats))

    def _exp(self, mean: int) -> int:
        return max(1, int(self.rng.expovariate(1.0 / mean)))

    # ------------------------------------------------------------------ nodes
    def _start_node(self, i: int) -> None:
        disk = self.disks[i]
        if self.faults_on and i in self.started and self.rng.random() < self.faults.torn_crash / 4:
            disk.arm(1 + self.rng.randrange(3))  # strike again while it recovers and marks itself
        else:
            disk.disarm()
        try:
            # as the node actor decides: a node that ran before and finds nothing lost its state,
            # and the mark goes to disk with the very first segment
            lost = has_lost_state(holds_state=FileStorage.holds_state(_DATA_DIR, disk), ran_before=i in self.started)
            storage = FileStorage(_DATA_DIR, fs=disk, segment_bytes=2048,  # small: segments roll and get deleted
                                  initial_hard_state=HardState(lost_state=True) if lost else None)
            node = Replica(
                i, self.bootstrap if i in self.bootstrap else (), self.cfg, storage, self.sm_factory(), random.Random(self.rng.getrandbits(64)),
                lost_state=lost, observer=self._observe,
            )
        except SimCrash:
            self.stats["torn_crashes"] += 1
            disk.crash()
            self._at(1 + self.rng.randrange(self.faults.max_downtime), lambda: self._restart(i))
            return
        self.started.add(i)
        self.nodes[i] = node
        self._seen_commit[i] = node.core.status().commit
        self._seen_applied[i] = node.applier.applied_index  # restored from its snapshot
        self._flush(node)

    def _tick(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None and self._guard(node, node.tick):
            self._flush(node)
        self._at(self.tick_ms, lambda: self._tick(i))

    def _guard(self, node: Replica, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` on ``node``; an internal check that fails is a violation and the node
        stops (as a real node does: fail-stop). Returns whether the node is still up."""
        try:
            fn()
            return True
        except AssertionError as exc:
            self._violation(f"node {node.id} failed an internal check: {exc}")
            self._crash(node.id)
            return False

    def _flush(self, node: Replica) -> None:
        # what is sent is on its way at once: a crash later in the same ready (e.g. while a
        # leader syncs the entries it sent before writing them) does not call it back
        def send(messages: list[Message]) -> None:
            for m in messages:
                self._send(m)

        try:
            self._guard(node, lambda: node.process_ready(send))
        except SimCrash:
            self.stats["torn_crashes"] += 1
            self._crash(node.id)

    def active(self) -> list[int]:
        """Nodes not removed and stopped (up or down)."""
        return [i for i in self.ids if i not in self.retired]

    def conf(self) -> ConfState:
        """The newest configuration any live node knows of."""
        sts = [n.core.status() for n in self.nodes.values() if n is not None]
        return max(sts, key=lambda st: st.conf_index).conf if sts else ConfState.initial(self.bootstrap)

    def _leader(self) -> Replica | None:
        """The running leader of the highest term, if any."""
        leaders = [n for n in self.nodes.values() if n is not None and n.core.status().is_leader]
        return max(leaders, key=lambda n: n.core.status().term) if leaders else None

    def _crash_someone(self) -> None:
        if not self.faults_on:
            return
        up = [i for i in self.active() if self.nodes[i] is not None]
        voters = self.conf().voters
        up_voters = [v for v in voters if v in up]
        # keep a majority able to come back: crash only while more than a majority is up
        if len(up_voters) > len(voters) // 2 + 1 or (len(voters) <= 2 and up):
            leaders = [j for j in up if (n := self.nodes[j]) is not None and n.core.status().is_leader]
            i = self.rng.choice(leaders if leaders and self.rng.random() < self.faults.target_leader else up)
            if self.rng.random() < self.faults.torn_crash:
                # strike during one of the next file operations (sometimes one of the rarer ones
                # of snapshots and compaction); if none comes soon, crash anyway
                kinds = _DIRECTORY_OPS if self.rng.random() < 0.3 else None
                self.disks[i].arm(1 + self.rng.randrange(8 if kinds is None else 2), kinds)
                self._at(1 + self.rng.randrange(100), lambda: self._crash(i) if self.disks[i].armed else None)
            else:
                self._crash(i)
        self._at(self._exp(self.faults.crash_every or 1), self._crash_someone)

    def confs_in_play(self) -> list[ConfState]:
        """Every configuration a running node is using or may go back to: its newest (in effect,
        committed or not) and the one as of its commit index."""
        sts = [n.core.status() for n in self.nodes.values() if n is not None]
        confs = {c for st in sts for c in (st.conf, st.committed_conf) if c.voters}  # a joiner knows none yet
        return list(confs) or [ConfState.initial(self.bootstrap)]

    def may_lose_storage(self, i: int) -> bool:
        """Whether node ``i`` may lose its disk: a node that lost its storage never votes again,
        so every configuration in play must keep a quorum of voters that did not."""
        if i in self.lost_storage:
            return False
        for conf in self.confs_in_play():
            healthy = [v for v in conf.voters if v != i and v not in self.lost_storage]
            if len(healthy) < len(conf.voters) // 2 + 1:
                return False
        return True

    def _crash(self, i: int) -> None:
        node = self.nodes[i]
        if node is None:
            return
        may_lose = self.may_lose_storage(i)  # while node i still counts: it may hold the newest configuration
        node.fail_all("node crashed")
        self.nodes[i] = None
        self.stats["crashes"] += 1
        disk = self.disks[i]
        disk.crash()  # what was not fsynced is lost, or partly written
        if self.rng.random() < self.faults.lose_storage and may_lose:
            # the disk is gone: the node comes back empty and knows it lost its state
            disk.wipe()
            self.lost_storage.add(i)
        self._at(1 + self.rng.randrange(self.faults.max_downtime), lambda: self._restart(i))

    def _restart(self, i: int) -> None:
        if self.nodes[i] is None and i not in self.retired:
            self._start_node(i)

    # ------------------------------------------------------------------ membership
    def _reconfigure(self) -> None:
        """One membership change through the leader, as an operator (or the driver) would make it."""
        if not self.faults_on:
            return
        self._at(self._exp(self.faults.reconfigure_every or 1), self._reconfigure)
        ld = self._leader()
        if ld is None:
            return
        conf = ld.core.status().conf
        r = self.rng.random()
        lost = [v for v in conf.members if v in self.lost_storage]
        if lost:
            self._change(ld, ConfChange(ConfChangeType.REMOVE, self.rng.choice(lost)))  # replace it
        elif conf.learners and r < 0.7:
            node = self.rng.choice(conf.learners)
            try:
                ld.promote_when_caught_up(node, lambda out: self._changed("promoted", out))
            except NotLeaderError:
                pass
            self._flush(ld)
        elif conf.learners:
            self._change(ld, ConfChange(ConfChangeType.REMOVE, self.rng.choice(conf.learners)))
        elif len(conf.voters) < self.faults.max_voters and (r < 0.5 or len(conf.voters) <= 3):
            new = max(max(self.ids), conf.max_id) + 1
            self.ids.append(new)
            self.disks[new] = SimDisk(random.Random(self.rng.getrandbits(64)))
            self._start_node(new)
            self._at(self.rng.randrange(self.tick_ms), lambda: self._tick(new))
            self._change(ld, ConfChange(ConfChangeType.ADD_LEARNER, new))
        elif len(conf.voters) > 3:
            self._change(ld, ConfChange(ConfChangeType.REMOVE, self.rng.choice(conf.voters)))

    def _janitor(self) -> None:
        """Stop nodes whose removal committed although nobody heard back (the leader changed):
        as ``RaftCluster.remove_node`` does, which retries until it sees the change in place."""
        self._at(100, self._janitor)
        ld = self._leader()
        if ld is None:
            return
        st = ld.core.status()
        if st.conf_committed:
            for i in self.active():
                if i <= st.conf.max_id and i not in st.conf.members:
                    self._retire(i)

    def _change(self, ld: Replica, cc: ConfChange) -> None:
        kind = {ConfChangeType.ADD_LEARNER: "added", ConfChangeType.REMOVE: "removed"}[cc.type]

        def done(out: Outcome) -> None:
            self._changed(kind, out)
            if out.ok and cc.type == ConfChangeType.REMOVE:
                # committed: stop the node for good (a moment later: not inside its own ready)
                self._at(1, lambda: self._retire(cc.node))

        try:
            ld.change_membership(cc, done)
        except NotLeaderError:
            return
        self._flush(ld)

    def _changed(self, kind: str, out: Outcome) -> None:
        self.stats[kind if out.ok else "conf_refused"] += 1

    def _retire(self, i: int) -> None:
        if i in self.retired:
            return
        if self.nodes.get(i) is not None:
            self._crash(i)
        self.retired.add(i)

    def _repartition(self) -> None:
        if not self.faults_on:
            return
        self.stats["partitions"] += 1
        r = self.rng.random()
        active = self.active()
        links = [(a, b) for a in active for b in active if a != b]
        if r < 0.35 or not links:
            self.cut = set()
        elif r < 0.8:
            # two sides that cannot talk to each other
            ids = active[:]
            self.rng.shuffle(ids)
            side = set(ids[: 1 + self.rng.randrange(len(ids) - 1)])
            self.cut = {(a, b) for a, b in links if (a in side) != (b in side)}
        else:
            # one-way and partial failures: some links carry messages in one direction only
            self.cut = {link for link in links if self.rng.random() < 0.3}
        self._at(self._exp(self.faults.partition_every or 1), self._repartition)

    # ------------------------------------------------------------------ network
    def _delay(self) -> int:
        f = self.faults
        if self.faults_on and self.rng.random() < f.long_delay:
            return f.max_delay + self.rng.randrange(f.long_delay_max)
        return f.min_delay + self.rng.randrange(f.max_delay - f.min_delay + 1)

    def _lost(self) -> bool:
        return self.faults_on and self.rng.random() < self.faults.drop

    def _send(self, m: Message) -> None:
        self.stats["messages"] += 1
        if m.type == MsgType.SNAPSHOT:
            self._send_snapshot(m)
            return
        if (m.frm, m.to) in self.cut or self._lost():
            self.stats["dropped"] += 1
            return
        copies = 2 if self.faults_on and self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self._at(self._delay(), lambda: self._deliver(m))

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or (m.frm, m.to) in self.cut:
            return
        if self._guard(node, lambda: node.step(m)):
            self._flush(node)

    def _send_snapshot(self, m: Message) -> None:
        """The shell's part of InstallSnapshot: read the sender's latest snapshot, carry it over
        (it takes a while, and may fail), install it, and report the outcome to the sender."""
        sender = self.nodes[m.frm]
        assert sender is not None
        found = sender.snapshot_to_send()
        assert found is not None, "the core sent a snapshot its storage does not hold"
        meta, _, reader = found
        with reader:
            data = reader.read()
        self.stats["snapshots"] += 1
        m = Message(m.type, m.to, m.frm, m.term, snapshot=meta)

        def arrive() -> None:
            node = self.nodes.get(m.to)
            ok = node is not None and (m.frm, m.to) not in self.cut and not self._lost()
            if ok:
                assert node is not None
                node.install_snapshot(m, data)
                self._flush(node)
            if self.nodes[m.frm] is sender:  # the sender's shell learns how it went (unless it crashed)
                sender.report_snapshot(m.to, ok)
                self._flush(sender)

        self._at(self._delay() * 3, arrive)

    # ------------------------------------------------------------------ clients
    def _next_op(self, c: _Client) -> None:
        if not self.clients_on:
            return
        c.n_ops += 1
        c.kind, c.payload = self.workload(self.rng, c.id, c.n_ops)
        c.call = self.now
        deadline = self.now + 1500
        if c.kind == "write":
            c.op = Request(WRITE, [c.payload], c, deadline, c.session)
        else:
            mode = FOLLOWER if self.rng.random() < self.follower_reads else LINEARIZABLE
            c.op = Request(READ, [c.payload], c, deadline, mode=mode)
        self._begin(c)

    def _begin(self, c: _Client) -> None:
        """Send the operation, opening the client's session first if it has none."""
        op = c.op
        assert op is not None
        if op.kind == WRITE and not c.session.is_open:
            c.session.opening = True
            c.req = Request(OPEN, [None], _Opener(c), op.deadline, c.session)
        else:
            c.req = op
        self._attempt(c)

    def _attempt(self, c: _Client) -> None:
        req = c.req
        if req is None:
            return
        if self.now >= req.deadline:
            if req.kind == OPEN:
                req.sink.put_error(0, RaftTimeoutError("deadline"))
            else:
                expire(req)
            return
        if req.kind == WRITE and not req.seqs:
            c.session.number(req)
        c.attempt += 1
        attempt = c.attempt
        req.tries += 1
        target = c.router.pick(self.active(), None if req.kind != READ else req.mode)
        req.target = target
        if req.kind == OPEN:
            payload = OPEN_SESSION_CALL
        elif req.kind == WRITE:
            req.cid = c.session.client_id
            payload = dumps([(req.cid, req.seqs[0], c.session.ack(), 1, encode_values(req.items))])
        else:
            payload = dumps([(1, encode_values(req.items))])
        req.in_flight = True
        if not self._lost():
            self._at(self._delay(), lambda: self._request_at(c, attempt, target, req, payload))
        self._at(120, lambda: self._attempt_timed_out(c, attempt, target))

    def _attempt_timed_out(self, c: _Client, attempt: int, target: int) -> None:
        if c.req is not None and c.attempt == attempt:
            unreachable(c.req)
            c.router.lost(target, died=False)
            self._attempt(c)

    def _request_at(self, c: _Client, attempt: int, target: int, req: Request, payload: bytes) -> None:
        node = self.nodes.get(target)
        if node is None:
            return

        def reply(results: Results) -> None:
            if not self._lost():
                self._at(self._delay(), lambda: self._response(c, attempt, target, results))

        try:
            if req.kind == READ:
                node.read(req.items, req.mode, reply)
            else:
                node.propose(node.prepare_batch(payload), reply)
        except NotLeaderError as exc:
            reply(Results.failed(1, exc))
        self._flush(node)

    def _response(self, c: _Client, attempt: int, target: int, results: Results) -> None:
        req = c.req
        if req is None or c.attempt != attempt:
            return
        values, errors = results.values, results.errors
        mode = None if req.kind != READ else req.mode
        if req.kind == OPEN:
            req.in_flight = False
            if not errors:
                c.router.answered(target, mode)
                req.sink.put([0], values)
                return
            hint = getattr(errors[0], "leader_hint", 0)
            wait = c.router.redirected(target, hint, self.active(), mode)
            self._at(5 + self.rng.randrange(20) if wait else 0, lambda: self._attempt(c))
            return
        st = settle(req, values, errors)
        if st.expired:
            c.session.forget(req.cid)
        if st.again is None and st.reopen is None:
            c.router.answered(target, mode)
            return  # the sink got everything: the client moved on
        if st.reopen is not None:
            c.session.lost(st.reopen)
            c.op = st.reopen
            self._begin(c)
            return
        c.op = c.req = st.again
        wait = c.router.redirected(target, st.hint, self.active(), mode)
        self._at(5 + self.rng.randrange(20) if wait else 0, lambda: self._attempt(c))

    # ------------------------------------------------------------------ safety checks
    def _violation(self, text: str) -> None:
        self.violations.append(f"t={self.now}ms: {text}")

    def _observe(self, node: Replica, rd: Ready) -> None:
        core = node.core
        i = core.id
        if core.role == Role.LEADER and rd.soft_state_changed:
            prev = self.leaders.setdefault(core.term, i)
            if prev != i:
                self._violation(f"two leaders in term {core.term}: {prev} and {i}")
            else:
                self.stats["elections"] += 1
                for idx, e in self.committed.items():
                    if self._commit_term[idx] < core.term and idx > core.log.offset and core.log.term(idx) != e.term:
                        self._violation(f"leader {i} of term {core.term} lacks committed entry {idx} (term {e.term})")
                        break
        if rd.snapshot is not None:
            # an installed snapshot covers a committed prefix: its last entry must be the one applied there
            snap = rd.snapshot
            known = self.applied.get(snap.index)
            if known is not None and known.term != snap.term:
                self._violation(f"node {i} installed a snapshot ending at {snap.index} in term {snap.term}, "
                                f"but {known} was applied there")
            if snap.index < self._seen_applied[i]:
                self._violation(f"node {i} installed a snapshot at {snap.index} behind its applied {self._seen_applied[i]}")
            self._seen_applied[i] = snap.index
        commit = core.log.commit
        for idx in range(max(self._seen_commit[i], core.log.offset) + 1, commit + 1):
            e = core.log.slice(idx, idx + 1)[0]
            self._commit_term.setdefault(idx, core.term)
            known = self.committed.setdefault(idx, e)
            if known != e:
                self._violation(f"node {i} committed {e} at {idx}, but {known} was committed there")
        self._seen_commit[i] = max(self._seen_commit[i], commit)
        for e in rd.committed_entries:
            known = self.applied.setdefault(e.index, e)
            if known != e:
                self._violation(f"node {i} applied {e} at {e.index}, another node applied {known}")
            if e.index != self._seen_applied[i] + 1:
                self._violation(f"node {i} applied {e.index} after {self._seen_applied[i]}")
            self._seen_applied[i] = e.index

    def _final_checks(self) -> None:
        up = {i: n for i, n in self.nodes.items() if n is not None}
        logs = {i: n.core.log for i, n in up.items()}
        ids = sorted(logs)
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1 :]:
                la, lb = logs[a], logs[b]
                first = max(la.offset, lb.offset) + 1  # what both still hold (the rest is in snapshots)
                last = min(la.last_index(), lb.last_index())
                agree = next((k for k in range(last, first - 1, -1) if la.term(k) == lb.term(k)), 0)
                if agree and la.slice(first, agree + 1) != lb.slice(first, agree + 1):
                    self._violation(f"log matching: nodes {a} and {b} agree on the term at {agree} but differ before it")
        leaders = [i for i, n in up.items() if n.core.status().is_leader]
        if not leaders:
            self._violation("liveness: no leader after healing every fault")
            return
        # every committed entry was applied by some node before any snapshot could cover it
        final_commit = up[leaders[0]].core.log.commit
        present = set()
        for idx, e in self.applied.items():
            if idx <= final_commit and e.kind == EntryKind.NORMAL:
                for cid, seq, _, cmds in decode_parts(decode_call(e.command)):
                    if cmds is not None:
                        present.update((cid, s) for s in seqs_of(seq, len(cmds)))
        missing = [k for k in range(1, final_commit + 1) if k not in self.applied]
        if missing:
            self._violation(f"committed entries never applied by any node: {missing[:5]}...")
        for key in self.acked:
            if key not in present:
                self._violation(f"acknowledged write {key} is not in the final committed log")
        # nodes whose removal committed without the sim hearing of it are left behind: fine
        final_conf = up[leaders[0]].core.status().conf
        members = {i: n for i, n in up.items() if i in final_conf.members}
        for i, n in members.items():
            if (conf := n.core.status().conf) != final_conf:
                self._violation(f"node {i} has configuration {conf}, the leader {final_conf}")
        if len(members) != len(final_conf.members):
            self._violation(f"members {sorted(set(final_conf.members) - set(members))} are not running at the end")
        applied = {n.applier.applied_index for n in members.values()}
        states = {n.applier.sm.snapshot() for n in members.values() if hasattr(n.applier.sm, "snapshot")}
        if len(applied) != 1 or len(states) > 1:
            self._violation(f"liveness: replicas did not converge after healing (applied indexes {sorted(applied)})")


def simulate(seed: int, duration: int = 3000, settle: int = 3000, **kwargs: Any) -> SimResult:
    """Run one seeded simulation (see :class:`Simulator` for the keyword arguments)."""
    return Simulator(seed, **kwargs).run(duration, settle)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Replay a seeded raft_actors simulation.")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--duration", type=int, default=3000, help="virtual ms of faults and load")
    p.add_argument("--lose-storage", type=float, default=0.0)
    p.add_argument("--check", action="store_true", help="also check linearizability of the history")
    p.add_argument("--html", metavar="PATH", help="with --check: write the checker's view of the history here")
    a = p.parse_args(argv)
    res = simulate(a.seed, a.duration, num_nodes=a.nodes, num_clients=a.clients, faults=Faults(lose_storage=a.lose_storage))
    print(res.describe())
    if a.check:
        from .linearizability import check, kv_model

        lin = check(res.history, kv_model())
        print("linearizable" if lin.ok else lin.describe())
        if a.html:
            with open(a.html, "w", encoding="utf-8") as f:
                f.write(lin.to_html(res.history, f"simulation seed {a.seed}"))
            print(f"history view: {a.html}")
        return 0 if res.ok and lin.ok else 1
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
