"""Command line: ``raft-actors demo``, ``bench``, ``sim`` and ``jepsen``."""

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
    jep = sub.add_parser("jepsen", help="a Jepsen-style test: clients and faults on a live cluster, a verdict, a report")
    jep.add_argument("--nemesis", default="partition,kill,pause",
                     help="comma-separated: partition, kill, pause, net, membership, disk, or all, or none")
    jep.add_argument("--time", type=float, default=60.0, help="seconds of faults and load")
    jep.add_argument("--nodes", type=int, default=3)
    jep.add_argument("--clients", type=int, default=8)
    jep.add_argument("--workload", choices=["register", "counter"], default="register")
    jep.add_argument("--rate", type=float, default=None, help="operations per second in all (default: closed loop)")
    jep.add_argument("--seed", type=int, default=0, help="decides the schedule of faults and the operations")
    jep.add_argument("--consistency", choices=["linearizable", "follower", "stale"], default="linearizable",
                     help="what reads ask for (the history is always checked as linearizable: stale must fail)")
    jep.add_argument("--op-timeout", type=float, default=5.0)
    jep.add_argument("--out", help="report directory (default: jepsen-results/<time>)")
    jep.add_argument("--address", help="an existing Ray cluster (e.g. auto); default: a local Ray")
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
    if args.command == "jepsen":
        return _jepsen(args)

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


def _jepsen(args: argparse.Namespace) -> int:
    import time

    import ray

    from .jepsen import NEMESES, JepsenTest, run, summary, write_report

    names = [n.strip() for n in args.nemesis.split(",") if n.strip()]
    nemeses = tuple(sorted(NEMESES)) if names == ["all"] else () if names == ["none"] else tuple(names)
    test = JepsenTest(nodes=args.nodes, clients=args.clients, duration=args.time, nemeses=nemeses,
                      workload=args.workload, seed=args.seed, rate=args.rate, read_consistency=args.consistency,
                      op_timeout=args.op_timeout)
    out = args.out or f"jepsen-results/{time.strftime('%Y%m%d-%H%M%S')}"
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    try:
        result = run(test)
    finally:
        if started:
            ray.shutdown()
    files = write_report(result, out)
    print(summary(result))
    print(f"report: {out}/ ({', '.join(sorted(files))})")
    if "latency.png" not in files:
        print('no plots: they need matplotlib (python -m pip install "raft-actors[plot]", or ".[plot]" in a checkout)')
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
