"""Elections: how long a cluster is without a leader after its leader crashes (in the manner of
the Raft paper's Figure 16), and how long a graceful leadership transfer takes."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import ray

from raft_actors import RaftConfig, RaftTimeoutError

from .common import fresh_cluster, progress, pyplot

#: election timeout ranges (ms) of Figure 16: from no randomness to a range twice the minimum
FIGURE16_RANGES = ((150, 150), (150, 155), (150, 175), (150, 200), (150, 300))


def _config(lo_ms: int, hi_ms: int, tick_ms: int) -> RaftConfig:
    if lo_ms % tick_ms or hi_ms % tick_ms:
        raise ValueError(f"the range {lo_ms}-{hi_ms} ms is not a whole number of {tick_ms} ms ticks")
    return RaftConfig(tick_interval=tick_ms / 1000, election_ticks=lo_ms // tick_ms,
                      election_jitter_ticks=(hi_ms - lo_ms) // tick_ms, heartbeat_ticks=max(1, 25 // tick_ms))


def election_timing(ranges: tuple[tuple[int, int], ...] = FIGURE16_RANGES, trials: int = 20, nodes: int = 5,
                    tick_ms: int = 5, give_up: float = 10.0) -> pd.DataFrame:
    """For each election timeout range, crash the leader ``trials`` times and time how long the
    cluster has no leader: from the kill until a new leader is followed by a majority. The
    crashed node restarts from its log between trials. One row per trial."""
    rows: list[dict[str, Any]] = []
    for lo, hi in ranges:
        cfg = _config(lo, hi, tick_ms)
        with fresh_cluster(nodes, cfg) as cl:
            client = cl.client()
            for trial in progress(range(trials), f"elections {lo}-{hi} ms"):
                client.submit(("put", "trial", trial))
                old = cl.leader()
                t = time.perf_counter()
                cl.kill(old)
                try:
                    new = cl.leader(timeout=give_up, poll=0)  # the killed node cannot answer
                    took: float | None = time.perf_counter() - t
                except RaftTimeoutError:
                    new, took = 0, None
                st = cl.status()
                rows.append({"range_ms": f"{lo}-{hi}", "lo_ms": lo, "hi_ms": hi, "trial": trial, "old": old, "new": new,
                             "seconds": took, "term": int(st["term"].max())})
                cl.restart(old)
                cl.leader(timeout=give_up)
            cl.shutdown(delete_data=True)
    return pd.DataFrame(rows)


def election_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per range: median, 90th percentile and worst time without a leader, and failed trials."""
    g = df.groupby("range_ms", sort=False)["seconds"]
    return pd.DataFrame({
        "range_ms": list(g.groups), "trials": g.size().values,
        "p50_ms": (g.median() * 1e3).values, "p90_ms": (g.quantile(0.9) * 1e3).values,
        "max_ms": (g.max() * 1e3).values, "no_leader_in_time": g.apply(lambda s: int(s.isna().sum())).values,
    })


def plot_elections(df: pd.DataFrame, path: str) -> bool:
    """The cumulative distribution of the time without a leader, one line per range (Figure 16)."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in df.groupby("range_ms", sort=False):
        ms = sorted(g["seconds"].dropna() * 1e3)
        if ms:
            ax.step(ms, [(k + 1) / len(g) for k in range(len(ms))], where="post", label=f"{name} ms")
    ax.set_xscale("log")
    ax.set_xlabel("time without leader (ms)")
    ax.set_ylabel("cumulative fraction of trials")
    ax.grid(alpha=0.3)
    ax.legend(title="election timeout")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def transfer_timing(transfers: int = 10, nodes: int = 3, rtt_ms: float | None = None) -> pd.DataFrame:
    """Hand leadership to another node ``transfers`` times; time from asking the leader until
    the target reports itself leader (polled directly, about one round trip of resolution)."""
    rows: list[dict[str, Any]] = []
    with fresh_cluster(nodes) as cl:
        client = cl.client()
        for k in progress(range(transfers), "transfers"):
            client.submit(("put", "transfer", k))
            leader = cl.leader()
            target = cl.node_ids[(cl.node_ids.index(leader) + 1) % nodes]
            th = cl.handle(target)
            t = time.perf_counter()
            ray.get(cl.handle(leader).transfer_leadership.remote(target))
            while ray.get(th.status.remote())["role"] != "leader":
                if time.perf_counter() - t > 10:
                    raise RaftTimeoutError(f"leadership did not move to node {target}")
            took = time.perf_counter() - t
            rows.append({"transfer": k, "from": leader, "to": target, "ms": took * 1e3,
                         "rtts": took * 1e3 / rtt_ms if rtt_ms else float("nan")})
            cl.leader()  # a majority follows it before the next one
        cl.shutdown(delete_data=True)
    return pd.DataFrame(rows)
