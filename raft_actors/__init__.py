"""raft_actors: Raft consensus on Ray actors.

Quick start::

    from raft_actors import RaftCluster, KVStore

    with RaftCluster.launch(num_nodes=3, state_machine=KVStore) as cluster:
        client = cluster.client()
        client.submit(("put", "x", 1))
        print(client.query(("get", "x")))   # 1, linearizable
        print(cluster.status())

Or keep a class of your own replicated, behind a Ray-style handle (see
:mod:`raft_actors.replicated`)::

    @raft_actors.replicated
    class Counter:
        def __init__(self): self.n = 0
        def incr(self): self.n += 1; return self.n

    counter = Counter.remote()
    ray.get(counter.incr.remote())   # 1, committed by a majority, applied once
"""

from .client import AsyncRaftClient, RaftClient
from .cluster import RaftCluster
from .config import RaftConfig
from .errors import (
    ClusterUnavailableError,
    CommandError,
    CommandRejectedError,
    LeadershipLostError,
    MembershipChangeError,
    NodeNotFoundError,
    NodeStartupError,
    NotLeaderError,
    PlacementError,
    RaftError,
    RaftTimeoutError,
    SessionExpiredError,
    UnknownOutcomeError,
)
from .replicated import RaftRef, ReplicatedHandle, get, get_replicated, read, replicated, wait
from .state_machines import Counter, KVStore, StateMachine

__version__ = "0.1.0"

__all__ = [
    "AsyncRaftClient", "ClusterUnavailableError", "CommandError", "CommandRejectedError", "Counter",
    "KVStore", "LeadershipLostError", "MembershipChangeError", "NodeNotFoundError", "NodeStartupError", "NotLeaderError", "PlacementError", "RaftClient", "RaftCluster",
    "RaftConfig", "RaftError", "RaftRef", "RaftTimeoutError", "ReplicatedHandle", "SessionExpiredError", "StateMachine",
    "UnknownOutcomeError", "__version__", "get", "get_replicated", "read", "replicated", "wait",
]
