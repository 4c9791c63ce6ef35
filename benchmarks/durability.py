"""Durability benchmarks: what the write-ahead log costs, how fast a node recovers, and whether
disk and memory stay bounded over a long run with snapshots and compaction.

Run ``python -m benchmarks.durability`` (``--quick`` for a short run). Every result is reported
beside the Ray actor round trip measured in the same run; tables are printed with tabulate and
saved as CSV, with the run's configuration and environment as JSON, under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import threading
import time
from typing import Any

import pandas as pd
import ray

from raft_actors import KVStore, RaftCluster, RaftConfig
from raft_actors.demo import commit_latencies, ray_round_trip, write_throughput
from raft_actors.replica import Replica
from raft_actors.state_machines import put
from raft_actors.storage import FileStorage

from .common import environment, fresh_cluster, init_ray, pyplot, show

_NO_SNAPSHOTS = {"snapshot_commands": 0, "snapshot_bytes": 0}


def _followers(cluster: RaftCluster) -> list[int]:
    leader = cluster.leader()
    return [i for i in cluster.node_ids if i != leader]


def _fill(cluster: RaftCluster, n: int, keys: int, value: bytes = b"x" * 16, sessions: int = 4,
          in_flight: int = 256, on_progress: Any = None) -> float:
    """Commit ``n`` puts over ``keys`` keys, as fast as ``sessions`` clients with ``in_flight``
    requests each allow. Returns the seconds it took."""

    async def run() -> None:
        clients = [cluster.async_client() for _ in range(sessions)]
        counter = iter(range(n))
        done = 0

        async def worker(c: Any) -> None:
            nonlocal done
            for i in counter:
                await c.submit(put(f"k{i % keys}", value))
                done += 1
                if on_progress is not None and done % 10_000 == 0:
                    on_progress(done)

        await asyncio.gather(*(worker(c) for c in clients for _ in range(in_flight)))
        for c in clients:
            await c.aclose()

    start = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - start


def fsync_cost(seconds: float = 5.0) -> pd.DataFrame:
    """The cost of fsync per committed batch, next to the Ray round trip: one 3-node cluster
    with the durable log and one in memory, each measured for one client (one write at a time)
    and under load (8 sessions x 128 writes in flight)."""
    rows = []
    for storage in ("memory", "file"):
        with fresh_cluster(3, storage=storage) as cl:
            leader = cl.leader()
            rtt = ray_round_trip(cl.handle(leader))
            for phase in ("1 client", "load"):
                cl.reset_metrics()
                if phase == "1 client":
                    lat = statistics.median(commit_latencies(cl, 500))
                    tput = float("nan")
                else:
                    lat = float("nan")
                    tput = write_throughput(cl, sessions=8, per_session=128, seconds=seconds)
                st = cl.status()
                fol = [i for i in cl.node_ids if i != leader]
                rows.append({
                    "storage": storage, "phase": phase, "ray_rtt_ms": rtt * 1e3,
                    "commit_ms_p50": lat * 1e3, "commit_vs_rtt": lat / rtt, "throughput_ops_s": tput,
                    "leader_sync_ms_p50": st.loc[leader, "sync_ms_p50"],
                    "follower_sync_ms_p50": statistics.median(st.loc[fol, "sync_ms_p50"]),
                    "sync_vs_rtt": st.loc[leader, "sync_ms_p50"] / (rtt * 1e3),
                    "entries_per_sync_p50": st.loc[leader, "entries_per_sync_p50"],
                    "leader_sync_ms_p99": st.loc[leader, "sync_ms_p99"],
                })
            cl.shutdown(delete_data=True)
    return pd.DataFrame(rows)


def recovery_time(entries: int = 100_000, repeats: int = 3) -> pd.DataFrame:
    """How long a node holding ``entries`` log entries takes to come back: opening and
    replaying its write-ahead log, re-applying the entries, and a Ray restart until it answers
    and until it has caught up; once from the whole log, once from a snapshot."""
    rows = []
    cfg = RaftConfig(**_NO_SNAPSHOTS)
    with fresh_cluster(3, cfg) as cl:
        _fill(cl, entries, keys=10_000)
        victim = _followers(cl)[0]
        rtt = ray_round_trip(cl.handle(cl.leader()))
        for source in ("log", "snapshot"):
            if source == "snapshot":
                cl.snapshot(victim)
            for _ in range(repeats):
                cl.kill(victim)
                path = cl.node_data_dir(victim)
                assert path is not None
                t0 = time.perf_counter()
                storage = FileStorage(path)
                rec = storage.load()
                t1 = time.perf_counter()
                replica = Replica(victim, cl.node_ids, cfg, storage, KVStore(), random.Random(0))
                replica.process_ready()  # re-applies the committed entries after the snapshot
                t2 = time.perf_counter()
                storage.close()
                t3 = time.perf_counter()
                cl.restart(victim)
                t4 = time.perf_counter()
                while True:
                    st = cl.status()
                    if st["applied_index"].nunique() == 1:
                        break
                    time.sleep(0.01)
                t5 = time.perf_counter()
                rows.append({
                    "source": source, "log_entries": len(rec.entries),
                    "snapshot_index": rec.snapshot.index if rec.snapshot else 0,
                    "open_replay_s": t1 - t0, "replica_ready_s": t2 - t0,
                    "ray_restart_until_answering_s": t4 - t3, "until_caught_up_s": t5 - t3,
                    "ray_rtt_ms": rtt * 1e3, "applied_index": int(replica.applier.applied_index),
                })
        cl.shutdown(delete_data=True)
    return pd.DataFrame(rows)


def long_run(ops: int = 1_000_000, snapshot_commands: int = 100_000, keys: int = 10_000,
             interval: float = 0.25) -> pd.DataFrame:
    """Disk and memory of every node, sampled through a run of ``ops`` writes over ``keys``
    keys, with a snapshot and compaction every ``snapshot_commands`` entries."""
    cfg = RaftConfig(snapshot_commands=snapshot_commands, **({} if snapshot_commands else {"snapshot_bytes": 0}))
    samples: list[dict[str, Any]] = []
    done = [0]
    with fresh_cluster(3, cfg) as cl:
        leader = cl.leader()
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                st = cl.status()
                for node, row in st.iterrows():
                    samples.append({
                        "t_s": time.monotonic() - t0, "ops_done": done[0], "node": node, "leader": node == leader,
                        "applied_index": row["applied_index"], "snapshot_index": row["snapshot_index"],
                        "log_entries": row["log_entries"], "storage_bytes": row["storage_bytes"],
                        "rss_bytes": row["rss_bytes"],
                    })
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        secs = _fill(cl, ops, keys=keys, on_progress=lambda n: done.__setitem__(0, n))
        done[0] = ops
        time.sleep(2 * interval)
        stop.set()
        sampler.join()
        cl.shutdown(delete_data=True)
    df = pd.DataFrame(samples)
    df.attrs["seconds"] = secs
    return df


def end_state(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per run: the leader's disk, log entries in memory and resident memory at the end, and
    their largest values during the run."""
    rows = []
    for name, df in runs.items():
        lead = df[df["leader"]].sort_values("t_s")
        last = lead.iloc[-1]
        rows.append({
            "run": name, "ops": int(last["ops_done"]), "seconds": df.attrs.get("seconds", float("nan")),
            "disk_MiB_end": last["storage_bytes"] / 2**20, "disk_MiB_max": lead["storage_bytes"].max() / 2**20,
            "log_entries_end": int(last["log_entries"]), "log_entries_max": int(lead["log_entries"].max()),
            "rss_MiB_end": last["rss_bytes"] / 2**20, "rss_MiB_max": lead["rss_bytes"].max() / 2**20,
        })
    return pd.DataFrame(rows)


