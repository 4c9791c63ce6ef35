"""Shared fixtures: one Ray session for the whole suite (ray.init costs seconds)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from .waiting import wait_until

__all__ = ["cluster_with_keys", "open_session", "read_call", "submit_call", "wait_until"]

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # metrics reach Ray's Prometheus export every second (tests/test_metrics.py reads them back)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="raft_actors_tests",
             _system_config={"metrics_report_interval_ms": 1000})
    yield
    ray.shutdown()


@pytest.fixture
def cluster_factory(ray_session: None, tmp_path) -> Iterator[Callable]:
    """Launch clusters for one test (data under the test's tmp_path); every one of them is shut
    down afterwards and its data deleted."""
    from raft_actors import RaftCluster

    launched = []

    def launch(**kwargs):
        kwargs.setdefault("data_dir", tmp_path / f"cluster-{len(launched)}")
        c = RaftCluster.launch(**kwargs)
        launched.append(c)
        return c

    yield launch
    for c in launched:
        c.shutdown(delete_data=True)


def cluster_with_keys(cluster_factory: Callable, n: int, **kwargs) -> tuple:
    """A cluster launched with ``kwargs`` that has committed ``put(f"k{i}", i)`` for i < ``n``,
    and the client that wrote them."""
    from raft_actors.state_machines import put

    cluster = cluster_factory(num_nodes=kwargs.pop("num_nodes", 3), **kwargs)
    client = cluster.client()
    for i in range(n):
        client.submit(put(f"k{i}", i))
    return cluster, client


def open_session(handle) -> int:
    """Open a client session through node ``handle`` (the leader); returns its id."""
    import ray

    from raft_actors.envelope import OPEN_SESSION_CALL, outcomes_of

    (out,) = outcomes_of(ray.get(handle.submit.remote(OPEN_SESSION_CALL)))
    assert out.ok, out
    return out.value


def submit_call(handle, session, seq: int, *commands, timeout: float = 30):
    """Send one call of ``commands`` (session ``session``, from sequence number ``seq``) to a
    node directly; returns one Outcome per command."""
    import ray

    from raft_actors.envelope import outcomes_of, request_call

    return outcomes_of(ray.get(handle.submit.remote(request_call(session, seq, seq, *commands)), timeout=timeout))


def read_call(handle, mode: str, *queries, timeout: float = 30):
    """Run ``queries`` on a node directly at consistency ``mode``; one Outcome per query."""
    import ray

    from raft_actors.envelope import outcomes_of, query_call

    return outcomes_of(ray.get(handle.read.remote(query_call(*queries), mode), timeout=timeout))
