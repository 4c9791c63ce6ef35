"""A Raft cluster across several Ray nodes (machines), on one machine: ``ray.cluster_utils.Cluster``.

Run by ``tests/test_multinode.py`` in a process of its own (the rest of the suite shares one
in-process Ray session), or by hand::

    python tests/multinode_scenario.py

A head Ray node offers no slot; three worker Ray nodes offer ``raft_slot_a``, ``_b`` and ``_c``.
A 3-node Raft cluster is launched on them with ``placement="slots"``, then:

(a) a second driver process connects to it by name, reads the keys back, writes one more and
    exits; then the first driver leaves Ray and joins again as a new job: the detached node
    actors outlive both, and ``connect`` manages the cluster from then on;
(b) the Ray node hosting a follower is removed abruptly: writes and linearizable reads go on;
(c) a new Ray node offering the lost slot joins: Ray restarts the node actor there, it replays
    its data directory and catches up;
then (b) and (c) again for the Ray node hosting the leader (a new leader is elected meanwhile).

Prints ``TIMING <step> <seconds>`` lines and ends with ``SCENARIO OK`` (exit code 0). Whatever
it started is stopped, and its temporary directory removed, even when it fails.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from waiting import process_alive, wait_until  # this directory: the script runs as a file

NAMESPACE = "raft_multinode"
NAME = "multinode"
SLOTS = ("a", "b", "c")
#: Ray declares a node dead after ``health_check_failure_threshold`` missed health checks, one
#: every ``health_check_period_ms`` (defaults: 5 and 3,000 ms), and only then restarts its
#: actors elsewhere. The scenario shortens that wait.
HEAD_SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def timing(step: str, seconds: float) -> None:
    print(f"TIMING {step} {seconds:.1f}", flush=True)


def read_at(handle: Any, keys: list[str]) -> dict[str, Any]:
    """Read ``keys`` at one node with consistency ``follower``: a linearizable read answered by
    that node's own state machine."""
    import ray

    from raft_actors.envelope import outcomes_of, query_call
    from raft_actors.state_machines import get

    outcomes = outcomes_of(ray.get(handle.read.remote(query_call(*[get(k) for k in keys]), "follower"), timeout=30))
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"reads failed at the node: {failed[:3]}"
    return {k: o.value for k, o in zip(keys, outcomes, strict=True)}


# --------------------------------------------------------------------------- the second driver
def second_driver(address: str, name: str, namespace: str, expected: dict[str, int]) -> None:
    """Another driver: find the cluster by name, read what the first one wrote, write one more
    key, and exit without shutting anything down."""
    from raft_actors import RaftCluster
    from raft_actors.state_machines import get, put

    start = time.monotonic()
    cluster = RaftCluster.connect(name, address=address, namespace=namespace)
    assert cluster.node_ids == [1, 2, 3], cluster.node_ids
    client = cluster.client()
    got = {k: client.query(get(k)) for k in expected}
    assert got == expected, f"the second driver read {got}"
    client.submit(put("from-second-driver", 42))
    assert client.query(get("from-second-driver")) == 42
    assert sorted(cluster.status()["slot"]) == list(SLOTS)
    client.close()
    print(f"SECOND DRIVER OK in {time.monotonic() - start:.1f}s", flush=True)


