"""A short tour of a local cluster that also measures it: latency, throughput and failover.

Every number is reported beside the Ray actor round trip measured in the same run, so results
from different (and noisy) machines can be compared as ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray
from tabulate import tabulate

from .cluster import RaftCluster
from .config import RaftConfig
from .state_machines import KVStore, get, put


@dataclass
class DemoResult:
    ray_round_trip_ms: float
    commit_latency_ms: float
    commit_latency_p99_ms: float
    read_latency_ms: float
    throughput_ops: float
    concurrent_requests: int
    failover_s: float

    def table(self) -> str:
        rtt = self.ray_round_trip_ms
        rows = [
            ["Ray actor round trip (median)", f"{rtt:.2f} ms", "1.0x"],
            ["commit latency, 1 client (median)", f"{self.commit_latency_ms:.2f} ms", f"{self.commit_latency_ms / rtt:.1f}x"],
            ["commit latency, 1 client (p99)", f"{self.commit_latency_p99_ms:.2f} ms",
             f"{self.commit_latency_p99_ms / rtt:.1f}x"],
            ["linearizable read, 1 client (median)", f"{self.read_latency_ms:.2f} ms", f"{self.read_latency_ms / rtt:.1f}x"],
            [f"write throughput, {self.concurrent_requests} requests in flight",
             f"{self.throughput_ops:,.0f} ops/s", f"{self.throughput_ops * rtt / 1000:.1f} per round trip"],
            ["failover: leader killed -> next write committed", f"{self.failover_s * 1000:.0f} ms", ""],
        ]
        return tabulate(rows, headers=["measure", "value", "vs Ray round trip"], tablefmt="github")


def ray_round_trip(handle: Any, n: int = 300) -> float:
    """Median seconds of a trivial call to a node actor (an async actor, like every node)."""
    ray.get(handle.ping.remote())
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        ray.get(handle.ping.remote())
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def commit_latencies(cluster: RaftCluster, n: int = 300) -> list[float]:
    """Seconds per write for one client with one write outstanding at a time."""
    client = cluster.client()
    client.submit(put("warm", 0))
    samples = []
    for i in range(n):
        t = time.perf_counter()
        client.submit(put("k", i))
        samples.append(time.perf_counter() - t)
    return samples


def read_latencies(cluster: RaftCluster, n: int = 300) -> list[float]:
    client = cluster.client()
    client.query(get("k"))
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        client.query(get("k"))
        samples.append(time.perf_counter() - t)
    return samples


def write_throughput(cluster: RaftCluster, sessions: int = 8, per_session: int = 128, seconds: float = 5.0) -> float:
    """Committed writes per second with ``sessions`` clients, each with ``per_session`` writes
    in flight at all times (closed loop), 16-byte values."""

    async def run() -> int:
        clients = [cluster.async_client() for _ in range(sessions)]
        value = b"x" * 16
        stop = time.monotonic() + seconds
        done = 0

        async def worker(c: Any, w: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < stop:
                await c.submit(put(f"w{w}-{n % 100}", value))
                n += 1
                done += 1

        await asyncio.gather(*(worker(c, s * per_session + k) for s, c in enumerate(clients) for k in range(per_session)))
        return done

    start = time.monotonic()
    done = asyncio.run(run())
    return done / (time.monotonic() - start)


def failover_time(cluster: RaftCluster) -> float:
    """Seconds from killing the leader until a client's next write commits."""
    client = cluster.client()
    client.submit(put("before", 1))
    leader = cluster.leader()
    t = time.perf_counter()
    cluster.kill(leader)
    client.submit(put("after", 1))
    return time.perf_counter() - t


def run_demo(num_nodes: int = 3, seconds: float = 5.0, config: RaftConfig | None = None,
             storage: str = "file") -> DemoResult:
    """Launch a local cluster, exercise it, print what happens and what it measured.

    With ``storage="file"`` (durable, the default) the nodes' logs live in a temporary
    directory that is deleted afterwards.
    """
    print(f"Launching a {num_nodes}-node Raft cluster on a local Ray ({storage} storage)...")
    with tempfile.TemporaryDirectory(prefix="raft-demo-") as tmp:
        return _demo(RaftCluster.launch(num_nodes=num_nodes, state_machine=KVStore, config=config,
                                        storage=storage, data_dir=tmp), seconds)  # type: ignore[arg-type]


_SHOWN = ["role", "term", "leader", "commit_index", "applied_index", "snapshot_index", "storage_bytes"]


def _status(cluster: RaftCluster) -> str:
    st = cluster.status()
    return st[[c for c in _SHOWN if c in st.columns]].to_string()


def _demo(cluster: RaftCluster, seconds: float) -> DemoResult:
    try:
        print(_status(cluster), "\n")
        client = cluster.client()
        client.submit(put("greeting", "hello, raft"))
        print("wrote greeting; linearizable read ->", client.query(get("greeting")))
        print("follower read ->", client.query(get("greeting"), consistency="follower"))
        leader = cluster.leader()
        rtt = ray_round_trip(cluster.handle(leader))
        lat = sorted(commit_latencies(cluster))
        reads = read_latencies(cluster)
        print(f"measuring write throughput for {seconds:.0f} s...")
        tput = write_throughput(cluster, seconds=seconds)
        print("killing the leader, node", leader)
        fo = failover_time(cluster)
        print(_status(cluster), "\n")
        result = DemoResult(
            ray_round_trip_ms=rtt * 1000,
            commit_latency_ms=statistics.median(lat) * 1000,
            commit_latency_p99_ms=lat[int(len(lat) * 0.99) - 1] * 1000,
            read_latency_ms=statistics.median(reads) * 1000,
            throughput_ops=tput,
            concurrent_requests=8 * 128,
            failover_s=fo,
        )
        print(result.table())
        return result
    finally:
        cluster.shutdown(delete_data=True)
