"""Workloads: key distributions, operation mixes, and the load generators on a real cluster."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import wait_until
from workloads import (
    COLUMNS,
    OK,
    OVERLOAD,
    CounterMix,
    KVMix,
    LoadGenerator,
    LoadSpec,
    half,
    read_mostly,
    read_only,
    run_load,
    summarize,
    uniform,
    write_only,
    zipfian,
)

N_SAMPLES = 200_000


def _top_share(keys: list[str], n_keys: int, fraction: float = 0.01) -> float:
    """The share of the samples that went to the most frequent ``fraction`` of the keys."""
    counts = np.sort(pd.Series(keys).value_counts().to_numpy())[::-1]
    return counts[: max(1, int(n_keys * fraction))].sum() / len(keys)


# ---------------------------------------------------------------------- keys
def test_zipfian_is_skewed_and_uniform_is_not() -> None:
    z = zipfian(1000, s=0.99)
    keys = z.sample(np.random.default_rng(1), N_SAMPLES)
    assert len(keys) == N_SAMPLES and set(keys) <= {f"k{i}" for i in range(1000)}
    # 1% of the keys take about 39% of the samples (H(10, .99) / H(1000, .99))
    assert _top_share(keys, 1000) > 0.30
    counts = pd.Series(keys).value_counts()
    assert list(counts.index[:3]) == z.hottest(3)
    p = z.probabilities()
    assert p.sum() == pytest.approx(1.0) and p.max() == pytest.approx(p[int(z.hottest(1)[0][1:])])
    # frequencies match the distribution: chi-square over the 50 hottest keys and the rest
    hot = z.hottest(50)
    observed = np.array([counts.get(k, 0) for k in hot] + [N_SAMPLES - counts[hot].sum()])
    expected_p = np.array([p[int(k[1:])] for k in hot] + [1 - sum(p[int(k[1:])] for k in hot)])
    chi2 = (((observed - N_SAMPLES * expected_p) ** 2) / (N_SAMPLES * expected_p)).sum()
    assert chi2 < 100  # 50 degrees of freedom: the 99.99th percentile is about 95

    u = uniform(1000)
    ukeys = u.sample(np.random.default_rng(1), N_SAMPLES)
    assert _top_share(ukeys, 1000) < 0.015
    ucounts = pd.Series(ukeys).value_counts().reindex([f"k{i}" for i in range(1000)], fill_value=0).to_numpy()
    expected = N_SAMPLES / 1000
    assert (((ucounts - expected) ** 2) / expected).sum() < 1200  # 999 dof: mean 999, sd about 45


def test_zipfian_scrambling_and_pickling() -> None:
    plain = zipfian(1000, scramble=False)
    assert plain.hottest(3) == ["k0", "k1", "k2"]
    hot = [int(k[1:]) for k in zipfian(1000).hottest(10)]
    assert hot != sorted(hot) or max(hot) - min(hot) > 10  # spread over the key space
    assert zipfian(1000).hottest(10) == zipfian(1000).hottest(10)  # every process agrees
    z = zipfian(500, s=1.2)
    z.sample(np.random.default_rng(0), 10)  # builds the tables, which must not travel
    copy = pickle.loads(pickle.dumps(z))
    assert copy == z and len(pickle.dumps(z)) < 200
    assert copy.sample(np.random.default_rng(5), 1000) == z.sample(np.random.default_rng(5), 1000)
    assert z.describe() == "zipfian(n=500, s=1.2)" and uniform(7).describe() == "uniform(n=7)"
    with pytest.raises(ValueError):
        zipfian(0)
    with pytest.raises(ValueError):
        zipfian(10, s=0)


# ---------------------------------------------------------------------- mixes
@pytest.mark.parametrize(("factory", "fraction"), [(write_only, 0.0), (half, 0.5), (read_mostly, 0.95),
                                                    (read_only, 1.0)])
def test_kv_mixes_read_fraction_and_values(factory, fraction: float) -> None:
    mix = factory(keys=zipfian(100), value_size=100)
    assert mix.read_fraction == fraction and mix.state_machine.__name__ == "KVStore"
    rng = np.random.default_rng(3)
    ops = [op for _ in range(20) for op in mix.ops(rng, 5_000)]
    reads = [p for kind, p in ops if kind == "read"]
    writes = [p for kind, p in ops if kind == "write"]
    assert len(reads) + len(writes) == len(ops) == 100_000
    assert len(reads) / len(ops) == pytest.approx(fraction, abs=0.01)
    assert all(q[0] == "get" and len(q) == 2 for q in reads)
    assert all(c[0] == "put" and isinstance(c[2], bytes) and len(c[2]) == 100 for c in writes)
    assert {c[1] for c in writes} | {q[1] for q in reads} <= {f"k{i}" for i in range(100)}
    if writes:
        assert len({c[2] for c in writes}) > 1  # values change from batch to batch
    assert mix.describe().startswith(mix.name)


def test_mix_options_and_counter_mix() -> None:
    assert write_only().value_size == 16 and write_only().keys == uniform(1000)
    mix = half(read_consistency="follower")
    assert mix.read_consistency == "follower"
    for bad in ({"read_fraction": 1.5}, {"read_fraction": 0.5, "value_size": -1},
                {"read_fraction": 0.5, "read_consistency": "eventual"}):
        with pytest.raises(ValueError):
            KVMix("bad", **bad)
    c = CounterMix(read_fraction=0.25, increment=3)
    assert c.state_machine.__name__ == "Counter"
    ops = c.ops(np.random.default_rng(0), 40_000)
    assert set(ops) == {("read", ("get",)), ("write", ("add", 3))}
    assert sum(kind == "read" for kind, _ in ops) / len(ops) == pytest.approx(0.25, abs=0.01)
    assert pickle.loads(pickle.dumps(mix)) == mix


# ---------------------------------------------------------------------- drivers
def _check_records(df: pd.DataFrame) -> None:
    assert list(df.columns) == COLUMNS
    assert (df["end"] >= df["sent"]).all() and (df["sent"] >= df["start"] - 1e-6).all()
    assert np.allclose(df["latency"], df["end"] - df["start"])
    ok = df[df["outcome"] == OK]
    assert (ok["latency"] > 0).all()


def test_closed_loop_records_every_op_and_every_write_lands(cluster_factory) -> None:
    from raft_actors import Counter

    cluster = cluster_factory(num_nodes=3, state_machine=Counter)
    spec = LoadSpec(CounterMix(read_fraction=0.3), clients=2, in_flight=8, duration=1.5, warmup=0.3, seed=4)
    df = run_load(cluster, spec, generators=2)
    _check_records(df)
    assert set(df["generator"]) == {0, 1} and set(df["client"]) == {0, 1}
    assert (df["sent"] == df["start"]).all()  # closed loop: due when sent
    assert df["start"].min() >= 0 and df["start"].max() < spec.warmup + spec.duration
    assert df["warmup"].any() and not df["warmup"].all()
    assert (df["warmup"] == (df["start"] < spec.warmup)).all()
    assert (df["outcome"] == OK).all(), df["outcome"].value_counts()
    # exactly once, end to end: every acknowledged increment is in the counter, nothing else is
    writes = int((df["kind"] == "write").sum())
    assert cluster.client().query(("get",)) == writes
    # the read fraction, within 4 standard deviations of a binomial draw (or 0.06)
    assert len(df) > 50
    assert (df["kind"] == "read").mean() == pytest.approx(0.3, abs=max(0.06, 4 * (0.21 / len(df)) ** 0.5))
    # each client kept `in_flight` requests outstanding: far more ops than one at a time allows
    per_client = df.groupby(["generator", "client"]).size()
    assert len(per_client) == 4
    busy = df.groupby(["generator", "client"])["latency"].sum() / (spec.warmup + spec.duration)
    assert (busy > 4).all(), busy  # about 8 requests outstanding at any time

    s = summarize(df)
    measured = df[~df["warmup"]]
    assert s["ops"] == len(measured) == s["ok"] and s["outcomes"] == {OK: len(measured)}
    assert s["throughput"] == pytest.approx(len(measured) / spec.duration)
    assert s["error_rate"] == 0
    lat = measured["latency"] * 1e3
    assert s["p50_ms"] == pytest.approx(lat.quantile(0.5)) and s["p99_ms"] == pytest.approx(lat.quantile(0.99))
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"] == pytest.approx(lat.max())


def test_open_loop_offers_the_rate(cluster_factory) -> None:
    mix = half(keys=zipfian(100))
    cluster = cluster_factory(num_nodes=3, state_machine=mix.state_machine)
    spec = LoadSpec(mix, clients=2, duration=2.0, rate=300.0, seed=1)
    df = run_load(cluster, spec, generators=2)
    _check_records(df)
    assert set(df["generator"]) == {0, 1}
    s = summarize(df)
    assert 300 * 0.8 < s["offered"] < 300 * 1.2  # Poisson: 600 arrivals expected, sd about 25
    assert s["throughput"] == pytest.approx(s["offered"]) and s["error_rate"] == 0
    # each generator offers half of the rate, with exponential gaps between arrivals
    for _, g in df.groupby("generator"):
        gaps = np.diff(np.sort(g["start"].to_numpy()))
        assert gaps.mean() == pytest.approx(1 / 150, rel=0.25)
        assert np.std(gaps) == pytest.approx(gaps.mean(), rel=0.3)  # exponential: sd equals the mean
    assert (df["sent"] - df["start"]).median() < 0.05  # sent on schedule (a few ms, unless the machine is busy)
    assert (df["kind"] == "read").mean() == pytest.approx(0.5, abs=0.08)


class _SlowNode:
    """A stand-in node that answers every call after ``delay`` seconds."""

    def __init__(self, delay: float):
        self.delay = delay

    async def submit(self, payload: bytes) -> bytes:
        from raft_actors.envelope import Outcome, decode_call, encode_results

        await asyncio.sleep(self.delay)
        return encode_results([Outcome(True, 1)] * sum(p[3] for p in decode_call(payload)))


def test_open_loop_latency_counts_from_the_schedule_and_overload_is_recorded(ray_session) -> None:
    """A cluster that takes 0.3 s per call: the open loop still sends on schedule (a closed
    loop would slow down), latencies include the wait, and arrivals beyond the bound of
    outstanding operations are recorded as overload."""
    import ray

    from raft_actors import RaftConfig

    node = ray.remote(_SlowNode).options(num_cpus=0).remote(0.3)
    spec = LoadSpec(CounterMix(), clients=2, duration=1.0, rate=200.0, max_outstanding=40, seed=2)
    gen = ray.remote(LoadGenerator).options(num_cpus=0).remote({1: node}, RaftConfig(), spec, 0)
    try:
        ray.get(gen.ready.remote(), timeout=60)
        start = time.time() + 0.2
        cols = ray.get(gen.run.remote(start), timeout=30)
    finally:
        ray.kill(gen)
        ray.kill(node)
    df = pd.DataFrame({k: v for k, v in cols.items() if k != "generator"})
    assert 140 < len(df) < 260  # every arrival recorded, whatever the latency
    ok, over = df[df["outcome"] == OK], df[df["outcome"] == OVERLOAD]
    assert len(ok) + len(over) == len(df) and len(over) > 20 and 40 <= len(ok) <= 120
    assert (ok["end"] - ok["start"] >= 0.3).all()  # a session opening, then the write: 0.6 s
    assert (df["start"] >= start).all() and (df["start"] < start + 1.0).all()
    assert (over["sent"] == over["end"]).all() and (over["end"] - over["start"]).max() < 0.5  # dropped, not sent


def test_leader_killed_and_restarted_mid_run(cluster_factory) -> None:
    """The leader dies mid-run, then comes back as a new actor and takes the leadership again:
    the load goes on through both, and every acknowledged increment is in the counter once."""
    from raft_actors import Counter

    cluster = cluster_factory(num_nodes=3, state_machine=Counter)
    spec = LoadSpec(CounterMix(), clients=2, in_flight=4, duration=6.0, timeout=3.0)
    result: list[pd.DataFrame] = []
    runner = threading.Thread(target=lambda: result.append(run_load(cluster, spec)))
    runner.start()
    probe = cluster.client()
    wait_until(lambda: probe.query(("get",), consistency="stale") > 10, timeout=20, what="the load to start")
    old = cluster.leader()
    killed_at = time.time()
    cluster.kill(old)
    cluster.leader()
    cluster.restart(old)
    time.sleep(1.5)  # the generator looks restarted nodes up every second
    cluster.transfer_leadership(old)
    transferred_at = time.time()
    runner.join(timeout=60)
    (df,) = result
    _check_records(df)
    t0 = df.attrs["started_at"]
    kill, transfer, end = killed_at - t0, transferred_at - t0, spec.warmup + spec.duration
    assert 0 < kill < transfer, (kill, transfer)
    ok = df[df["outcome"] == OK]
    assert (ok["start"] > kill + 1.0).any(), "no progress after the failover"
    after = df[df["start"] > transfer + 0.5]
    assert (after["outcome"] == OK).all(), after["outcome"].value_counts()  # the new actor is reached
    if transfer < end - 1.5:  # (takes about 3.5 s; on a very busy machine the run may end first)
        assert len(after) > 20
    unknown = int((df["outcome"] == "UnknownOutcomeError").sum())
    assert len(ok) <= probe.query(("get",)) <= len(ok) + unknown