# --------------------------------------------------------------------------- the scenario
class Scenario:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.ray_cluster: Any = None  # ray.cluster_utils.Cluster
        self.raft: Any = None  # RaftCluster
        self.client: Any = None
        self.holder: dict[str, Any] = {}  # slot -> the cluster_utils node offering it now
        self.slot_of: dict[int, str] = {}  # Raft node -> slot
        self.expected: dict[str, int] = {}  # every acknowledged write

    # ---- helpers
    def add_slot_node(self, slot: str) -> Any:
        node = self.ray_cluster.add_node(num_cpus=1, resources={f"raft_slot_{slot}": 1})
        self.holder[slot] = node
        return node

    def write(self, n: int, prefix: str) -> None:
        from raft_actors.state_machines import put

        for i in range(n):
            key, value = f"{prefix}{i}", len(self.expected)
            self.client.submit(put(key, value))
            self.expected[key] = value

    def check_all(self) -> None:
        """Every acknowledged write, read back linearizably through the client."""
        from raft_actors.state_machines import get

        got = {k: self.client.query(get(k)) for k in self.expected}
        assert got == self.expected, {k: (got[k], v) for k, v in self.expected.items() if got[k] != v}

    # ---- steps
    def start_ray(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        t = time.monotonic()
        self.ray_cluster = Cluster(initialize_head=True,
                                   head_node_args={"num_cpus": 1, "_system_config": HEAD_SYSTEM_CONFIG})
        for slot in SLOTS:
            self.add_slot_node(slot)
        self.ray_cluster.wait_for_nodes()
        timing("ray_cluster_start", time.monotonic() - t)
        ray.init(address=self.ray_cluster.address, namespace=NAMESPACE, log_to_driver=False)
        log(f"Ray at {self.ray_cluster.address}: a head without slot, workers with slots {', '.join(SLOTS)}")

    def launch(self) -> None:
        from raft_actors import RaftCluster

        t = time.monotonic()
        self.raft = RaftCluster.launch(3, address=self.ray_cluster.address, name=NAME, namespace=NAMESPACE,
                                       data_dir=self.data_dir, placement="slots")
        timing("raft_launch", time.monotonic() - t)
        st = self.raft.status()
        log(f"launched:\n{st[['role', 'term', 'slot', 'ray_node']]}")
        self.slot_of = st["slot"].to_dict()
        assert sorted(self.slot_of.values()) == list(SLOTS), self.slot_of
        assert st["ray_node"].nunique() == 3, st["ray_node"]
        for node, slot in self.slot_of.items():
            assert st.loc[node, "ray_node"] == self.holder[slot].node_id, f"node {node} is not on slot {slot}'s Ray node"
        self.client = self.raft.client()
        self.write(20, "k")
        self.check_all()

    def second_driver(self) -> None:
        from raft_actors.state_machines import get

        t = time.monotonic()
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "connect", self.ray_cluster.address, NAME, NAMESPACE,
             repr(self.expected)],
            capture_output=True, text=True, timeout=90, check=False,
        )
        timing("second_driver", time.monotonic() - t)
        assert proc.returncode == 0 and "SECOND DRIVER OK" in proc.stdout, \
            f"the second driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        log(proc.stdout.strip().splitlines()[-1])
        # its write is here, and the detached node actors outlived that driver
        assert self.client.query(get("from-second-driver")) == 42
        self.expected["from-second-driver"] = 42
        assert self.raft.status()["role"].isin(["leader", "follower"]).all()

    def new_driver(self) -> None:
        """This driver leaves Ray (its job ends) and comes back as a new one: the node actors it
        launched are detached, so they run on; ``connect`` finds them and manages them from now on."""
        import ray

        from raft_actors import RaftCluster

        t = time.monotonic()
        self.client.close()
        ray.shutdown()
        self.raft = None  # nothing of the old driver is used again
        ray.init(address=self.ray_cluster.address, namespace=NAMESPACE, log_to_driver=False)
        self.raft = RaftCluster.connect(NAME, address=self.ray_cluster.address, namespace=NAMESPACE)
        self.client = self.raft.client()
        self.check_all()
        assert self.raft.data_dir == self.data_dir, self.raft.data_dir
        timing("reconnect_as_new_driver", time.monotonic() - t)

    def lose_and_replace(self, node: int, what: str) -> None:
        """Remove the Ray node hosting Raft node ``node`` abruptly; the cluster serves on. Then a
        Ray node offering the same slot joins: ``node`` comes back there and catches up."""
        slot = self.slot_of[node]
        old_pid = int(self.raft.status().loc[node, "pid"])
        log(f"removing the Ray node of the {what}, node {node} (slot {slot}, pid {old_pid})")
        t_remove = time.monotonic()
        self.ray_cluster.remove_node(self.holder.pop(slot), allow_graceful=False)
        timing(f"{what}_remove_node", time.monotonic() - t_remove)
        # (two actor processes on one data directory would be a test artefact, not a machine loss)
        wait_until(lambda: not process_alive(old_pid), 10, what=f"the actor process {old_pid} to die with its Ray node")

        # the other two serve writes and linearizable reads (after electing a leader, if needed)
        t = time.monotonic()
        self.write(1, f"{what}-lost-first-")
        timing(f"{what}_lost_first_write", time.monotonic() - t)
        self.write(10, f"{what}-lost-")
        self.check_all()
        leader = self.raft.leader(timeout=10)
        assert leader != node
        log(f"served on without node {node}: leader {leader}")

        # a new machine offering the same slot: Ray restarts the node actor there
        t_add = time.monotonic()
        new = self.add_slot_node(slot)
        timing(f"{what}_add_node", time.monotonic() - t_add)

        def back() -> bool:
            st = self.raft.status()
            row = st.loc[node]
            return (row["role"] in ("leader", "follower") and row["ray_node"] == new.node_id
                    and row["applied_index"] >= st["commit_index"].max())

        wait_until(back, 60, interval=0.2, what=f"node {node} to come back on the new Ray node and catch up")
        timing(f"{what}_back_after_add", time.monotonic() - t_add)
        timing(f"{what}_back_after_remove", time.monotonic() - t_remove)
        row = self.raft.status().loc[node]
        log(f"node {node} back on Ray node {row['ray_node'][:12]}.. (pid {row['pid']}), "
            f"applied index {row['applied_index']}")
        # its own state machine has every write: from its replayed disk and from catching up
        assert read_at(self.raft.handle(node), list(self.expected)) == self.expected
        self.write(5, f"{what}-back-")
        self.check_all()

    def finish(self) -> None:
        st = self.raft.status()
        log(f"final:\n{st[['role', 'term', 'commit_index', 'applied_index', 'slot', 'ray_node']]}")
        assert st["role"].isin(["leader", "follower"]).all(), st
        assert sorted(st["ray_node"]) == sorted(self.holder[s].node_id for s in SLOTS)
        self.check_all()
        for node in self.raft.node_ids:
            assert read_at(self.raft.handle(node), list(self.expected)) == self.expected, f"node {node} differs"
        log(f"{len(self.expected)} writes, all on every node")

    def run(self) -> None:
        self.start_ray()
        self.launch()
        self.second_driver()
        self.new_driver()
        leader = self.raft.leader()
        self.lose_and_replace(min(n for n in self.raft.node_ids if n != leader), "follower")
        self.lose_and_replace(self.raft.leader(timeout=30), "leader")
        self.finish()

    def cleanup(self) -> None:
        import ray

        if self.raft is not None:
            try:
                self.raft.shutdown(delete_data=True)
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                log(f"shutting the Raft cluster down failed: {exc!r}")
        if ray.is_initialized():
            ray.shutdown()
        if self.ray_cluster is not None:
            self.ray_cluster.shutdown()


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # a short path: Ray's sockets live under it
    # Ray keeps its session files, and cluster_utils the "current cluster" address that a plain
    # ray.init() on this machine would join, under RAY_TMPDIR: keep them from other Ray users.
    os.environ["RAY_TMPDIR"] = os.path.join(tmp, "ray")
    scenario = Scenario(os.path.join(tmp, "data"))
    try:
        scenario.run()
    except BaseException:
        if scenario.raft is not None:
            try:
                log(f"status at the failure:\n{scenario.raft.status()}")
            except Exception as exc:  # noqa: BLE001 - the original error matters more
                log(f"no status at the failure: {exc!r}")
        raise
    finally:
        t = time.monotonic()
        scenario.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        timing("cleanup", time.monotonic() - t)
        timing("total", time.monotonic() - _T0)
    print("SCENARIO OK", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["connect"]:
        second_driver(sys.argv[2], sys.argv[3], sys.argv[4], ast.literal_eval(sys.argv[5]))
    else:
        sys.exit(main())