def _ping_while(handle: Any, busy: threading.Event, out: list[float]) -> None:
    """Round trips to ``handle`` back to back while ``busy`` is set (how long its loop stalls)."""
    while busy.is_set():
        t = time.perf_counter()
        ray.get(handle.ping.remote())
        out.append(time.perf_counter() - t)


def large_snapshot(state_mib: int = 100, chunk_mib: float = 1.0) -> pd.DataFrame:
    """A follower that was down while ``state_mib`` MiB were written catches up by a snapshot
    streamed in chunks: how long taking and sending it take, and whether the leader's loop (its
    heartbeats) stalls meanwhile, seen as the round trip of calls to it, and any election."""
    cfg = RaftConfig(snapshot_commands=0, snapshot_bytes=0, keep_bytes=0, snapshot_chunk_bytes=int(chunk_mib * 2**20))
    rows = []
    with fresh_cluster(3, cfg) as cl:
        leader = cl.leader()
        lh = cl.handle(leader)
        victim = _followers(cl)[0]
        cl.kill(victim)
        client = cl.client()
        value = os.urandom(2**20)
        for i in range(state_mib):
            client.submit(put(f"big{i}", value))
        idle: list[float] = []
        on = threading.Event()
        on.set()
        pinger = threading.Thread(target=_ping_while, args=(lh, on, idle))
        pinger.start()
        time.sleep(2)
        on.clear()
        pinger.join()
        term0 = int(cl.status().loc[leader, "term"])
        for phase in ("take snapshot", "send + install snapshot"):
            pings: list[float] = []
            on.set()
            pinger = threading.Thread(target=_ping_while, args=(lh, on, pings))
            pinger.start()
            t = time.perf_counter()
            if phase == "take snapshot":
                cl.snapshot(leader)
            else:
                cl.restart(victim)
                while True:
                    st = cl.status()
                    if st["applied_index"].notna().all() and st["applied_index"].nunique() == 1:
                        break
                    time.sleep(0.02)
            took = time.perf_counter() - t
            on.clear()
            pinger.join()
            st = cl.status()
            rows.append({
                "phase": phase, "state_MiB": state_mib, "chunk_MiB": chunk_mib, "seconds": took,
                "leader_ping_ms_idle_p50": statistics.median(idle) * 1e3,
                "leader_ping_ms_p50": statistics.median(pings) * 1e3 if pings else float("nan"),
                "leader_ping_ms_max": max(pings) * 1e3 if pings else float("nan"),
                "elections": int(st["term"].max()) - term0,
                "chunks_received": int(st.loc[victim, "snapshot_chunks_received"]) if phase != "take snapshot" else 0,
                "snapshot_MiB": st.loc[leader, "storage_bytes"] / 2**20,
                **({k: st.loc[leader, k] for k in ("snapshot_prepare_ms", "snapshot_write_ms", "snapshot_finish_ms")}
                   if phase == "take snapshot" else {}),
            })
        cl.shutdown(delete_data=True)
    return pd.DataFrame(rows)


