"""Command line: ``raft-actors demo`` and ``raft-actors sim``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raft-actors", description="Raft consensus on Ray actors.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="launch a local cluster, use it, and measure latency, throughput, failover")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    demo.add_argument("--storage", choices=["file", "memory"], default="file",
                      help="durable write-ahead log (default) or memory only")
    sub.add_parser("bench", add_help=False, help="the benchmark suite (quick by default; --full, --pysyncobj, --only ...)")
    sim = sub.add_parser("sim", help="run seeded simulations (deterministic; a failing seed replays exactly)")
    sim.add_argument("--seeds", type=int, default=100, help="how many seeds, from --first")
    sim.add_argument("--first", type=int, default=0)
    sim.add_argument("--nodes", type=int, default=3)
    sim.add_argument("--chaos", action="store_true", help="frequent leader crashes, partitions and loss")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        from benchmarks.suite import main as bench

        return bench(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(num_nodes=args.nodes, seconds=args.seconds, storage=args.storage)
        return 0

    import time

    from .linearizability import check, kv_model
    from .sim import Faults, simulate

    start = time.perf_counter()
    bad = 0
    for seed in range(args.first, args.first + args.seeds):
        res = simulate(seed, num_nodes=args.nodes, faults=Faults.chaos() if args.chaos else Faults())
        lin = check(res.history, kv_model())
        if not res.ok or not lin.ok:
            bad += 1
            print(res.describe())
            if not lin.ok:
                print(lin.describe())
    print(f"{args.seeds} seeds, {bad} failed, {time.perf_counter() - start:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
