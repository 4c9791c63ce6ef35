"""Raft metrics reach Ray's metrics system: read back from Ray's own Prometheus export (the
endpoint Ray's metrics agent serves for this Ray node), not from a mock."""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict

import pytest
import ray

from raft_actors import RaftConfig, UnknownOutcomeError
from raft_actors.state_machines import get, put

from .conftest import wait_until

_LINE = re.compile(r'^(\w+)\{(.*)\}\s+([-+0-9.eE]+|NaN)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample Ray's metrics agent on this node serves now, by metric name."""
    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)].append((dict(_LABEL.findall(m.group(2))), float(m.group(3))))
    return out


def total(samples: dict, name: str, cluster: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if lab.get("cluster") == cluster
               and all(lab.get(k) == want for k, want in labels.items()))


def by_node(samples: dict, name: str, cluster: str, **labels: str) -> dict[str, float]:
    return {lab["node"]: v for lab, v in samples.get(name, []) if lab.get("cluster") == cluster
            and all(lab.get(k) == want for k, want in labels.items())}


@pytest.fixture(scope="module")
def metrics_agent(ray_session: None) -> None:
    try:
        scrape()
    except OSError as exc:  # pragma: no cover - the test extra installs ray[default]
        pytest.fail(f"Ray's metrics agent does not answer (is ray[default] installed?): {exc}")


def test_node_and_client_metrics_are_exported_to_rays_prometheus_endpoint(metrics_agent, cluster_factory) -> None:
    name = "metrics-test"
    cluster = cluster_factory(num_nodes=3, name=name,
                              config=RaftConfig(metrics_interval=0.2, snapshot_commands=100, keep_bytes=0))
    client = cluster.client()
    client.submit_many([put(f"k{i}", i) for i in range(300)])
    for i in range(20):
        client.submit(put("one", i))
    for _ in range(10):
        assert client.query(get("one")) == 19
    client.query(get("one"), consistency="stale")
    with pytest.raises(ValueError):
        client.submit(("no such command",))  # refused by the state machine's validate

    # a write whose deadline passes while the leader is frozen: its outcome is unknown
    leader = cluster.leader()
    cluster.pause(leader)
    try:
        with pytest.raises(UnknownOutcomeError):
            client.submit(put("frozen", 1), timeout=0.3)
    finally:
        cluster.resume(leader)
    wait_until(lambda: client.query(get("one")) == 19, what="the cluster to serve again")
    # the leader hands over: the client's next write goes to the old one, is refused, and is sent again
    old = cluster.leader()
    cluster.transfer_leadership(next(i for i in cluster.node_ids if i != old))
    client.submit(put("moved", 1))

    def missing() -> list[str]:
        s = scrape()
        roles = by_node(s, "ray_raft_role", name, role="leader")
        leaders = [n for n, v in roles.items() if v == 1]
        lag_peers = {lab["peer"] for lab, _ in s.get("ray_raft_follower_lag", [])
                     if lab.get("cluster") == name and lab.get("node") in leaders[:1]}
        want = {
            "proposals ok": total(s, "ray_raft_proposals_total", name, outcome="ok") >= 321,
            "proposals rejected": total(s, "ray_raft_proposals_total", name, outcome="rejected") >= 1,
            "linearizable reads": total(s, "ray_raft_reads_total", name, consistency="linearizable",
                                        outcome="ok") >= 10,
            "stale reads": total(s, "ray_raft_reads_total", name, consistency="stale", outcome="ok") >= 1,
            f"one leader among 3 roles (saw {roles})": len(roles) == 3 and sum(roles.values()) == 1,
            "unknown outcomes": total(s, "ray_raft_client_unknown_outcomes_total", name) >= 1,
            "client retries": total(s, "ray_raft_client_retries_total", name) >= 1,
            "snapshots": total(s, "ray_raft_snapshots_total", name) >= 1,
            # the leader's view, once the leader named in the export has exported it
            f"follower lag from the leader (saw {sorted(lag_peers)})":
                len(leaders) == 1 and lag_peers >= {str(i) for i in cluster.node_ids} - set(leaders),
        }
        return [k for k, ok in want.items() if not ok]

    last: list[str] = []

    def exported() -> bool:
        last[:] = missing()
        return not last

    try:
        wait_until(exported, timeout=60)
    except AssertionError:
        raise AssertionError(f"not in Ray's Prometheus export after 60 s: {last}") from None
    s = scrape()
    assert len(by_node(s, "ray_raft_term", name)) == 3 and min(by_node(s, "ray_raft_term", name).values()) >= 1
    assert min(by_node(s, "ray_raft_commit_index", name).values()) > 0
    assert min(by_node(s, "ray_raft_applied_index", name).values()) > 0
    assert min(by_node(s, "ray_raft_wal_bytes", name).values()) > 0
    assert total(s, "ray_raft_elections_started_total", name) >= 1
    assert total(s, "ray_raft_leader_changes_total", name) >= 3  # every node learnt of a leader
    for hist in ("raft_fsync_seconds", "raft_entries_per_fsync", "raft_proposal_commit_seconds",
                 "raft_read_seconds", "raft_client_batch_size", "raft_snapshot_seconds"):
        assert total(s, f"ray_{hist}_count", name) > 0, hist
    assert total(s, "ray_raft_snapshot_bytes_total", name) > 0


def test_metrics_can_be_turned_off(metrics_agent, cluster_factory) -> None:
    with pytest.raises(ValueError):
        RaftConfig(metrics_interval=-1)
    cluster = cluster_factory(num_nodes=1, name="metrics-off", config=RaftConfig(metrics_interval=0))
    control = cluster_factory(num_nodes=1, name="metrics-on-beside")  # launched later, default interval
    for c in (cluster, control):
        c.client().submit(put("a", 1))
        assert c.client().query(get("a")) == 1

    def node_samples(name: str) -> list:
        return [lab for samples in scrape().values() for lab, _ in samples
                if lab.get("cluster") == name and "node" in lab]

    # once the node launched after it has reached Ray's export, this one would have too
    wait_until(lambda: node_samples("metrics-on-beside"), timeout=60, what="the control cluster's metrics")
    assert not node_samples("metrics-off")
