"""A replica's boot: a new cluster's first election does not wait out a whole election
timeout (no node has a leader to hear from); a node restarted with state does."""

from __future__ import annotations

import random
import statistics

from raft_actors.config import RaftConfig
from raft_actors.core.messages import HardState, MsgType
from raft_actors.replica import Replica
from raft_actors.state_machines import KVStore
from raft_actors.storage import MemoryStorage

CONFIG = RaftConfig(election_ticks=10)


def first_campaign(storage: MemoryStorage, seed: int) -> int:
    """Ticks until a replica of a 3-voter cluster, booted from ``storage``, asks for votes."""
    r = Replica(1, (1, 2, 3), CONFIG, storage, KVStore(), random.Random(seed))
    sent: list = []
    for tick in range(1, 4 * CONFIG.election_ticks):
        r.tick()
        r.process_ready(sent.extend)
        if any(m.type in (MsgType.PRE_VOTE, MsgType.VOTE) for m in sent):
            return tick
    raise AssertionError("no election within four election timeouts")


def test_a_new_clusters_first_election_comes_within_one_election_timeout() -> None:
    ticks = [first_campaign(MemoryStorage(), seed) for seed in range(40)]
    assert max(ticks) <= CONFIG.election_ticks  # 1 to jitter + 1 ticks, not election_ticks more
    assert statistics.median(ticks) < CONFIG.election_ticks - 2  # still spread out, not all at once
    assert len(set(ticks)) > 3


def test_a_restarted_node_waits_out_its_election_timeout() -> None:
    for seed in range(40):
        storage = MemoryStorage()
        storage.set_hard_state(HardState(term=3, vote=2))  # it ran before: there may be a leader
        assert first_campaign(storage, seed) >= CONFIG.election_ticks