def compaction_table(df: pd.DataFrame) -> pd.DataFrame:
    """For each compaction seen by the leader: disk, log entries and memory just before and
    just after it."""
    lead = df[df["leader"]].sort_values("t_s").reset_index(drop=True)
    rows = []
    for k in range(1, len(lead)):
        a, b = lead.iloc[k - 1], lead.iloc[k]
        if b["snapshot_index"] != a["snapshot_index"]:
            rows.append({
                "snapshot_index": int(b["snapshot_index"]), "ops_done": int(b["ops_done"]),
                "disk_MiB_before": a["storage_bytes"] / 2**20, "disk_MiB_after": b["storage_bytes"] / 2**20,
                "log_entries_before": int(a["log_entries"]), "log_entries_after": int(b["log_entries"]),
                "rss_MiB_before": a["rss_bytes"] / 2**20, "rss_MiB_after": b["rss_bytes"] / 2**20,
            })
    return pd.DataFrame(rows)


def _plot(runs: dict[str, pd.DataFrame], path: str) -> bool:
    """The leader's disk, log and memory through each run (needs the ``plot`` extra)."""
    plt = pyplot()
    if plt is None:
        print("(no plot: pip install matplotlib, or the project's [plot] extra)")
        return False
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for name, df in runs.items():
        g = df[df["leader"]].sort_values("t_s")
        axes[0].plot(g["ops_done"], g["storage_bytes"] / 2**20, label=name)
        axes[1].plot(g["ops_done"], g["log_entries"], label=name)
        axes[2].plot(g["ops_done"], g["rss_bytes"] / 2**20, label=name)
    for ax, label in zip(axes, ["disk (MiB)", "log entries in memory", "resident memory (MiB)"]):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[2].set_xlabel("operations committed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    p.add_argument("--out", default="benchmark-results/durability", help="directory for CSV, JSON and plots")
    p.add_argument("--only", choices=["fsync", "recovery", "large_snapshot", "long_run"], help="run one benchmark")
    p.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: a local Ray")
    a = p.parse_args(argv)
    ops, entries, seconds = (100_000, 20_000, 3.0) if a.quick else (1_000_000, 100_000, 5.0)
    os.makedirs(a.out, exist_ok=True)
    started = init_ray(a.address)
    config = {"ops": ops, "recovery_entries": entries, "throughput_seconds": seconds, "value_bytes": 16,
              "snapshot_commands": 100_000 if not a.quick else 20_000, "snapshot_state_mib": 10 if a.quick else 100}
    results: dict[str, pd.DataFrame] = {}
    want = {a.only} if a.only else {"fsync", "recovery", "large_snapshot", "long_run"}
    if "fsync" in want:
        results["fsync"] = fsync_cost(seconds)
        show("fsync per committed batch vs the Ray round trip", results["fsync"])
    if "recovery" in want:
        results["recovery"] = recovery_time(entries)
        show(f"recovery of a node with {entries:,} entries", results["recovery"])
    if "large_snapshot" in want:
        results["large_snapshot"] = large_snapshot(config["snapshot_state_mib"])
        show("a follower catches up by a large snapshot", results["large_snapshot"])
    if "long_run" in want:
        run = results["long_run"] = long_run(ops, snapshot_commands=config["snapshot_commands"])
        results["compactions"] = compaction_table(run)
        show(f"disk and memory around each compaction ({ops:,} ops in {run.attrs['seconds']:.0f} s)",
              results["compactions"])
        off = results["long_run_no_snapshots"] = long_run(ops, snapshot_commands=0)
        runs = {f"snapshot every {config['snapshot_commands']:,} entries": run, "no snapshots": off}
        results["end_state"] = end_state(runs)
        show("the leader at the end of the run, with and without snapshots", results["end_state"])
        if _plot(runs, os.path.join(a.out, "long_run.png")):
            print(f"\nplot: {os.path.join(a.out, 'long_run.png')}")
    for name, df in results.items():
        df.to_csv(os.path.join(a.out, f"{name}.csv"), index=False)
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump({"config": config, "environment": environment()}, f, indent=2)
    print(f"results: {a.out}/")
    if started:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
