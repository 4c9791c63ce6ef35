"""A node that lost its storage rejoins as a non-voter and can never break safety.

Scenarios from an adversarial review of an earlier design that let such a node become a voter
again after "catching up": each one broke safety then and must not now.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from raft_actors.core import CoreConfig, Entry, HardState, Message, MsgType, RaftCore, Role
from raft_actors.core.raft import LOST_STATE
from tests.core_helpers import drain

Pred = Callable[[Message], bool]


class Net:
    """A hand-driven network of cores with durable in-memory storage per node."""

    def __init__(self, n: int, **cfg: object) -> None:
        self.cfg = CoreConfig(**cfg)  # type: ignore[arg-type]
        self.ids = list(range(1, n + 1))
        self.cores = {i: RaftCore(i, self.ids, self.cfg, random.Random(i)) for i in self.ids}
        self.disk: dict[int, tuple[HardState, list[Entry]]] = {i: (HardState(), []) for i in self.ids}
        self.queue: list[Message] = []
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.read_states: dict[int, list] = {i: [] for i in self.ids}

    def flush(self, i: int) -> None:
        core = self.cores[i]
        while core.has_ready():
            rd = drain(core)
            hs, ents = self.disk[i]
            if rd.entries:
                ents = ents[: rd.entries[0].index - 1] + rd.entries
            self.disk[i] = (rd.hard_state or hs, ents)
            self.queue += rd.messages
            self.applied[i] += rd.committed_entries
            self.read_states[i] += rd.read_states

    def run(self, drop: Pred = lambda m: False, rounds: int = 50) -> None:
        for _ in range(rounds):
            for i in self.ids:
                self.flush(i)
            batch, self.queue = self.queue, []
            if not batch:
                return
            for m in batch:
                if not drop(m) and m.to in self.cores:
                    self.cores[m.to].step(m)
                    self.flush(m.to)

    def elect(self, i: int, drop: Pred = lambda m: False) -> None:
        self.cores[i].step(Message(MsgType.TIMEOUT_NOW, i, i, self.cores[i].term))
        self.run(drop)
        assert self.cores[i].role == Role.LEADER

    def lose_storage(self, i: int) -> None:
        self.disk[i] = (HardState(lost_state=True), [])
        self.applied[i] = []
        self.cores[i] = RaftCore(i, self.ids, self.cfg, random.Random(100 + i), *self.disk[i])
        self.queue = [m for m in self.queue if m.to != i and m.frm != i]

    def tick(self, i: int, n: int = 1, drop: Pred = lambda m: False) -> None:
        for _ in range(n):
            self.cores[i].tick()
            self.run(drop)


def lost_follower_after(*commands: bytes) -> tuple[Net, dict[int, RaftCore]]:
    """A 3-node net where leader 1 committed ``commands`` and then node 2 lost its storage."""
    net = Net(3)
    net.elect(1)
    net.cores[1].propose(list(commands))
    net.run()
    net.lose_storage(2)
    return net, net.cores


def cut(*nodes: int) -> Pred:
    return lambda m: m.to in nodes or m.frm in nodes


def test_deposed_leader_cannot_commit_or_read_with_a_lost_nodes_acks() -> None:
    net = Net(3)
    c = net.cores
    net.elect(1)
    net.elect(3, drop=cut(1))  # node 1 is cut off; 3 wins term 2 with 2's vote
    c[3].propose([b"X"])
    net.run(drop=cut(1))
    assert c[3].log.commit == 3
    c[1].propose([b"Y"])  # the deposed leader (term 1) still thinks it leads
    net.lose_storage(2)
    commit_before = c[1].log.commit
    c[1].read_index("R")
    for _ in range(3):
        net.tick(1, drop=cut(3))  # 1 and 2 can talk; 3 is cut off
    assert c[2].log.last_index() >= 2  # node 2 did take node 1's entries...
    assert c[1].log.commit == commit_before  # ...but its acks are not counted
    assert net.read_states[1] == []  # nor does it confirm a stale leader's read
    net.tick(1, n=2 * net.cfg.election_ticks, drop=cut(3))
    assert c[1].role != Role.LEADER  # check-quorum: a lost node is no quorum either
    assert all(e.command != b"Y" for i in net.ids for e in net.applied[i])


def test_lost_node_never_votes_nor_campaigns() -> None:
    net, c = lost_follower_after(b"A")
    net.run()
    c[1].propose([b"B"])
    net.run()
    net.tick(1)  # the leader repairs the wiped log from the answer to its next heartbeat
    assert c[2].log.last_index() == c[1].log.last_index()  # it follows the log
    assert c[2].hard_state.lost_state
    # node 1 dies; once its lease has run out, node 3 (up to date) asks node 2 for a vote
    del net.cores[1]
    net.ids = [2, 3]
    for _ in range(net.cfg.election_ticks):
        c[2].tick()
        net.flush(2)
    resp = []
    c[2].step(Message(MsgType.VOTE, 2, 3, c[2].term + 5, c[3].log.last_term(), c[3].log.last_index()))
    while c[2].has_ready():
        resp += drain(c[2]).messages
    assert [m.reject for m in resp if m.type == MsgType.VOTE_RESP] == [True]
    for _ in range(10 * net.cfg.election_ticks):
        c[2].tick()
        net.flush(2)
    assert c[2].role == Role.FOLLOWER
    assert not any(m.type in (MsgType.VOTE, MsgType.PRE_VOTE) and m.frm == 2 for m in net.queue)


def test_committed_entry_survives_losing_the_node_that_helped_commit_it() -> None:
    """A and X are committed on {1, 2}; 2 loses its disk; 1 dies. 3 lacks them and must not win."""
    net = Net(3, max_entries_per_message=1)
    c = net.cores
    net.elect(1)
    c[1].propose([b"A"])
    net.run(drop=cut(3))
    c[1].propose([b"X"])
    net.run(drop=cut(3))
    assert c[1].log.commit == 3
    net.lose_storage(2)
    net.tick(1, drop=cut(3))  # node 2 gets (part of) the log back from 1
    del net.cores[1]  # node 1 crashes
    net.ids = [2, 3]
    for _ in range(20 * net.cfg.election_ticks):
        for i in (2, 3):
            c[i].tick()
        net.run()
    assert all(c[i].role != Role.LEADER for i in (2, 3))  # unavailable, but nothing is lost
    for i in (2, 3):
        assert [e.command for e in net.applied[i] if e.command] in ([], [b"A"], [b"A", b"X"])


def test_leader_ignores_acks_sent_before_the_storage_was_lost() -> None:
    net = Net(3)
    c = net.cores
    net.elect(1)
    c[1].propose([b"A", b"B"])
    net.run()
    stale = Message(MsgType.APPEND_RESP, 1, 2, c[1].term, index=c[1].log.last_index())
    net.lose_storage(2)
    net.tick(1)  # node 2's flagged answers tell the leader it lost its log
    pr = c[1].progress[2]
    assert pr.lost
    match = pr.match
    c[1].step(stale)  # a late ack from before the loss
    assert c[1].progress[2].match == match
    net.run()
    net.tick(1, n=3)
    assert c[2].log.last_index() == c[1].log.last_index()
    assert [e.command for e in net.applied[2]] == [e.command for e in net.applied[1]]


def test_lost_node_commits_only_what_it_verified_with_the_leader() -> None:
    _, c = lost_follower_after(b"A")
    # a heartbeat from a leader that does not yet know: commit must not exceed the verified log
    c[2].step(Message(MsgType.HEARTBEAT, 2, 1, c[1].term, commit=c[1].log.commit))
    assert c[2].log.commit == 0
    replies = []
    while c[2].has_ready():
        replies += drain(c[2]).messages
    assert [(m.type, m.context) for m in replies] == [(MsgType.HEARTBEAT_RESP, LOST_STATE)]


# ---------------------------------------------------------------------------- the rule's one home


def test_who_has_lost_state() -> None:
    """The one decision: an empty disk means lost state for a node that ran before, or whose
    cluster ran before; a node that holds anything (the mark of an earlier loss included)
    recovers from it."""
    from raft_actors.lost_state import has_lost_state

    assert not has_lost_state(holds_state=False, ran_before=False)  # a new node of a new cluster
    assert not has_lost_state(holds_state=False, ran_before=False, others_hold_state=False)
    assert has_lost_state(holds_state=False, ran_before=True)  # restarted (by Ray or the driver), disk gone
    assert has_lost_state(holds_state=False, ran_before=False, others_hold_state=True)  # relaunched over data
    for ran_before in (False, True):
        for others in (False, True):
            assert not has_lost_state(holds_state=True, ran_before=ran_before, others_hold_state=others)


def test_mark_lost_state_is_one_way_durable_and_steps_a_leader_down() -> None:
    net = Net(3)
    c = net.cores
    net.elect(1)
    assert not c[1].status().lost_state and c[1].status().is_leader
    c[1].mark_lost_state()
    st = c[1].status()
    assert st.lost_state and not st.is_leader and c[1].hard_state.lost_state
    rd = drain(c[1])
    assert rd.hard_state is not None and rd.hard_state.lost_state  # the shell persists it
    c[1].mark_lost_state()  # idempotent
    assert not drain(c[1]).hard_state
    # restored from that hard state, it is still marked: the mark is never taken back
    again = RaftCore(1, net.ids, net.cfg, random.Random(0), rd.hard_state)
    assert again.lost_state and again.status().lost_state


def test_a_replica_told_it_lost_its_state_persists_the_mark_before_anything_else() -> None:
    from raft_actors.config import RaftConfig
    from raft_actors.replica import Replica
    from raft_actors.state_machines import KVStore
    from raft_actors.storage import MemoryStorage

    storage = MemoryStorage()
    r = Replica(2, (1, 2, 3), RaftConfig(), storage, KVStore(), random.Random(0), lost_state=True)
    assert storage.load().hard_state.lost_state  # durable at once, before any ready
    assert r.status()["role"] == "non-voter"
    again = Replica(2, (1, 2, 3), RaftConfig(), storage, KVStore(), random.Random(0))
    assert again.status()["role"] == "non-voter"  # from the stored mark alone
