"""Run a Jepsen-style test against a live cluster: clients, a nemesis, a history, a verdict."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..client import AsyncRaftClient
from ..cluster import RaftCluster
from ..config import RaftConfig
from ..errors import CommandError, RaftError, RaftTimeoutError, UnknownOutcomeError
from ..linearizability import CheckResult, Operation, check
from .nemesis import NEMESES, Context, Fault
from .workload import WORKLOADS, Workload

log = logging.getLogger(__name__)


@dataclass
class JepsenTest:
    """What to run.

    Attributes:
        nodes: cluster size (when the test launches the cluster).
        clients: concurrent clients, each a session with one operation outstanding at a time.
        duration: seconds of faults and load.
        nemeses: names from :data:`~raft_actors.jepsen.nemesis.NEMESES` (mixed: each fault
            picks one at random); empty: no faults.
        workload: a :class:`~raft_actors.jepsen.workload.Workload`, or the name of one
            (``"register"``, ``"counter"``).
        seed: decides the schedule of faults and the clients' operations.
        rate: operations per second for all clients together (``None``: closed loop, each
            client starts its next operation as its last one ends).
        read_consistency: what reads ask for. The history is always checked as linearizable, so
            ``"stale"`` is expected to fail the check (the suite's own mutation check).
        op_timeout: seconds each operation may take (a write still pending then has an unknown
            outcome; so has one cut by a fault).
        interval: seconds between the end of a fault and the start of the next (low, high).
        settle: seconds at most to wait, after healing, for the cluster to agree again.
        config: the cluster's settings (when the test launches it).
        checker_timeout: seconds at most for the linearizability check (then: unknown).
    """

    nodes: int = 3
    clients: int = 8
    duration: float = 30.0
    nemeses: tuple[str, ...] = ("partition", "kill", "pause")
    workload: Workload | str = "register"
    seed: int = 0
    rate: float | None = None
    read_consistency: str = "linearizable"
    op_timeout: float = 5.0
    interval: tuple[float, float] = (1.0, 3.0)
    settle: float = 20.0
    config: RaftConfig | None = None
    checker_timeout: float = 120.0

    def __post_init__(self) -> None:
        unknown = [n for n in self.nemeses if n not in NEMESES]
        if unknown:
            raise ValueError(f"unknown nemesis {unknown}; choose from {sorted(NEMESES)}")
        if isinstance(self.workload, str):
            if self.workload not in WORKLOADS:
                raise ValueError(f"unknown workload {self.workload!r}; choose from {sorted(WORKLOADS)}")
            self.workload = WORKLOADS[self.workload]()
        if self.nodes < 1 or self.clients < 1 or not self.duration > 0:
            raise ValueError("nodes and clients must be >= 1 and duration positive")
        if "kill" in self.nemeses and self.nodes < 3:
            raise ValueError("killing nodes needs 3 nodes or more")


@dataclass
class JepsenResult:
    """What a run found.

    ``verdict`` is ``"linearizable"``, ``"not linearizable"`` or ``"unknown"`` (the checker ran
    out of time); ``ops`` has one row per operation (client, kind, input, start, end, outcome:
    ``ok``, ``fail`` (it did not happen) or ``info`` (unknown outcome), output, error);
    ``faults`` the fault timeline; ``check`` the checker's result (its ``to_html`` draws the
    history); ``history`` what was checked.
    """

    test: JepsenTest
    verdict: str
    ops: pd.DataFrame
    faults: pd.DataFrame
    check: CheckResult | None
    history: list[Operation]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"

    def counts(self) -> pd.DataFrame:
        """Operations by kind and outcome."""
        if self.ops.empty:
            return pd.DataFrame(columns=["kind", "ok", "fail", "info"])
        c = self.ops.groupby(["kind", "outcome"]).size().unstack(fill_value=0)
        for col in ("ok", "fail", "info"):
            if col not in c.columns:
                c[col] = 0
        return c[["ok", "fail", "info"]].reset_index()


class _Recorder:
    """Every operation the clients make, as they make it (thread-safe)."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.rows: list[dict[str, Any]] = []
        self.history: list[Operation] = []
        self._lock = threading.Lock()

    def add(self, client: Any, kind: str, inp: Any, start: float, end: float | None, outcome: str,
            output: Any = None, error: str = "") -> None:
        with self._lock:
            self.rows.append({"client": client, "kind": kind, "input": repr(inp), "start": start, "end": end,
                              "latency_ms": None if end is None else (end - start) * 1e3, "outcome": outcome,
                              "output": repr(output) if outcome == "ok" else "", "error": error})
            if outcome == "ok":
                self.history.append(Operation(client, inp, start, end, output))
            elif outcome == "info" and kind == "write":
                self.history.append(Operation(client, inp, start, None))


