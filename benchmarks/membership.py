"""Membership changes under load, timed: a learner is added to a cluster that is taking writes, catches
up (by snapshot: the log it needs is compacted away), is promoted, and then the leader is removed.

    python -m benchmarks.membership [--preload 50000] [--runs 3] [--out DIR]

Prints the timeline of each run (``RaftCluster.membership_log``) and a summary of medians, and
saves them as CSV and JSON.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import threading
import time
from typing import Any

import pandas as pd
import ray

from raft_actors import RaftConfig
from raft_actors.state_machines import put

from .common import environment, fresh_cluster, init_ray, ray_baseline, save, show


def _writers(cluster: Any, stop: threading.Event, acked: list[float], in_flight: int = 32) -> threading.Thread:
    def run() -> None:
        client = cluster.client()
        i = 0
        while not stop.is_set():
            futures = [client.submit_async(put(f"w{i}-{j}", j)) for j in range(in_flight)]
            for f in futures:
                try:
                    f.result()
                    acked.append(time.monotonic())
                except Exception:  # noqa: BLE001, S110 - a write may fail around the leader's removal
                    pass
            i += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def membership_timeline(preload: int = 50_000, runs: int = 1, value_bytes: int = 100,
                        rtt_ms: float | None = None) -> pd.DataFrame:
    """Run the scenario ``runs`` times; one row per step of each run (seconds since the step's
    call began, and as Ray round trips measured in the same run), plus the writes acknowledged
    during the calls and the longest pause between two of them. ``rtt_ms``: the Ray round trip,
    measured here unless given."""
    rtt_s = (rtt_ms or ray_baseline(samples=200, pipelined=500).rtt_ms) / 1000
    rows = []
    cfg = RaftConfig(snapshot_commands=max(1000, preload * 2 // 5), keep_bytes=max(10_000, preload * 2))
    for run in range(runs):
        with fresh_cluster(3, cfg) as cl:
            client = cl.client()
            for k in range(0, preload, 1000):
                for f in [client.submit_async(put(f"k{k + j}", "x" * value_bytes)) for j in range(1000)]:
                    f.result()
            stop, acked = threading.Event(), []
            writer = _writers(cl, stop, acked)
            time.sleep(1.0)
            t_add = time.monotonic()
            new = cl.add_node()
            t_remove = time.monotonic()
            old = cl.leader()
            cl.remove_node(old)
            new_leader = cl.leader()
            t_done = time.monotonic()
            time.sleep(1.0)
            stop.set()
            writer.join(30)
            st = cl.status()
            for ev in cl.membership_log().to_dict("records"):
                rows.append({"run": run, "node": ev["node"], "event": ev["event"], "seconds": ev["seconds"],
                             "detail": ev["detail"]})
            rows.append({"run": run, "node": new_leader, "event": "new leader answers", "seconds": round(t_done - t_remove, 3),
                         "detail": ""})
            times = sorted(acked)
            during = [t for t in times if t_add <= t <= t_done]
            gaps = [b - a for a, b in itertools.pairwise(times) if t_add <= b <= t_done + 1.0]
            rows.append({"run": run, "node": new, "event": "writes acknowledged during the changes",
                         "seconds": round(t_done - t_add, 3),
                         "detail": f"{len(during)} writes, longest pause {1000 * max(gaps, default=0.0):.0f} ms; "
                                   f"the learner received {int(st.loc[new, 'snapshots_received'])} snapshot(s)"})
    df = pd.DataFrame(rows)
    df["rtts"] = (df["seconds"] / rtt_s).round(1)
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Medians over runs of each step's time."""
    out = []
    for event, g in df.groupby("event", sort=False):
        out.append({"event": event, "runs": len(g), "median_s": statistics.median(g["seconds"]),
                    "median_rtts": statistics.median(g["rtts"])})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preload", type=int, default=50_000, help="writes before the learner is added")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--out", default="benchmark-results/membership", help="directory for CSV and JSON")
    p.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: a local Ray")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    started = init_ray(a.address)
    try:
        df = membership_timeline(a.preload, a.runs)
        show("membership changes under load (seconds since each call began)", df)
        show("medians", summary(df))
        save(a.out, "membership", df, {"preload": a.preload, "runs": a.runs, "environment": environment()})
    finally:
        if started:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
