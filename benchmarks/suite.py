"""The benchmark suite: ``raft-actors bench`` (or ``python -m benchmarks``).

The quick default (about three minutes on 2 cores) measures the Ray baselines, the paths users
write from a script (one writer, threads, asyncio, the batch API, beside a bare-Ray skeleton of
the write path and, when installed, PySyncObj: :mod:`benchmarks.user_paths`), write throughput
of the load generators on 3 and 5 nodes, open-loop latency at half the peak load, failover
under load, leadership transfer, election time and a membership timeline. ``--full`` sweeps clients, requests in
flight, value sizes and cluster sizes (3, 5, 7), latency at several loads, more failovers and the
election-timeout ranges of the Raft paper's Figure 16. ``--pysyncobj`` runs PySyncObj on the same
workload in the same run. Each table is printed, saved as CSV with its configuration and
environment as JSON, and plotted when matplotlib is installed (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import pandas as pd
import ray

from raft_actors.placement import available_slots

from . import elections, load, membership, user_paths
from .common import Baseline, init_ray, ray_baseline, save, show
from .load import Point


def _targets(tables: dict[str, pd.DataFrame], base: Baseline, user: dict[str, Any] | None) -> pd.DataFrame:
    """The project's targets next to what this run measured."""
    rows = []
    if user is not None:
        rows += user_paths.targets(user).to_dict("records")
    tp = tables.get("throughput")
    if tp is not None and not tp.empty:
        # the same load on 3 and 5 nodes
        same = tp[(tp["clients"] == 8) & (tp["in_flight"] == Point.in_flight) & (tp["value_size"] == 16)
                  & (tp["storage"] == "file")].groupby("nodes")["throughput_ops_s"].max()
        if 3 in same and 5 in same:
            ratio = same[5] / same[3]
            rows.append({"target": "5 nodes vs 3 nodes, same load", "goal": ">= 70%",
                         "measured": f"{ratio:.0%} ({same[5]:,.0f} vs {same[3]:,.0f} ops/s)", "met": ratio >= 0.7})
    fo = tables.get("failover")
    if fo is not None and not fo.empty:
        m = statistics.median(fo["unavailable_ms"])
        rows.append({"target": "failover: median unavailability", "goal": "<= 800 ms", "measured": f"{m:.0f} ms",
                     "met": m <= 800})
    tr = tables.get("transfer")
    if tr is not None and not tr.empty:
        m = statistics.median(tr["rtts"])
        rows.append({"target": "leadership transfer: median", "goal": "<= 10 Ray round trips",
                     "measured": f"{statistics.median(tr['ms']):.1f} ms = {m:.1f} round trips", "met": m <= 10})
    return pd.DataFrame(rows)