async def _client_loop(k: int, client: AsyncRaftClient, test: JepsenTest, wl: Workload, rec: _Recorder,
                       stop: threading.Event, rng: random.Random) -> None:
    n = 0
    gap = None if test.rate is None else test.clients / test.rate
    clock = time.monotonic
    while not stop.is_set():
        n += 1
        kind, inp = wl.make_op(rng, k, n)
        start = clock() - rec.t0
        try:
            if kind == "write":
                out = await client.submit(inp, timeout=test.op_timeout)
            else:
                out = await client.query(inp, consistency=test.read_consistency, timeout=test.op_timeout)
            rec.add(k, kind, inp, start, clock() - rec.t0, "ok", out)
        except CommandError as exc:  # the command ran and raised: that is its result
            rec.add(k, kind, inp, start, clock() - rec.t0, "ok", f"error:{exc.exc_type}")
        except UnknownOutcomeError as exc:
            # a write that may have happened (any time from now on); a read that saw nothing
            rec.add(k, kind, inp, start, None, "info" if kind == "write" else "fail", error=type(exc).__name__)
        except (RaftTimeoutError, RaftError) as exc:  # it did not happen
            rec.add(k, kind, inp, start, clock() - rec.t0, "fail", error=type(exc).__name__)
        if gap is not None:
            await asyncio.sleep(rng.expovariate(1.0 / gap))


def _run_clients(cluster: RaftCluster, test: JepsenTest, rec: _Recorder, stop: threading.Event) -> None:
    wl = test.workload
    assert isinstance(wl, Workload)

    async def main() -> None:
        clients = [cluster.async_client() for _ in range(test.clients)]
        rngs = [random.Random(f"{test.seed}/client/{k}") for k in range(test.clients)]
        await asyncio.gather(*(_client_loop(k, c, test, wl, rec, stop, r) for k, (c, r) in enumerate(zip(clients, rngs))))

    asyncio.run(main())


def _nemesis_loop(ctx: Context, test: JepsenTest, faults: list[Fault], stop_at: float) -> None:
    rng = ctx.rng
    nemeses = [NEMESES[n]() for n in test.nemeses]
    if not nemeses:
        return
    while True:
        time.sleep(rng.uniform(*test.interval))
        nem = rng.choice(nemeses)
        if ctx.now() + nem.hold[0] >= stop_at:
            return  # no time left to hold a fault of this kind
        start = ctx.now()
        try:
            fault = nem.start(ctx)
        except Exception as exc:  # noqa: BLE001 - a fault that could not be made is recorded, not fatal
            log.warning("nemesis %s could not start: %s", nem.name, exc)
            faults.append(Fault(nem.name, f"could not start: {type(exc).__name__}: {exc}"[:200], start, ctx.now()))
            continue
        if fault is None:
            continue
        fault.start = start
        faults.append(fault)
        hold = rng.uniform(*nem.hold)
        time.sleep(max(0.0, min(hold, stop_at - ctx.now())))
        try:
            nem.stop(ctx, fault)
        except Exception as exc:  # noqa: BLE001 - the final heal repairs what this could not
            fault.detail = (fault.detail + f" stop failed: {type(exc).__name__}: {exc}")[:300]
        fault.end = ctx.now()


