"""Load drivers: load generators as Ray actors, closed-loop or open-loop, recording every operation.

:func:`run_load` starts one or more :class:`LoadGenerator` actors (on any machines of the Ray
cluster), starts them together, and returns one row per operation as a ``pandas.DataFrame``;
:func:`summarize` turns that into throughput, latency percentiles and error counts::

    from raft_actors import RaftCluster
    from workloads import LoadSpec, run_load, summarize, write_only

    mix = write_only(value_size=16)
    with RaftCluster.launch(num_nodes=3, state_machine=mix.state_machine) as cluster:
        df = run_load(cluster, LoadSpec(mix, clients=4, in_flight=256, duration=5))
        print(summarize(df))

**Closed loop** (``rate=None``): each of a generator's ``clients`` sessions keeps ``in_flight``
requests outstanding; as one finishes the next starts (``in_flight=1`` is the classic closed
loop of N clients with one request each). Many requests per session are cheaper than many
sessions: a session sends its concurrent calls to the cluster in one Ray call.

**Open loop** (``rate`` ops/s): arrivals follow a Poisson process; each operation is sent at its
scheduled time whether or not earlier ones have finished, spread round-robin over the clients,
and its latency is measured from its *scheduled* time, so a stalled cluster shows up in the
latencies (no coordinated omission). A generator holding ``max_outstanding`` unfinished
operations drops new arrivals, recorded with the outcome ``"overload"``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import ray

from raft_actors import AsyncRaftClient, RaftCluster, RaftConfig
from raft_actors.node import node_actor_name

from .mixes import WRITE, Mix

#: the outcome of an operation that succeeded; any other outcome names the exception it raised
OK = "ok"
#: the outcome of an open-loop arrival dropped because too many operations were outstanding
OVERLOAD = "overload"
#: the columns of :func:`run_load`'s DataFrame
COLUMNS = ["generator", "client", "kind", "start", "sent", "end", "latency", "outcome", "warmup"]

_OPS_BATCH = 1024  # operations drawn from the mix at a time
_ARRIVALS_BATCH = 4096  # open-loop inter-arrival gaps drawn at a time
_MAX_BURST = 256  # open loop: yield to the event loop at least every this many sends
_REFRESH_NODES = 1.0  # seconds between looking up restarted node actors by name
_START_DELAY = 0.5  # seconds between every generator being ready and the common start


@dataclass
class LoadSpec:
    """What load to offer, per generator.

    Attributes:
        mix: the operations (:mod:`workloads.mixes`).
        clients: client sessions per generator.
        in_flight: closed loop: outstanding requests per client session (1: one request each).
        duration: seconds of measured load, after the warmup.
        warmup: seconds of load before the measurement; those operations are recorded, and
            flagged ``warmup`` (by their scheduled start).
        rate: ``None`` for a closed loop; else an open loop offering this many operations per
            second in total, across all generators (each offers ``rate / generators``).
        timeout: deadline of each operation in seconds (``None``: the cluster's
            ``RaftConfig.request_timeout``).
        seed: seeds every generator's random numbers (generator ``i`` uses ``(seed, i)``).
        max_outstanding: open loop: unfinished operations a generator allows before it drops
            new arrivals as ``"overload"``.
        pass_interval: open loop: a generator sends the arrivals due in passes at most this
            many seconds apart, each pass's in one Ray call per client (a Ray call costs far
            more than an operation). An arrival may wait this long for its pass; the wait
            counts in its latency. 0: a pass per arrival.
    """

    mix: Mix
    clients: int = 4
    in_flight: int = 1
    duration: float = 5.0
    warmup: float = 0.0
    rate: float | None = None
    timeout: float | None = None
    seed: int = 0
    max_outstanding: int = 20_000
    pass_interval: float = 0.001

    def __post_init__(self) -> None:
        if self.clients < 1 or self.in_flight < 1 or self.max_outstanding < 1:
            raise ValueError("clients, in_flight and max_outstanding must be >= 1")
        if not self.duration > 0 or self.warmup < 0:
            raise ValueError("duration must be positive and warmup non-negative")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of operations per second, got {self.rate!r}")
        if not 0 <= self.pass_interval < 1:
            raise ValueError(f"pass_interval must be within [0, 1) seconds, got {self.pass_interval!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")

    @property
    def closed_loop(self) -> bool:
        """Whether this is a closed-loop spec (no target rate)."""
        return self.rate is None


class LoadGenerator:
    """Offers a :class:`LoadSpec`'s load to a cluster and records every operation.

    Meant to run as a Ray actor (:func:`run_load` creates them)::

        gen = ray.remote(LoadGenerator).options(num_cpus=0).remote(
            {i: cluster.handle(i) for i in cluster.node_ids}, cluster.config, spec, 0)
        records = ray.get(gen.run.remote(time.time() + 1))

    It builds ``spec.clients`` :class:`~raft_actors.AsyncRaftClient` sessions in its own event
    loop. With ``cluster_name``, it looks the node actors up by name every second, so it also
    reaches a node that :meth:`RaftCluster.restart <raft_actors.RaftCluster.restart>` brought
    back as a new actor during the run.

    Args:
        nodes: the cluster's node handles by node id.
        config: the cluster's :class:`~raft_actors.RaftConfig`.
        spec: the load.
        index: this generator's number (it seeds the random numbers and labels the records).
        generators: how many generators share ``spec.rate``.
        cluster_name: the cluster's name (``RaftCluster.name``), to follow restarted nodes.
        namespace: the Ray namespace of the node actors (``RaftCluster.namespace``; default: this job's).
    """

    def __init__(self, nodes: Mapping[int, Any], config: RaftConfig, spec: LoadSpec, index: int = 0,
                 generators: int = 1, cluster_name: str | None = None, namespace: str | None = None):
        self._nodes = dict(nodes)
        self._config = config
        self._spec = spec
        self._index = index
        self._rate = None if spec.rate is None else spec.rate / generators
        self._cluster_name = cluster_name
        self._namespace = namespace
        self._rng = np.random.default_rng([spec.seed, index])
        self._ops: list = []
        self._op_pos = 0

    async def ready(self) -> int:
        """Returns this generator's process id once it is constructed."""
        return os.getpid()

    async def run(self, start_at: float) -> dict[str, Any]:
        """Wait until the wall-clock time ``start_at`` (``time.time()``), offer the load for
        ``spec.warmup + spec.duration`` seconds, wait for the last operations to end, and return
        the records as plain columns: ``generator`` (int), ``client``, ``start``, ``sent``,
        ``end`` (numpy arrays; wall-clock seconds), ``kind`` and ``outcome`` (lists of str).

        ``start`` is when an operation was due (open loop: its scheduled arrival; closed loop:
        when it was sent, so the same as ``sent``), ``sent`` when it was handed to its client,
        ``end`` when it returned or failed.
        """
        spec = self._spec
        clients = [AsyncRaftClient(self._current_nodes, self._config) for _ in range(spec.clients)]
        refresher = None
        if self._cluster_name is not None:
            refresher = asyncio.get_running_loop().create_task(self._follow_restarts())
        try:
            delay = start_at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stop = start_at + spec.warmup + spec.duration
            if self._rate is None:
                records = await self._closed_loop(clients, stop)
                return self._columns(records, closed=True)
            records = await self._open_loop(clients, start_at, stop)
            return self._columns(records, closed=False)
        finally:
            if refresher is not None:
                refresher.cancel()
            for c in clients:
                await c.aclose()

    # ------------------------------------------------------------------ operations
    def _next_op(self) -> tuple[str, Any]:
        pos = self._op_pos
        if pos >= len(self._ops):
            self._ops = self._spec.mix.ops(self._rng, _OPS_BATCH)
            pos = 0
        self._op_pos = pos + 1
        return self._ops[pos]

    async def _closed_loop(self, clients: list[AsyncRaftClient], stop: float) -> list[tuple]:
        records: list[tuple] = []
        append = records.append
        next_op = self._next_op
        timeout = self._spec.timeout
        consistency = self._spec.mix.read_consistency
        clock = time.time

        async def worker(ci: int, client: AsyncRaftClient) -> None:
            submit, query = client.submit, client.query
            while True:
                t0 = clock()
                if t0 >= stop:
                    return
                kind, payload = next_op()
                try:
                    if kind == WRITE:
                        await submit(payload, timeout)
                    else:
                        await query(payload, consistency, timeout)
                    outcome = OK
                except Exception as exc:  # noqa: BLE001 - every outcome is recorded
                    outcome = type(exc).__name__
                append((ci, kind, t0, clock(), outcome))

        await asyncio.gather(*(worker(ci, c) for ci, c in enumerate(clients) for _ in range(self._spec.in_flight)))
        return records

    async def _open_loop(self, clients: list[AsyncRaftClient], start_at: float, stop: float) -> list[tuple]:
        assert self._rate is not None
        records: list[tuple] = []
        append = records.append
        timeout = self._spec.timeout
        consistency = self._spec.mix.read_consistency
        limit = self._spec.max_outstanding
        clock = time.time
        loop = asyncio.get_running_loop()
        # A pool of worker coroutines, each carrying one operation at a time, grown on demand up
        # to `limit`; an idle worker waits on a future of its own for its next operation. This
        # costs less per operation than a task for each, and bounds the outstanding operations.
        workers: list[asyncio.Task] = []
        idle: list[asyncio.Future] = []
        closing = False

        async def worker(item: tuple[int, str, Any, float] | None) -> None:
            while item is not None:
                ci, kind, payload, due = item
                sent = clock()
                try:
                    if kind == WRITE:
                        await clients[ci].submit(payload, timeout)
                    else:
                        await clients[ci].query(payload, consistency, timeout)
                    outcome = OK
                except Exception as exc:  # noqa: BLE001 - every outcome is recorded
                    outcome = type(exc).__name__
                append((ci, kind, due, sent, clock(), outcome))
                if closing:
                    return
                fut = loop.create_future()
                idle.append(fut)
                item = await fut

        # Arrivals are sent in passes, at most one every `pass_interval` seconds; those of a
        # pass go to the same client (the next one round-robin at every pass), which sends them
        # in one Ray call. A Ray call costs far more than an operation: one per arrival would
        # cap the rate a generator can offer. An arrival waits for its pass (at most
        # `pass_interval`); that wait is part of its latency, measured from when it was due.
        interval = self._spec.pass_interval
        due = start_at
        last_pass = start_at - interval
        ci = 0
        burst = 0
        while True:
            gaps = self._rng.exponential(1.0 / self._rate, size=_ARRIVALS_BATCH).tolist()
            for gap in gaps:
                due += gap
                if due >= stop:
                    break
                wait = due - clock()
                if wait > 0:
                    await asyncio.sleep(max(wait, last_pass + interval - clock()))
                    last_pass = clock()
                    burst = 0
                    ci = (ci + 1) % len(clients)
                elif burst >= _MAX_BURST:  # behind schedule: still let the sent operations run
                    await asyncio.sleep(0)
                    burst = 0
                    ci = (ci + 1) % len(clients)
                burst += 1
                kind, payload = self._next_op()
                if idle:
                    idle.pop().set_result((ci, kind, payload, due))
                elif len(workers) < limit:
                    workers.append(loop.create_task(worker((ci, kind, payload, due))))
                else:  # `limit` operations outstanding: drop this one
                    now = clock()
                    append((ci, kind, due, now, now, OVERLOAD))
            else:
                continue
            break
        closing = True
        for fut in idle:
            fut.set_result(None)
        await asyncio.gather(*workers)
        return records

    def _columns(self, records: list[tuple], closed: bool) -> dict[str, Any]:
        if closed:
            client, kind, start, end, outcome = zip(*records, strict=True) if records else ((),) * 5
            sent = start
        else:
            client, kind, start, sent, end, outcome = zip(*records, strict=True) if records else ((),) * 6
        return {
            "generator": self._index,
            "client": np.asarray(client, dtype=np.int32),
            "kind": list(kind),
            "start": np.asarray(start, dtype=np.float64),
            "sent": np.asarray(sent, dtype=np.float64),
            "end": np.asarray(end, dtype=np.float64),
            "outcome": list(outcome),
        }

    # ------------------------------------------------------------------ restarted nodes
    def _current_nodes(self) -> dict[int, Any]:
        return self._nodes

    async def _follow_restarts(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_REFRESH_NODES)
            self._nodes = await loop.run_in_executor(None, self._look_up_nodes)

    def _look_up_nodes(self) -> dict[int, Any]:
        assert self._cluster_name is not None
        nodes = dict(self._nodes)
        for i in nodes:
            try:
                nodes[i] = ray.get_actor(node_actor_name(self._cluster_name, i), namespace=self._namespace)
            except Exception:  # noqa: BLE001, S112 - killed for good (name released): keep the old handle
                continue
        return nodes


def run_load(cluster: RaftCluster, spec: LoadSpec, generators: int = 1,
             placement: dict[str, Any] | None = None) -> pd.DataFrame:
    """Offer ``spec``'s load to ``cluster`` from ``generators`` :class:`LoadGenerator` actors
    and return every operation, one row each.

    Every generator runs ``spec.clients`` client sessions (so ``generators * spec.clients`` in
    all) and, in an open loop, offers ``spec.rate / generators`` operations per second (so
    ``spec.rate`` in all). The generators start together, at a wall-clock time set once all of
    them are up; each is killed when the run ends. Nodes killed or restarted meanwhile are
    fine: the clients find the new leader, and failed operations are recorded with their error.
    Times are taken with each generator's wall clock (``time.time()``): generators on several
    machines are only as well aligned as those machines' clocks.

    Args:
        cluster: the cluster, running ``spec.mix.state_machine``.
        spec: the load.
        generators: how many generator actors (processes) offer it.
        placement: extra Ray actor options for every generator, e.g.
            ``{"scheduling_strategy": "SPREAD"}`` to spread them over the machines, or
            ``{"resources": {...}}``. They get ``num_cpus=0`` unless this says otherwise.

    Returns:
        A DataFrame with columns ``generator``, ``client`` (its index within the generator),
        ``kind`` (``"write"``/``"read"``), ``start`` (when the operation was due: scheduled
        arrival in an open loop, send time in a closed loop), ``sent`` (handed to the client),
        ``end``, ``latency`` (``end - start``; all times in seconds, relative to the common
        start), ``outcome`` (``"ok"``, ``"overload"`` or the exception's class name, e.g.
        ``"UnknownOutcomeError"``) and ``warmup`` (due within ``spec.warmup``). ``df.attrs``
        holds ``started_at`` (the common start, wall-clock ``time.time()``: subtract it from the
        time of a fault injected during the run to place it on the same axis), the run's
        ``duration``, ``warmup``, ``rate``, ``generators``, ``clients``, ``in_flight`` and
        ``mix`` (for :func:`summarize` and reports).
    """
    if generators < 1:
        raise ValueError("generators must be >= 1")
    nodes = {i: cluster.handle(i) for i in cluster.node_ids}
    namespace = cluster.namespace  # where the node actors are named
    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
    options.update(placement or {})
    actor = ray.remote(LoadGenerator).options(**options)
    gens = [actor.remote(nodes, cluster.config, spec, g, generators, cluster.name, namespace) for g in range(generators)]
    try:
        ray.get([g.ready.remote() for g in gens], timeout=120)
        start_at = time.time() + _START_DELAY
        per_op = spec.timeout if spec.timeout is not None else cluster.config.request_timeout
        parts = ray.get([g.run.remote(start_at) for g in gens],
                        timeout=_START_DELAY + spec.warmup + spec.duration + per_op + 60)
    finally:
        for g in gens:
            ray.kill(g)
    df = _frame(parts, start_at, spec.warmup)
    df.attrs.update(started_at=start_at, duration=spec.duration, warmup=spec.warmup, rate=spec.rate, generators=generators,
                    clients=spec.clients, in_flight=spec.in_flight, mix=spec.mix.describe())
    return df


def _frame(parts: list[dict[str, Any]], start_at: float, warmup: float) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "generator": np.concatenate([np.full(len(p["start"]), p["generator"], dtype=np.int32) for p in parts]),
        "client": np.concatenate([p["client"] for p in parts]),
        "kind": pd.Categorical([k for p in parts for k in p["kind"]], categories=["write", "read"]),
    }
    for name in ("start", "sent", "end"):
        columns[name] = np.concatenate([p[name] for p in parts]) - start_at
    columns["latency"] = columns["end"] - columns["start"]
    columns["outcome"] = pd.Series([o for p in parts for o in p["outcome"]], dtype="category")
    columns["warmup"] = columns["start"] < warmup
    df = pd.DataFrame(columns)
    return df.sort_values("start", kind="stable", ignore_index=True)[COLUMNS]


