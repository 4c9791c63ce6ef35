"""The paths users write, measured in one run beside the floors Ray sets for them.

Every row is one way of using a cluster from a script (the driver process), on one fresh
3-node durable cluster with 16-byte values, next to the baselines measured in the same run:

- the Ray round trip of a trivial call to a threaded (sync) actor;
- a bare-Ray skeleton of the write path with its fsyncs (:mod:`benchmarks.skeleton`): the
  floor for one write;
- one writer, one ``submit`` at a time (p50, p99);
- 64 threads with a client each; 64 threads sharing one client;
- one ``AsyncRaftClient`` with 512 coroutines;
- the batch API: one thread, ``submit_many`` of 8,192 commands at a time;
- the load generators of ``raft-actors bench`` (8 sessions x 256 in flight, one Ray actor);
- the same paths through a replicated actor's handle (:mod:`raft_actors.replicated`): one
  ``ray.get(h.put.remote(...))`` at a time, 64 threads sharing the handle, 512 coroutines
  awaiting refs, ``ray.get`` of 8,192 refs, ``ray.get`` of one ``h.put.map`` of 8,192 calls (both
  beside ``submit_many``); each measured in turns with the same path through
  a client of the same cluster, and given as a ratio to it (what the handle adds);
- PySyncObj with its fastest settings (batching, 2 ms tick; no fsync), when installed;
- CPU microseconds per write of each process on the best path, and each node's resident
  memory after a sustained run of it.

``targets(table)`` checks the project's targets against the table: never a timed test, only
a benchmark says whether they are met (these machines are shared and noisy).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pandas as pd
import ray

from raft_actors import RaftCluster, replicated
from raft_actors.state_machines import put

from .common import fresh_cluster, pyplot
from .skeleton import skeleton_write_ms, sync_rtt_ms

VALUE = "v" * 16
BATCH = 8192


#: a blocking write: ``write(k, i)`` is writer ``k``'s ``i``-th write (``k`` -1: a warm-up)
Write = Callable[[int, int], Any]


def _one_writer(write: Write, n: int) -> tuple[float, float]:
    write(-1, 0)
    times = []
    for i in range(n):
        t = time.perf_counter()
        write(0, i)
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99)] * 1e3


def _threads(writes: list[Write], seconds: float) -> float:
    """One thread per write function, each writing one at a time for ``seconds``: writes/s."""
    n = len(writes)
    for w in {id(w): w for w in writes}.values():
        w(-1, 0)  # sessions open before the clock starts
    counts = [0] * n
    start = threading.Barrier(n + 1)
    stop = [0.0]

    def work(k: int) -> None:
        w, i = writes[k], 0
        start.wait()
        while time.perf_counter() < stop[0]:
            w(k, i)
            i += 1
        counts[k] = i

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _asyncio(make: Callable[[], Callable[[int, int], Awaitable[Any]]], coroutines: int, seconds: float) -> float:
    """``coroutines`` coroutines on one event loop, each awaiting one write at a time;
    ``make()`` (called in the loop) gives the write."""

    async def go() -> float:
        write = make()
        await write(-1, 0)
        stop = time.perf_counter() + seconds
        counts = [0]

        async def work(k: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                await write(k, i)
                i += 1
            counts[0] += i

        t0 = time.perf_counter()
        await asyncio.gather(*(work(k) for k in range(coroutines)))
        return counts[0] / (time.perf_counter() - t0)

    return asyncio.run(go())


def _register_put(key: str, value: str) -> tuple:
    """:class:`Register`'s ``put`` as a command a client sends (what its handle sends)."""
    return ("put", (key, value))


def _client_write(client: Any, command: Callable[[str, str], Any] = put) -> Write:
    return lambda k, i: client.submit(command(f"t{k}-{i % 100}", VALUE))


def _handle_write(handle: Any) -> Write:
    return lambda k, i: ray.get(handle.put.remote(f"t{k}-{i % 100}", VALUE))