def heal_all(cluster: RaftCluster, timeout: float = 30.0) -> None:
    """Undo every fault: heal the network, resume paused processes, clear disk faults, restart
    dead nodes; then wait for a leader."""
    with contextlib.suppress(RaftError):
        cluster.heal()
    for node in cluster.node_ids:
        with contextlib.suppress(Exception):
            cluster.resume(node)
    st = cluster.status()
    for node in cluster.node_ids:
        role = st.loc[node, "role"] if node in st.index else "dead"
        if role in ("dead", "unreachable", "failed"):
            with contextlib.suppress(RaftError, Exception):
                cluster.restart(node, timeout=timeout)
    cluster.leader(timeout=timeout)


def _settle(cluster: RaftCluster, timeout: float) -> bool:
    """Wait until every member has applied the same index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            st = cluster.status()
            members = [i for i in st.index if st.loc[i, "role"] not in ("removed", "non-voter")]
            applied = st.loc[members, "applied_index"]
            if applied.notna().all() and applied.nunique() == 1:
                return True
        time.sleep(0.2)
    return False


def run(test: JepsenTest, cluster: RaftCluster | None = None) -> JepsenResult:
    """Run ``test`` on ``cluster`` (or on a cluster it launches, and shuts down at the end):
    clients and the nemesis for ``test.duration`` seconds, then heal, settle, read the final
    state, and check the whole history for linearizability."""
    wl = test.workload
    assert isinstance(wl, Workload)
    own = cluster is None
    if cluster is None:
        cluster = RaftCluster.launch(test.nodes, wl.state_machine, test.config)
    try:
        t0 = time.monotonic()
        rec = _Recorder(t0)
        stop = threading.Event()
        faults: list[Fault] = []
        ctx = Context(cluster, random.Random(f"{test.seed}/nemesis"), t0)
        clients = threading.Thread(target=_run_clients, args=(cluster, test, rec, stop), name="jepsen-clients")
        clients.start()
        try:
            _nemesis_loop(ctx, test, faults, test.duration)
            remaining = test.duration - ctx.now()
            if remaining > 0:
                time.sleep(remaining)
            heal_start = ctx.now()
            heal_all(cluster)
            faults.append(Fault("heal", "heal everything, restart the dead", heal_start, ctx.now()))
            settled = _settle(cluster, test.settle)
        finally:
            stop.set()
            clients.join(test.op_timeout * 3 + 30)
        final = _final_reads(cluster, wl, rec, test)
        stats = {"settled": settled, "final_reads": final, "seconds": ctx.now()}
        verdict, result = "unknown", None
        t = time.monotonic()
        try:
            result = check(rec.history, wl.model, timeout=test.checker_timeout)
            verdict = "linearizable" if result.ok else "not linearizable"
        except TimeoutError as exc:
            stats["checker"] = str(exc)
        stats["check_s"] = time.monotonic() - t
        ops = pd.DataFrame(rec.rows, columns=["client", "kind", "input", "start", "end", "latency_ms", "outcome",
                                              "output", "error"])
        fl = pd.DataFrame([{"nemesis": f.nemesis, "what": f.what, "start": f.start, "end": f.end, "nodes": f.nodes,
                            "detail": f.detail} for f in faults],
                          columns=["nemesis", "what", "start", "end", "nodes", "detail"])
        return JepsenResult(test, verdict, ops, fl, result, rec.history, stats)
    finally:
        if own:
            cluster.shutdown(delete_data=True)


def _final_reads(cluster: RaftCluster, wl: Workload, rec: _Recorder, test: JepsenTest) -> int:
    """Read the whole state once everything healed (linearizable reads, retried until they
    succeed): a write acknowledged and then lost shows here."""
    client = cluster.client()
    done = 0
    for q in wl.final_reads:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            start = time.monotonic() - rec.t0
            try:
                out = client.query(q, timeout=5)
            except RaftError:
                continue
            rec.add("final", "read", q, start, time.monotonic() - rec.t0, "ok", out)
            done += 1
            break
    return done
