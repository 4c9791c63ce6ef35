"""The benchmark functions run end to end (tiny sizes; what they measure is not asserted: these
machines are shared and noisy)."""

from __future__ import annotations

from benchmarks import elections, load, membership
from benchmarks.common import ray_baseline


def test_benchmark_functions_run_and_return_their_tables(ray_session: None) -> None:
    base = ray_baseline(samples=20, pipelined=50, in_flight=10)
    assert base.rtt_ms > 0
    tp = load.throughput([load.Point(clients=1, in_flight=4)], base, duration=0.5, warmup=0.2)
    assert len(tp) == 1 and tp["throughput_ops_s"].iloc[0] > 0
    tr = elections.transfer_timing(2, rtt_ms=base.rtt_ms)
    assert len(tr) == 2 and (tr["ms"] > 0).all()
    tl = membership.membership_timeline(preload=2000, runs=1, rtt_ms=base.rtt_ms)
    events = list(tl["event"])
    for step in ("learner added", "caught up", "promoted to voter", "removed from the configuration",
                 "new leader answers"):
        assert step in events
    assert set(membership.summary(tl)["event"]) == set(events)