@replicated
class Register:
    """The replicated actor of the handle's rows: the KV store's put, as a method."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def put(self, key: str, value: str) -> None:
        self.data[key] = value


def _async_client_write(client: Any, command: Callable[[str, str], Any] = put) -> Callable[[int, int], Awaitable[Any]]:
    return lambda k, i: client.submit(command(f"a{k}-{i % 100}", VALUE))


def _replicated_vs_client(duration: float, one_writes: int, rounds: int = 2) -> dict[str, Any]:
    """Each path through a replicated actor's handle and through a client of the same cluster
    (the same commands, ``("put", (key, value))``), measured in turns (client, handle, client,
    handle...): the medians of each. What the handle adds, apart from what the state machine
    costs. Every batch is built in the loop, as a script builds it."""
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        reg = Register.options(data_dir=tmp).remote()
        try:
            cl = reg.cluster
            shared = cl.client()
            keys = [f"m{i % 1000}" for i in range(BATCH)]
            payloads = [VALUE] * BATCH
            client_write = _client_write(shared, _register_put)

            def client_batches() -> dict[str, Any]:  # submit_many of the same commands, built per batch
                return _batches(cl, lambda: len(shared.submit_many([_register_put(k, VALUE) for k in keys])),
                                duration / rounds)

            paths: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                "one_p50_ms": (lambda: _one_writer(client_write, one_writes // rounds)[0],
                               lambda: _one_writer(_handle_write(reg), one_writes // rounds)[0]),
                "threads_shared_s": (lambda: _threads([client_write] * 64, duration / rounds),
                                     lambda: _threads([_handle_write(reg)] * 64, duration / rounds)),
                "asyncio_512_s": (
                    lambda: _asyncio(lambda: _async_client_write(cl.async_client(), _register_put), 512,
                                     duration / rounds),
                    lambda: _asyncio(lambda: lambda k, i: reg.put.remote(f"a{k}-{i % 100}", VALUE), 512,
                                     duration / rounds)),
                "batch_s": (  # (and the driver's CPU per write: batch_driver_us)
                    client_batches,
                    lambda: _batches(cl, lambda: len(ray.get([reg.put.remote(k, VALUE) for k in keys])),
                                     duration / rounds)),
                "map_s": (
                    client_batches,
                    lambda: _batches(cl, lambda: len(ray.get(reg.put.map(keys, payloads))), duration / rounds)),
            }
            out: dict[str, Any] = {"client": {}, "handle": {}}
            for name, (client_path, handle_path) in paths.items():
                runs: dict[str, list[Any]] = {"client": [], "handle": []}
                for _ in range(rounds):
                    runs["client"].append(client_path())
                    runs["handle"].append(handle_path())
                for side, measured in runs.items():
                    if isinstance(measured[0], dict):  # a batch path: writes/s and the driver's CPU per write
                        out[side][name.removesuffix("_s") + "_driver_us"] = statistics.median(m["driver_us"] for m in measured)
                        measured = [m["writes_s"] for m in measured]
                    out[side][name] = statistics.median(measured)
            return out
        finally:
            reg.cluster.shutdown(delete_data=True)


def _cpu(cl: RaftCluster) -> dict[int, float]:
    return {int(i): float(v) for i, v in cl.status()["cpu_s"].items()}


def _batches(cl: RaftCluster, one_batch: Callable[[], int], seconds: float, samples: int = 0) -> dict[str, Any]:
    """One thread, ``one_batch()`` (a batch of writes, returning how many) over and over:
    writes/s and CPU per write of each process; with ``samples``, each node's resident memory
    that many times along the run."""
    one_batch()
    leader = cl.leader()
    cpu0, dcpu0 = _cpu(cl), time.process_time()
    rss: list[dict[int, int]] = []
    n, t0 = 0, time.perf_counter()
    next_sample = t0
    while (now := time.perf_counter()) - t0 < seconds:
        if samples and now >= next_sample:
            rss.append({int(i): int(v) for i, v in cl.status()["rss_bytes"].items()})
            next_sample += seconds / samples
        n += one_batch()
    elapsed = time.perf_counter() - t0
    cpu1, dcpu = _cpu(cl), time.process_time() - dcpu0
    nodes = {i: (cpu1[i] - cpu0[i]) / n * 1e6 for i in cpu1}
    out = {"writes_s": n / elapsed, "driver_us": dcpu / n * 1e6, "leader_us": nodes[leader],
           "followers_us": [v for i, v in sorted(nodes.items()) if i != leader]}
    if samples:
        rss.append({int(i): int(v) for i, v in cl.status()["rss_bytes"].items()})
        out["rss"] = rss
    return out


def run(duration: float = 4.0, sustained: float = 15.0, pysyncobj: bool = True, one_writes: int = 500,
        skeleton_samples: int = 400) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measure every path (see the module doc). Returns the table (one row per path: the
    value, its unit, and its ratio to the baseline it is compared with) and the raw numbers."""
    raw: dict[str, Any] = {}
    raw["sync_rtt_ms"] = sync_rtt_ms()
    raw["skeleton_p50_ms"], raw["skeleton_p99_ms"] = skeleton_write_ms(skeleton_samples)
    with fresh_cluster(3) as cl:
        shared = cl.client()
        raw["one_p50_ms"], raw["one_p99_ms"] = _one_writer(_client_write(shared), one_writes)
        raw["threads_own_s"] = _threads([_client_write(cl.client()) for _ in range(64)], duration)
        raw["threads_shared_s"] = _threads([_client_write(shared)] * 64, duration)
        raw["asyncio_512_s"] = _asyncio(lambda: _async_client_write(cl.async_client()), 512, duration)
        cmds = [put(f"m{i % 1000}", VALUE) for i in range(BATCH)]
        raw["batch"] = _batches(cl, lambda: len(shared.submit_many(cmds)), duration)
        raw["sustained"] = _batches(cl, lambda: len(shared.submit_many(cmds)), sustained, samples=6)
        raw["sustained_s"] = sustained
    raw["replicated"] = _replicated_vs_client(duration, one_writes)
    from workloads import LoadSpec, run_load, summarize, write_only

    with fresh_cluster(3) as cl:
        spec = LoadSpec(write_only(value_size=16), clients=8, in_flight=256, duration=duration, warmup=1.0)
        raw["generators_s"] = summarize(run_load(cl, spec))["throughput"]
    raw["pysyncobj"] = None
    if pysyncobj:
        from . import pysyncobj_baseline

        if pysyncobj_baseline.available():
            r = pysyncobj_baseline.run_throughput(seconds=duration, in_flight=1000, profile="throughput")
            raw["pysyncobj"] = {"ops_s": r["ops_per_s"], "settings": r.get("settings")}
    return table(raw), raw