def run(full: bool = False, out: str | None = None, pysyncobj: bool = False, only: set[str] | None = None,
        address: str | None = None) -> dict[str, Any]:
    """Run the suite (on a local Ray, or on the Ray cluster at ``address``); returns every table
    (and the PySyncObj results, if asked for)."""
    out = out or os.path.join("benchmark-results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    want = only or {"user_paths", "throughput", "latency", "failover", "transfer", "elections", "membership"}
    started = init_ray(address)
    tables: dict[str, pd.DataFrame] = {}
    try:
        base = ray_baseline()
        tables["baseline"] = pd.DataFrame([base.as_dict()])
        show("Ray baselines (every ratio below is to these)", tables["baseline"])
        save(out, "baseline", tables["baseline"], {})

        user = None
        if "user_paths" in want:
            tables["user_paths"], user = user_paths.run(duration=5.0 if full else 4.0, sustained=60.0 if full else 15.0)
            show("the paths users write: one script, 3 nodes, durable, 16-byte values (baselines from this run)",
                 tables["user_paths"])
            save(out, "user_paths", tables["user_paths"], {"raw": user})
            user_paths.plot(user, os.path.join(out, "user_paths.png"))

        if "throughput" in want:
            points = [Point(clients=1, in_flight=1), Point(), Point(nodes=5)]
            if full:
                points = ([Point(clients=1, in_flight=1)]
                          + [Point(clients=c, in_flight=64) for c in (1, 4, 16)]
                          + [Point(clients=8, in_flight=f) for f in (1, 8, 64, 256, 1024)]
                          + [Point(value_size=v) for v in (1024, 16384)]
                          + [Point(nodes=n) for n in (5, 7)]
                          + [Point(storage="memory")])
            slots = available_slots()  # on machines offering slots, each node needs its own
            if slots:
                skipped = sorted({p.nodes for p in points if p.nodes > len(slots)})
                points = [p for p in points if p.nodes <= len(slots)]
                if skipped:
                    print(f"skipping {skipped}-node points: the Ray cluster offers {len(slots)} raft slots")
            tables["throughput"] = load.throughput(points, base, duration=5.0 if full else 4.0)
            show("closed-loop write throughput (16-byte values unless said)", tables["throughput"])
            save(out, "throughput", tables["throughput"], {"points": [p.__dict__ for p in points]})
            load.plot_throughput(tables["throughput"], os.path.join(out, "throughput.png"))

        if "latency" in want:
            tp = tables.get("throughput")
            peak = None if tp is None else float(tp[(tp["nodes"] == 3) & (tp["clients"] > 1)]["throughput_ops_s"].max())
            loads = (0.25, 0.5, 0.75, 0.9) if full else (0.5,)
            tables["latency"] = load.latency(base, loads, peak=peak, duration=5.0 if full else 3.0)
            show("open-loop latency at fixed offered loads (fractions of the peak)", tables["latency"])
            save(out, "latency", tables["latency"], {"loads": loads, "peak": peak})

        if "failover" in want:
            kills = 10 if full else 3
            tables["failover"], ops = load.failover(base, kills=kills, interval=4.0 if full else 3.5)
            show("failover: the leader killed under load (election timeout 300-600 ms)", tables["failover"])
            save(out, "failover", tables["failover"], {"kills": kills})
            load.plot_failover(ops, tables["failover"], os.path.join(out, "failover.png"))

        if "transfer" in want:
            n = 20 if full else 5
            tables["transfer"] = elections.transfer_timing(n, rtt_ms=base.rtt_ms)
            show("graceful leadership transfer", tables["transfer"])
            save(out, "transfer", tables["transfer"], {"transfers": n})

        if "elections" in want:
            ranges = elections.FIGURE16_RANGES if full else ((150, 300),)
            trials, nodes = (20, 5) if full else (5, 3)
            df = elections.election_timing(ranges, trials=trials, nodes=nodes)
            tables["elections"] = df
            tables["elections_summary"] = elections.election_summary(df)
            show(f"time without a leader after the leader crashes ({nodes} nodes)", tables["elections_summary"])
            save(out, "elections", df, {"ranges_ms": ranges, "trials": trials, "nodes": nodes})
            elections.plot_elections(df, os.path.join(out, "elections.png"))

        if "membership" in want:
            preload, runs = (50_000, 3) if full else (20_000, 1)
            tables["membership"] = membership.membership_timeline(preload, runs, rtt_ms=base.rtt_ms)
            show("membership under load: learner added, caught up by snapshot, promoted; leader removed "
                 "(seconds since each call began)", tables["membership"])
            save(out, "membership", tables["membership"], {"preload": preload, "runs": runs})

        sync = None
        if pysyncobj:
            from . import pysyncobj_baseline

            sync = pysyncobj_baseline.run_baseline(seconds=5.0, in_flight=1000, journal_modes=(False,),
                                                   profiles=("stock", "latency", "throughput"))
            if sync.get("available"):
                rows = [{"profile": r["profile"], "journal": r["journal"], "ops_s": r["throughput"]["ops_per_s"],
                         "latency_p50_ms": r["latency"]["median_ms"]} for r in sync["runs"]]
                tables["pysyncobj"] = pd.DataFrame(rows)
                show("PySyncObj on the same workload (1,000 in flight; one write at a time)", tables["pysyncobj"])
                save(out, "pysyncobj", tables["pysyncobj"], {"runs": sync["runs"]})
            else:
                print(f"\nPySyncObj baseline skipped: {sync.get('skipped')}")

        tables["targets"] = _targets(tables, base, user)
        if not tables["targets"].empty:
            show("targets", tables["targets"])
            save(out, "targets", tables["targets"], {})
        print(f"\nresults: {out}/")
        return {"tables": tables, "out": out}
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raft-actors bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the full sweeps (many minutes) instead of the quick suite")
    p.add_argument("--out", help="directory for CSV, JSON and PNG (default: benchmark-results/<time>)")
    p.add_argument("--pysyncobj", action="store_true", help="also run PySyncObj on the same workload (pip install pysyncobj)")
    p.add_argument("--only", nargs="+",
                   choices=["user_paths", "throughput", "latency", "failover", "transfer", "elections", "membership"],
                   help="run only these benchmarks")
    p.add_argument("--address", help="run on an existing Ray cluster (e.g. auto, after ray up cluster.yaml); "
                                     "default: a local Ray started for the run")
    a = p.parse_args(argv)
    run(full=a.full, out=a.out, pysyncobj=a.pysyncobj, only=set(a.only) if a.only else None, address=a.address)
    return 0
