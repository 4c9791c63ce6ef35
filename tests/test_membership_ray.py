"""Membership changes on a real (local) Ray: a learner added under load catches up by snapshot
and is promoted, the leader is removed, and changes that cannot complete are aborted cleanly."""

from __future__ import annotations

import threading
import time

import pytest
import ray

from raft_actors import MembershipChangeError, RaftConfig, RaftTimeoutError
from raft_actors.state_machines import get, put

from .conftest import wait_until


def _writer(cluster, stop: threading.Event, acked: list[int], errors: list[BaseException]) -> None:
    client = cluster.client()
    i = 0
    while not stop.is_set():
        try:
            client.submit(put(f"w{i}", i))
            acked.append(i)
        except Exception as exc:  # noqa: BLE001 - a write may fail around a leader change
            errors.append(exc)
        i += 1


def test_add_learner_under_load_catch_up_by_snapshot_promote_then_remove_the_leader(cluster_factory) -> None:
    cfg = RaftConfig(snapshot_commands=1000, keep_bytes=5000)
    cluster = cluster_factory(num_nodes=3, config=cfg)
    client = cluster.client()
    for k in range(30):
        futures = [client.submit_async(put(f"k{k}-{j}", j)) for j in range(100)]
        for f in futures:
            f.result()
    wait_until(lambda: (cluster.status()["snapshot_index"] > 0).all(), what="every node to snapshot")
    stop, acked, errors = threading.Event(), [], []
    writer = threading.Thread(target=_writer, args=(cluster, stop, acked, errors), daemon=True)
    writer.start()
    try:
        new = cluster.add_node()  # learner, catch-up rounds, promotion
        conf = cluster.configuration()
        assert new == 4 and conf.voters == (1, 2, 3, 4) and conf.learners == ()
        st = cluster.status()
        assert st.loc[new, "snapshots_received"] >= 1  # the log it needed was compacted away
        old = cluster.leader()
        cluster.remove_node(old)
        assert old not in cluster.node_ids
        assert cluster.leader() != old
        assert old not in cluster.configuration().voters
        after_removal = len(acked)
        wait_until(lambda: len(acked) > after_removal + 20, what="writes to go on under the new leader")
    finally:
        stop.set()
        writer.join(30)
    n = len(acked)
    assert n > 0
    events = cluster.membership_log()
    assert list(events["event"][:2]) == ["actor started", "learner added"]
    assert "caught up" in set(events["event"]) and "promoted to voter" in set(events["event"])
    assert events[events["event"] == "caught up"]["detail"].str.contains("round").all()
    assert "removed from the configuration" in set(events["event"])
    # every acknowledged write is there, read linearizably through the new configuration
    reader = cluster.client()
    for i in acked[:: max(1, n // 50)] + [acked[-1]]:
        assert reader.query(get(f"w{i}")) == i
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="the 3 members to converge")
    assert sorted(cluster.status().index) == sorted({1, 2, 3, 4} - {old})


def test_a_learner_that_cannot_catch_up_is_not_promoted_and_a_timed_out_add_is_undone(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, config=RaftConfig(catchup_round_ticks=30))
    client = cluster.client()
    client.submit(put("a", 1))
    new = cluster.add_node(promote=False)
    assert cluster.configuration().learners == (new,)
    assert cluster.status().loc[new, "role"] == "learner"
    cluster.partition([new])
    client.submit(put("b", 2))  # the learner is now behind, and cut off
    with pytest.raises(MembershipChangeError, match="took more than 30 ticks"):
        cluster.promote(new, timeout=30)
    assert cluster.configuration().learners == (new,)  # still a learner: nothing half-done
    cluster.heal()
    cluster.remove_node(new)
    assert cluster.configuration().members == (1, 2, 3) and new not in cluster.node_ids
    # an addition that runs out of time is undone: not in the configuration, no actor left
    with pytest.raises(RaftTimeoutError):
        cluster.add_node(timeout=0.05)
    wait_until(lambda: cluster.configuration().members == (1, 2, 3), what="the aborted learner to be removed")
    assert cluster.node_ids == [1, 2, 3]
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert not [n for n in names if n.startswith(f"{cluster.name}-node-") and int(n.rsplit("-", 1)[1]) > 3]
    # ids are never reused, and a change that does not apply is refused with a clear error
    with pytest.raises(MembershipChangeError, match="not a member"):
        cluster._membership("remove", 42, time.monotonic() + 10)
    assert client.submit(put("c", 3)) is None and client.query(get("c")) == 3


def test_replace_a_dead_node_in_one_call(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    for i in range(20):
        client.submit(put(f"k{i}", i))
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    cluster.kill(victim)
    new = cluster.replace_node(victim)
    conf = cluster.configuration()
    assert victim not in conf.members and new in conf.voters and len(conf.voters) == 3
    wait_until(lambda: cluster.status().loc[new, "applied_index"] > 0, what="the new node to apply")
    client.submit(put("after", 1))
    assert client.query(get("k19")) == 19 and client.query(get("after")) == 1


def test_the_configuration_survives_restarts(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("a", 1))
    new = cluster.add_node()
    cluster.remove_node(1 if cluster.leader() != 1 else 2)
    want = cluster.configuration()
    # the joiner (started with no configuration) and an original node, restarted from their logs
    for node in (new, want.voters[0]):
        cluster.restart(node)
        wait_until(lambda node=node: cluster.status().loc[node, "voters"] == want.voters, what=f"node {node}'s config")
    cluster.crash(new)  # restarted by Ray, with the arguments it was created with
    wait_until(lambda: cluster.status().loc[new, "role"] in ("follower", "leader"), what="the joiner back as a voter")
    assert cluster.configuration() == want
    client.submit(put("b", 2))
    assert client.query(get("a")) == 1 and client.query(get("b")) == 2


def _leader_that_commits_nothing(cluster_factory):
    """A 3-node cluster whose followers still hear the leader but whose answers are all lost:
    the leader (check-quorum off, so it stays) appends and commits nothing more."""
    cluster = cluster_factory(num_nodes=3, config=RaftConfig(check_quorum=False, election_ticks=30))
    cluster.client().submit(put("a", 1))
    leader = cluster.leader()
    for i in cluster.node_ids:
        if i != leader:
            cluster.inject(i, drop_rate=1.0)
    return cluster, leader


def test_a_membership_change_in_the_log_but_not_committed_is_not_taken_as_done(cluster_factory) -> None:
    """The driver once accepted a change as done when the leader's newest configuration showed
    it, committed or not; remove_node would then stop a node and delete its data although a
    later leader could roll the removal back."""
    cluster, leader = _leader_that_commits_nothing(cluster_factory)
    victim = next(i for i in cluster.node_ids if i != leader)
    with pytest.raises(RaftTimeoutError):
        cluster._membership("remove", victim, time.monotonic() + 3)
    st = cluster.status()
    assert victim not in st.loc[leader, "voters"]  # in effect on the leader (it is in its log)...
    assert victim in st.loc[leader, "committed_voters"]  # ... but not committed
    assert victim in cluster.configuration().voters
    assert victim not in cluster.configuration(committed=False).voters
    cluster.heal()
    wait_until(lambda: victim not in cluster.configuration().voters, what="the removal to commit once healed")


def test_writes_in_the_log_of_a_node_being_stopped_may_have_been_applied(cluster_factory) -> None:
    """A node stopped by the driver (remove_node) once failed the writes in its log with a plain
    NotLeaderError, which tells a client the write was never proposed: after its session
    expired, the client would send it again in a new one and it would be applied twice."""
    from raft_actors import LeadershipLostError
    from raft_actors.envelope import outcomes_of, request_call

    cluster, leader = _leader_that_commits_nothing(cluster_factory)
    h = cluster.handle(leader)
    before = cluster.status().loc[leader, "log_length"]
    # a write of some session (it would be refused at apply time: it never gets that far)
    ref = h.submit.remote(request_call(1, 1, 1, put("x", 1)))
    wait_until(lambda: cluster.status().loc[leader, "log_length"] > before, what="the write in the leader's log")
    ray.get(h.destroy_data.remote(), timeout=10)
    (out,) = outcomes_of(ray.get(ref, timeout=10))
    assert not out.ok and isinstance(out.value, LeadershipLostError), out