def table(raw: dict[str, Any]) -> pd.DataFrame:
    """The rows of the ``user_paths`` table from :func:`run`'s raw numbers."""
    rtt, skel = raw["sync_rtt_ms"], raw["skeleton_p50_ms"]
    b = raw["batch"]
    best = max(b["writes_s"], raw["generators_s"])
    sync = raw.get("pysyncobj")
    rows = [
        ("Ray round trip, threaded actor", rtt, "ms", "1.00x RTT"),
        ("bare-Ray write skeleton (3 actors, 3 fsyncs), p50", skel, "ms", f"{skel / rtt:.2f}x RTT"),
        ("one writer, submit() at a time, p50", raw["one_p50_ms"], "ms",
         f"{raw['one_p50_ms'] / skel:.2f}x skeleton, {raw['one_p50_ms'] / rtt:.2f}x RTT"),
        ("one writer, submit() at a time, p99", raw["one_p99_ms"], "ms", f"{raw['one_p99_ms'] / skel:.2f}x skeleton"),
        ("64 threads, a client each", raw["threads_own_s"], "writes/s", f"{raw['threads_own_s'] * rtt / 1e3:.1f}x 1/RTT"),
        ("64 threads, one shared client", raw["threads_shared_s"], "writes/s",
         f"{raw['threads_shared_s'] * rtt / 1e3:.1f}x 1/RTT"),
        ("one AsyncRaftClient, 512 coroutines", raw["asyncio_512_s"], "writes/s",
         f"{raw['asyncio_512_s'] * rtt / 1e3:.1f}x 1/RTT"),
        ("batch API: submit_many(8192), one thread", b["writes_s"], "writes/s", f"{b['writes_s'] * rtt / 1e3:.1f}x 1/RTT"),
        ("load generators (8 sessions x 256 in flight)", raw["generators_s"], "writes/s",
         f"{raw['generators_s'] * rtt / 1e3:.1f}x 1/RTT"),
    ]
    rep = raw.get("replicated")
    if rep:
        c, h = rep["client"], rep["handle"]
        rows += [
            ("replicated actor: ray.get(h.put.remote()) one at a time, p50", h["one_p50_ms"], "ms",
             f"{h['one_p50_ms'] / c['one_p50_ms']:.2f}x the same cluster's client ({c['one_p50_ms']:.2f})"),
            ("replicated actor: 64 threads, one handle", h["threads_shared_s"], "writes/s",
             f"{h['threads_shared_s'] / c['threads_shared_s']:.2f}x its client ({c['threads_shared_s']:,.0f})"),
            ("replicated actor: 512 coroutines awaiting h.put.remote()", h["asyncio_512_s"], "writes/s",
             f"{h['asyncio_512_s'] / c['asyncio_512_s']:.2f}x its client ({c['asyncio_512_s']:,.0f})"),
            (f"replicated actor: ray.get([h.put.remote() x {BATCH}]), one thread", h["batch_s"], "writes/s",
             (f"{h['batch_s'] / c['batch_s']:.2f}x its submit_many ({c['batch_s']:,.0f}); driver "
              f"{h['batch_driver_us']:.1f} vs {c['batch_driver_us']:.1f} us/write")),
            (f"replicated actor: ray.get(h.put.map(keys, values)) of {BATCH}, one thread", h["map_s"], "writes/s",
             (f"{h['map_s'] / c['map_s']:.2f}x its submit_many ({c['map_s']:,.0f}); driver "
              f"{h['map_driver_us']:.1f} vs {c['map_driver_us']:.1f} us/write")),
        ]
    if sync:
        rows.append(("PySyncObj, fastest settings, no fsync", sync["ops_s"], "writes/s",
                     f"best path = {best / sync['ops_s']:.2f}x it"))
    total = b["driver_us"] + b["leader_us"] + sum(b["followers_us"])
    rows.append(("CPU per write at peak (batch API), all processes", total, "us",
                 f"driver {b['driver_us']:.1f} + leader {b['leader_us']:.1f} + followers "
                 + " + ".join(f"{f:.1f}" for f in b["followers_us"])))
    rss = raw["sustained"]["rss"]
    first, last = rss[1] if len(rss) > 1 else rss[0], rss[-1]
    secs = raw.get("sustained_s", 0)
    for node in sorted(last):
        rows.append((f"node {node} resident memory after {secs:.0f} s of the batch API", last[node] / 2**20, "MiB",
                     f"{(last[node] - first[node]) / 2**20:+.1f} MiB over the run"))
    return pd.DataFrame(rows, columns=["path", "value", "unit", "ratio"])


