"""Integration tests on a real (local) Ray: node actors, the driver and the client."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray

from raft_actors import (
    ClusterUnavailableError,
    CommandError,
    CommandRejectedError,
    Counter,
    KVStore,
    NodeNotFoundError,
    RaftConfig,
)
from raft_actors.envelope import outcomes_of, request_call
from raft_actors.linearizability import Operation, check, kv_model
from raft_actors.state_machines import cas, get, put

from .conftest import cluster_with_keys, open_session, read_call, submit_call, wait_until
from .waiting import restarted


def roles(cluster) -> dict[int, str]:
    return cluster.status()["role"].to_dict()


def test_leader_is_elected_at_start(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    st = cluster.status()
    assert sorted(st["role"]) == ["follower", "follower", "leader"]
    assert st["term"].nunique() == 1
    leader = cluster.leader()
    assert set(st["leader"]) == {leader}


def test_write_then_read_at_every_consistency(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    assert client.submit(put("x", 1)) is None
    assert client.query(get("x")) == 1
    assert client.query(get("x"), consistency="follower") == 1
    # a stale read may lag, but the value converges on every node
    wait_until(lambda: all(client.query(get("x"), consistency="stale") == 1 for _ in range(6)), what="stale reads")
    assert client.submit(cas("x", 1, 2)) is True
    assert client.submit(cas("x", 1, 3)) is False
    assert client.query(get("x")) == 2
    with pytest.raises(ValueError):
        client.query(get("x"), consistency="eventual")
    st = cluster.status()
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="replicas to converge")
    assert st["commit_index"].max() >= 4


def test_new_leader_after_leader_killed_and_no_acknowledged_write_lost(cluster_factory) -> None:
    cluster, client = cluster_with_keys(cluster_factory, 20)
    old = cluster.leader()
    cluster.kill(old)
    client.submit(put("after", "kill"))  # retried until a new leader takes it
    new = cluster.leader()
    assert new != old
    assert roles(cluster)[old] == "dead"
    for i in range(20):
        assert client.query(get(f"k{i}")) == i
    assert client.query(get("after")) == "kill"


def test_new_leader_after_leader_partitioned_away(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("a", 1))
    old = cluster.leader()
    cluster.partition([old])
    others = [i for i in cluster.node_ids if i != old]
    new = wait_until(
        lambda: next((i for i, r in roles(cluster).items() if r == "leader" and i != old), None),
        what="a leader in the majority",
    )
    assert new in others
    client.submit(put("b", 2))
    # check-quorum: the isolated old leader steps down on its own
    wait_until(lambda: roles(cluster)[old] != "leader", what="the isolated leader to step down")
    cluster.heal()
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="the old leader to catch up")
    assert client.query(get("b")) == 2


def test_minority_partition_commits_nothing_and_its_entries_are_replaced(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=5, config=RaftConfig(check_quorum=False))
    client = cluster.client()
    client.submit(put("base", 0))
    old = cluster.leader()
    minority = [old, next(i for i in cluster.node_ids if i != old)]
    cluster.partition(minority)
    before = cluster.status()
    commit_before = int(before.loc[old, "commit_index"])
    # Propose straight to the old leader: it appends, but cannot reach a majority.
    ref = cluster.handle(old).submit.remote(request_call(999, 1, 1, put("lost", "x")))
    wait_until(lambda: cluster.status().loc[old, "log_length"] > before.loc[old, "log_length"], what="the append")
    majority = [i for i in cluster.node_ids if i not in minority]
    wait_until(lambda: any(roles(cluster)[i] == "leader" for i in majority), what="a majority leader")
    client.submit(put("majority", 1))
    time.sleep(1.0)
    st = cluster.status()
    assert int(st.loc[minority[0], "commit_index"]) == commit_before
    assert int(st.loc[minority[1], "commit_index"]) <= commit_before
    cluster.heal()
    # The old leader learns of the newer term, steps down, and its uncommitted entry is replaced.
    outcome = outcomes_of(ray.get(ref, timeout=30))[0]
    assert not outcome.ok
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="convergence after healing")
    assert client.query(get("lost")) is None
    assert client.query(get("majority")) == 1
    for node in cluster.node_ids:  # every replica, asked directly
        assert read_call(cluster.handle(node), "stale", get("lost"))[0] == (True, None)


def run_clients(cluster, workers: int, ops: int, make_op) -> list[Operation]:
    """Run ``workers`` client threads of ``ops`` operations each; return the timed history.

    ``make_op(w, n)`` gives ``(command, None)`` for a write or ``(query, consistency)`` for a read.
    """
    history: list[Operation] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def worker(w: int) -> None:
        client = cluster.client()
        for n in range(ops):
            op, consistency = make_op(w, n)
            call = time.monotonic() - t0
            out = client.submit(op) if consistency is None else client.query(op, consistency=consistency)
            with lock:
                history.append(Operation(w, op, call, time.monotonic() - t0, out))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return history


def test_concurrent_clients_are_linearizable(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)

    def make_op(w: int, n: int):
        key = f"k{n % 3}"
        if n % 3 == 2:
            return get(key), "follower" if w % 2 else "linearizable"
        return put(key, f"{w}.{n}"), None

    history = run_clients(cluster, workers=6, ops=25, make_op=make_op)
    assert len(history) == 150
    result = check(history, kv_model())
    assert result.ok, result.describe()


def test_many_async_calls_share_batches_and_all_apply(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Counter)

    async def run() -> list[int]:
        client = cluster.async_client()
        return await asyncio.gather(*(client.submit(("add", 1)) for _ in range(500)))

    results = asyncio.run(run())
    assert sorted(results) == list(range(1, 501))
    assert cluster.client().query(("get",)) == 500


def test_user_defined_state_machine_and_errors_in_apply(cluster_factory) -> None:
    class Ledger:
        """Defined inside the test: cloudpickle carries it to the actors by value."""

        def __init__(self) -> None:
            self.balance = 0

        def apply(self, command):
            kind, amount = command
            if kind == "withdraw" and amount > self.balance:
                raise ValueError(f"insufficient funds: {self.balance} < {amount}")
            self.balance += amount if kind == "deposit" else -amount
            return self.balance

        def query(self, _q):
            return self.balance

        def snapshot(self) -> bytes:
            return str(self.balance).encode()

        def restore(self, data: bytes) -> None:
            self.balance = int(data)

    cluster = cluster_factory(num_nodes=3, state_machine=Ledger)
    client = cluster.client()
    assert client.submit(("deposit", 10)) == 10
    with pytest.raises(CommandError) as err:
        client.submit(("withdraw", 50))
    assert err.value.exc_type == "ValueError" and "insufficient" in err.value.message
    assert isinstance(err.value.cause, ValueError)
    # the error is a committed result: every node applied it and kept running
    assert client.submit(("withdraw", 4)) == 6
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="convergence")
    assert set(cluster.status()["role"]) == {"leader", "follower"}
    for _ in range(3):
        assert client.query(None, consistency="stale") == 6


def test_bad_input_gets_clear_errors_and_the_cluster_keeps_serving(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("warm", 0))  # the client's session is open
    wait_until(lambda: cluster.status()["log_length"].nunique() == 1, what="replication")
    log_before = int(cluster.status()["log_length"].max())
    with pytest.raises(CommandRejectedError, match="unknown KVStore command"):
        client.submit(("frobnicate", "x"))
    with pytest.raises(CommandRejectedError, match="takes 2 argument"):
        client.submit(("put", "x"))
    with pytest.raises(CommandRejectedError, match="cannot be serialized"):
        client.submit(put("x", threading.Lock()))
    with pytest.raises(CommandError, match="unknown KVStore query"):
        client.query(("scan",))
    assert int(cluster.status()["log_length"].max()) == log_before  # nothing entered the log
    with pytest.raises(NodeNotFoundError):
        cluster.kill(42)
    with pytest.raises(NodeNotFoundError):
        cluster.partition([7])
    assert client.submit(put("still", "serving")) is None
    assert client.query(get("still")) == "serving"
    async_client = cluster.async_client()
    cluster.shutdown()
    with pytest.raises(ClusterUnavailableError):
        asyncio.run(async_client.submit(put("x", 1)))
    with pytest.raises(ClusterUnavailableError):
        cluster.client()
    with pytest.raises(ClusterUnavailableError):
        cluster.status()


def test_calls_to_a_cluster_whose_nodes_all_died_fail_fast(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.async_client()
    for i in cluster.node_ids:
        cluster.kill(i)
    start = time.monotonic()
    with pytest.raises(ClusterUnavailableError):
        asyncio.run(client.submit(put("x", 1), timeout=20))
    assert time.monotonic() - start < 15


def test_leadership_transfer(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    old = cluster.leader()
    target = next(i for i in cluster.node_ids if i != old)
    cluster.transfer_leadership(target)
    assert cluster.leader() == target
    assert client.submit(put("x", 2)) is None
    assert client.query(get("x")) == 2


def test_killed_node_restarts_empty_as_a_non_voter_and_never_counts(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, storage="memory")
    client = cluster.client()
    for i in range(10):
        client.submit(put(f"k{i}", i))
    leader = cluster.leader()
    follower = next(i for i in cluster.node_ids if i != leader)
    cluster.kill(follower)
    client.submit(put("while", "down"))
    cluster.restart(follower)
    assert roles(cluster)[follower] == "non-voter"  # it forgot its votes and acknowledgements
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="the restarted node to catch up")
    assert client.query(get("while"), consistency="follower") == "down"
    # Without the leader, one healthy voter and one non-voter cannot elect anybody: safe, unavailable.
    cluster.kill(leader)
    time.sleep(3 * cluster.config.election_ticks * cluster.config.tick_interval)
    assert "leader" not in set(roles(cluster).values())


def test_a_node_that_does_not_answer_is_not_taken_for_restarted() -> None:
    """Regression: the restart tests compared a status pid of ``<NA>`` (the node restarting,
    not answering) with ``in (pid, None)``, which raises instead of waiting on."""
    import pandas as pd

    status = pd.DataFrame({"node": [1, 2], "pid": [100, None]}).astype({"pid": "Int64"}).set_index("node")
    assert not restarted(status, 2, 200)  # no answer yet: keep waiting
    assert not restarted(status, 1, 100) and restarted(status, 1, 99)


def test_crashed_node_is_restarted_by_ray(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    leader = cluster.leader()
    pid = int(cluster.status().loc[leader, "pid"])
    cluster.crash(leader)
    client.submit(put("x", 2))
    wait_until(lambda: restarted(cluster.status(), leader, pid), what="ray to restart the actor")
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="convergence")
    assert client.query(get("x")) == 2


def test_exactly_once_for_a_retried_request(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Counter)
    leader = cluster.handle(cluster.leader())
    session = open_session(leader)
    first = submit_call(leader, session, 1, ("add", 5))
    again = submit_call(leader, session, 1, ("add", 5))  # the same session and sequence number
    assert first[0].ok and again[0].ok and first[0].value == again[0].value == 5
    assert cluster.client().query(("get",)) == 5
    st = cluster.status()
    assert st["log_length"].max() >= 4  # the session, both copies: in the log, applied once


def test_single_node_cluster(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=1, state_machine=KVStore)
    client = cluster.client()
    client.submit(put("solo", True))
    assert client.query(get("solo")) is True


def test_lossy_duplicating_reordering_network_stays_linearizable(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    for i in cluster.node_ids:
        cluster.inject(i, drop_rate=0.15, delay=0.02, duplicate_rate=0.2)

    def make_op(w: int, n: int):
        key = f"k{n % 2}"
        if n % 3 == 2:
            return get(key), "follower" if w % 2 else "linearizable"
        return (cas(key, f"{w}.{n - 1}", f"{w}.{n}") if n % 3 == 1 else put(key, f"{w}.{n}")), None

    history = run_clients(cluster, workers=4, ops=15, make_op=make_op)
    result = check(history, kv_model())
    assert result.ok, result.describe()
    cluster.heal()
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="convergence")


def test_connect_finds_a_running_cluster_by_name(cluster_factory) -> None:
    from raft_actors import RaftCluster
    from raft_actors.errors import ClusterUnavailableError as Unavailable

    cluster, client = cluster_with_keys(cluster_factory, 5, name=f"connect-{time.monotonic_ns()}")
    other = RaftCluster.connect(cluster.name, namespace=cluster.namespace)
    assert other.node_ids == cluster.node_ids
    assert other.data_dir == cluster.data_dir and other.config == cluster.config
    assert other.leader() == cluster.leader()
    c2 = other.client()
    assert c2.query(get("k4")) == 4
    c2.submit(put("from-other", 1))
    assert client.query(get("from-other")) == 1
    with pytest.raises(ValueError, match="connect"):
        RaftCluster.launch(num_nodes=1, name=cluster.name, namespace=cluster.namespace)
    with pytest.raises(Unavailable):
        RaftCluster.connect("no-such-cluster", namespace=cluster.namespace, timeout=1)


def test_a_name_is_free_again_once_shutdown_returns(cluster_factory, monkeypatch, tmp_path) -> None:
    """Regression: shutdown returned while Ray still held the node actors' names (``ray.kill``
    only asks for the kill), and launching again under the same name at once was refused as a
    running cluster (the durability suite's relaunch, on a busy machine). Here each kill takes
    effect 0.5 s after it is asked for."""
    real_kill = ray.kill
    monkeypatch.setattr(ray, "kill", lambda actor, **kw: threading.Timer(0.5, real_kill, (actor,), kw).start())
    name = f"free-{time.monotonic_ns()}"
    for i in range(2):
        cluster = cluster_factory(num_nodes=3, name=name, data_dir=tmp_path / "data")
        client = cluster.client()
        assert client.query(get("k")) == (i or None)  # the second launch recovers the first's data
        client.submit(put("k", 1))
        cluster.shutdown()  # data kept
        assert cluster._existing_node_names() == []
