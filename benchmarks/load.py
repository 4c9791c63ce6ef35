"""Throughput, latency and failover under load, driven by :mod:`workloads` load generators.

Every row carries the Ray baselines measured in the same run (:func:`benchmarks.common.ray_baseline`)
and ratios to them: throughput against the rate of pipelined Ray calls, latency against the Ray
round trip.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workloads import LoadSpec, Mix, run_load, summarize, write_only

from .common import Baseline, fresh_cluster, progress, pyplot


@dataclass(frozen=True)
class Point:
    """One closed-loop measurement: a cluster size, a mix and how the load is offered."""

    nodes: int = 3
    clients: int = 8
    in_flight: int = 256
    value_size: int = 16
    generators: int = 1
    storage: str = "file"

    def mix(self) -> Mix:
        return write_only(value_size=self.value_size)


def _row(summary: dict[str, Any], base: Baseline) -> dict[str, Any]:
    return {
        "throughput_ops_s": summary["throughput"], "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
        "errors": summary["ops"] - summary["ok"],
        "throughput_vs_pipelined_ray": summary["throughput"] / base.pipelined_calls_s,
        "p50_vs_rtt": summary["p50_ms"] / base.rtt_ms,
    }


def throughput(points: list[Point], base: Baseline, duration: float = 5.0, warmup: float = 1.0) -> pd.DataFrame:
    """Closed-loop write throughput at each point (points with the same cluster size and
    storage share one cluster, launched once). One row per point."""
    rows = []
    for key in dict.fromkeys((p.nodes, p.storage) for p in points):
        group = [p for p in points if (p.nodes, p.storage) == key]
        with fresh_cluster(key[0], storage=key[1]) as cl:
            for p in progress(group, f"throughput, {key[0]} nodes"):
                spec = LoadSpec(p.mix(), clients=p.clients, in_flight=p.in_flight, duration=duration, warmup=warmup)
                s = summarize(run_load(cl, spec, generators=p.generators))
                rows.append({**p.__dict__, **_row(s, base)})
    return pd.DataFrame(rows)


def latency(base: Baseline, loads: tuple[float, ...] = (0.25, 0.5, 0.75), peak: float | None = None,
            nodes: int = 3, duration: float = 5.0, value_size: int = 16) -> pd.DataFrame:
    """Open-loop latency percentiles at fixed offered loads: ``loads`` are fractions of
    ``peak`` (ops/s; measured first, closed loop, if not given). One row per load."""
    rows = []
    with fresh_cluster(nodes) as cl:
        mix = write_only(value_size=value_size)
        if peak is None:
            peak = summarize(run_load(cl, LoadSpec(mix, clients=8, in_flight=128, duration=duration, warmup=1)))[
                "throughput"]
        for frac in progress(loads, "latency"):
            # few sessions, passes every 2 ms: each pass is one Ray call per session
            spec = LoadSpec(mix, clients=2, rate=frac * peak, duration=duration, warmup=1.0, pass_interval=0.002)
            s = summarize(run_load(cl, spec))
            rows.append({"offered_fraction": frac, "offered_ops_s": frac * peak, "achieved_ops_s": s["throughput"],
                         "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"], "p999_ms": s["p999_ms"],
                         "errors": s["ops"] - s["ok"], "p50_vs_rtt": s["p50_ms"] / base.rtt_ms,
                         "p99_vs_rtt": s["p99_ms"] / base.rtt_ms})
    return pd.DataFrame(rows)


def failover(base: Baseline, kills: int = 5, interval: float = 4.0, nodes: int = 3, clients: int = 4,
             in_flight: int = 16) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kill the leader ``kills`` times under a closed-loop write load (the killed node restarts
    from its log before the next kill). For each kill: the time until a new leader is followed
    by a majority, and the client-visible unavailability, the longest stretch after the kill
    with no write completing. Returns (one row per kill, every operation of the run)."""
    with fresh_cluster(nodes) as cl:
        spec = LoadSpec(write_only(), clients=clients, in_flight=in_flight, duration=kills * interval + 2, warmup=0.5)
        result: dict[str, pd.DataFrame] = {}
        runner = threading.Thread(target=lambda: result.__setitem__("ops", run_load(cl, spec)))
        runner.start()
        time.sleep(2.0)  # the generator starts and the load settles
        events = []
        for _ in progress(range(kills), "failover"):
            old = cl.leader()
            t_kill = time.time()
            cl.kill(old)
            new = cl.leader(timeout=30, poll=0)
            t_leader = time.time()
            events.append({"killed": old, "new_leader": new, "t_kill": t_kill, "leader_s": t_leader - t_kill})
            cl.restart(old)
            time.sleep(max(0.0, interval - (time.time() - t_kill)))
        runner.join()
        ops = result["ops"]
    t0 = ops.attrs["started_at"]
    done = np.sort(ops.loc[ops["outcome"].astype(str) == "ok", "end"].to_numpy())
    rows = []
    for k, e in enumerate(events):
        at = e["t_kill"] - t0
        until = events[k + 1]["t_kill"] - t0 if k + 1 < len(events) else float("inf")
        before = done[done <= at]
        after = done[(done > at) & (done < until)]
        last = before[-1] if len(before) else at
        # unavailable: the longest stretch, from the last write completed before the kill to
        # the next kill, in which no write completed
        first = after[0] if len(after) else float("nan")
        gaps = np.diff(np.concatenate([[last], after])) if len(after) else np.array([np.nan])
        rows.append({"at_s": at, "killed": e["killed"], "new_leader": e["new_leader"],
                     "time_to_new_leader_ms": e["leader_s"] * 1e3,
                     "unavailable_ms": float(np.max(gaps)) * 1e3, "first_write_after_kill_ms": (first - at) * 1e3,
                     "unavailable_vs_rtt": float(np.max(gaps)) * 1e3 / base.rtt_ms})
    return pd.DataFrame(rows), ops


def plot_throughput(df: pd.DataFrame, path: str) -> bool:
    """Throughput and median latency against requests in flight (16-byte values, durable), one
    line per cluster size."""
    plt = pyplot()
    if plt is None or df.empty:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    base = df[(df["value_size"] == 16) & (df["storage"] == "file")].assign(total=df["clients"] * df["in_flight"])
    for nodes, g in base.groupby("nodes"):
        g = g.groupby("total", as_index=False)[["throughput_ops_s", "p50_ms"]].median()
        a.plot(g["total"], g["throughput_ops_s"], marker="o", label=f"{nodes} nodes")
        b.plot(g["total"], g["p50_ms"], marker="o", label=f"{nodes} nodes")
    for ax, label in ((a, "committed writes/s"), (b, "median latency (ms)")):
        ax.set_xscale("log")
        ax.set_xlabel("requests in flight")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_failover(ops: pd.DataFrame, kills: pd.DataFrame, path: str) -> bool:
    """Committed writes per 50 ms through the failover run."""
    plt = pyplot()
    if plt is None or ops.empty:
        return False
    ok = ops[ops["outcome"].astype(str) == "ok"]
    bins = np.arange(0, ops["end"].max() + 0.05, 0.05)
    counts, _ = np.histogram(ok["end"], bins)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(bins[:-1], counts / 0.05)
    for at in kills["at_s"]:
        ax.axvline(at, color="red", alpha=0.5, linestyle="--")
    ax.set_xlabel("seconds (red: leader killed)")
    ax.set_ylabel("committed writes/s (50 ms bins)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