def targets(raw: dict[str, Any]) -> pd.DataFrame:
    """The issue's targets for these paths against what :func:`run` measured."""
    rtt, skel = raw["sync_rtt_ms"], raw["skeleton_p50_ms"]
    b = raw["batch"]
    best = max(b["writes_s"], raw["generators_s"])
    rows = [
        ("best path, durable writes/s", ">= 100,000", f"{best:,.0f}", best >= 100_000),
        ("one writer p50 vs bare-Ray skeleton", "<= 1.25x", f"{raw['one_p50_ms'] / skel:.2f}x",
         raw["one_p50_ms"] <= 1.25 * skel),
        ("one writer p50 vs sync-actor round trip", "<= 4x", f"{raw['one_p50_ms'] / rtt:.2f}x",
         raw["one_p50_ms"] <= 4 * rtt),
        ("64 threads, a client each", ">= 8,000/s", f"{raw['threads_own_s']:,.0f}/s", raw["threads_own_s"] >= 8000),
        ("64 threads, one shared client", ">= 8,000/s", f"{raw['threads_shared_s']:,.0f}/s",
         raw["threads_shared_s"] >= 8000),
        ("one asyncio client, 512 coroutines", ">= 40,000/s", f"{raw['asyncio_512_s']:,.0f}/s",
         raw["asyncio_512_s"] >= 40_000),
    ]
    total = b["driver_us"] + b["leader_us"] + sum(b["followers_us"])
    rows.append(("CPU per write at peak, all processes", "<= 15 us", f"{total:.1f} us", total <= 15))
    sync = raw.get("pysyncobj")
    if sync:
        rows.append(("best path vs tuned PySyncObj (same run)", ">= 1.3x", f"{best / sync['ops_s']:.2f}x",
                     best >= 1.3 * sync["ops_s"]))
    rep = raw.get("replicated")
    if rep:
        c, h = rep["client"], rep["handle"]
        ratios = {"one writer": c["one_p50_ms"] / h["one_p50_ms"],
                  "64 threads": h["threads_shared_s"] / c["threads_shared_s"],
                  "asyncio": h["asyncio_512_s"] / c["asyncio_512_s"], "batch, a ref per call": h["batch_s"] / c["batch_s"],
                  "batch, map": h["map_s"] / c["map_s"]}
        worst = min(ratios, key=ratios.__getitem__)
        rows.append(("replicated-actor handle vs client, each path (speed ratio, in turns)", ">= 0.9x on every path",
                     f"worst {ratios[worst]:.2f}x ({worst})", ratios[worst] >= 0.9))
    rss = raw["sustained"]["rss"]
    half = rss[len(rss) // 2]
    grew = max((rss[-1][i] - half[i]) / half[i] for i in rss[-1])
    rows.append(("node memory over the second half of the sustained run", "bounded (< 10% growth)",
                 f"{grew:+.1%}", grew < 0.10))
    return pd.DataFrame(rows, columns=["target", "goal", "measured", "met"])


def plot(raw: dict[str, Any], path: str) -> None:
    """Throughput of each path beside the others (PNG), if matplotlib is installed."""
    plt = pyplot()
    if plt is None:
        return
    names = ["64 threads, own", "64 threads, shared", "asyncio x512", "submit_many", "load generators"]
    vals = [raw["threads_own_s"], raw["threads_shared_s"], raw["asyncio_512_s"], raw["batch"]["writes_s"],
            raw["generators_s"]]
    if raw.get("pysyncobj"):
        names.append("PySyncObj (no fsync)")
        vals.append(raw["pysyncobj"]["ops_s"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, vals, color=["#4c72b0"] * 5 + ["#999999"] * (len(vals) - 5))
    ax.set_xlabel("durable writes per second (3 nodes, 16-byte values)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:  # pragma: no cover - a script
    import json

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        df, raw = run()
        print(df.to_string(index=False))
        print(targets(raw).to_string(index=False))
        print(json.dumps(raw, default=str)[:2000])
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":  # pragma: no cover
    main()