def summarize(df: pd.DataFrame, duration: float | None = None) -> dict[str, Any]:
    """Throughput, latency and errors of a :func:`run_load` result, leaving out warmup rows.

    ``duration`` (seconds measured) defaults to ``df.attrs["duration"]``, else the span of the
    measured operations' starts.

    Returns a dict: ``ops`` (measured operations), ``ok``, ``throughput`` (ok operations per
    second), ``offered`` (operations started per second), ``p50_ms``, ``p90_ms``, ``p99_ms``,
    ``p999_ms``, ``mean_ms``, ``max_ms`` (latency of the ok operations, in milliseconds; NaN if
    none), ``outcomes`` (``{outcome: count}``, non-zero counts only) and ``error_rate`` (the
    share of measured operations that did not end ``"ok"``).
    """
    measured = df[~df["warmup"].to_numpy(dtype=bool)]
    if duration is None:
        duration = df.attrs.get("duration")
    if duration is None:
        starts = measured["start"]
        duration = float(starts.max() - starts.min()) if len(starts) > 1 else float("nan")
    outcome = measured["outcome"].astype(str).to_numpy()
    is_ok = outcome == OK
    lat_ms = measured["latency"].to_numpy()[is_ok] * 1e3
    n, n_ok = len(measured), int(is_ok.sum())
    names, counts = np.unique(outcome, return_counts=True)
    if len(lat_ms):
        p50, p90, p99, p999 = np.percentile(lat_ms, [50, 90, 99, 99.9]).tolist()
        mean, worst = float(lat_ms.mean()), float(lat_ms.max())
    else:
        p50 = p90 = p99 = p999 = mean = worst = float("nan")
    return {
        "ops": n,
        "ok": n_ok,
        "throughput": n_ok / duration if duration else float("nan"),
        "offered": n / duration if duration else float("nan"),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "p999_ms": p999,
        "mean_ms": mean,
        "max_ms": worst,
        "outcomes": {str(k): int(c) for k, c in zip(names, counts, strict=True)},
        "error_rate": (n - n_ok) / n if n else float("nan"),
    }
