"""Bare-Ray baselines for the paths users write: what Ray alone costs, measured in the same run.

- :func:`sync_rtt_ms`: the round trip of a trivial call to a threaded (sync) Ray actor, the kind
  a Raft node is.
- :func:`skeleton_write_ms`: a *skeleton* of one durable write with no Raft in it: the client
  calls the leader actor; the leader sends the payload to two follower actors and appends and
  fsyncs it to its own file meanwhile; each follower appends and fsyncs it and answers; the
  leader answers the client once it has synced and one follower has answered. The same hops
  and fsyncs as a Raft write, with nothing else: the floor a Raft library on Ray can reach.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import ray


class _SyncEcho:
    def ping(self, x: Any = None) -> Any:
        return x


class _SkeletonNode:
    """One node of the skeleton: a threaded actor that appends and fsyncs to a file."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._followers: list[Any] = []

    def set_followers(self, followers: list[Any]) -> None:
        self._followers = followers

    def append(self, payload: bytes) -> bool:
        os.write(self._fd, payload)
        os.fdatasync(self._fd)
        return True

    def write(self, payload: bytes) -> bool:
        refs = [f.append.remote(payload) for f in self._followers]  # they write while we do
        self.append(payload)
        ray.wait(refs, num_returns=1)
        return True


def sync_rtt_ms(samples: int = 300) -> float:
    """Median round trip (ms) of a trivial call to a threaded Ray actor."""
    echo = ray.remote(_SyncEcho).options(num_cpus=0, max_concurrency=16).remote()
    try:
        ray.get(echo.ping.remote())
        times = []
        for _ in range(samples):
            t = time.perf_counter()
            ray.get(echo.ping.remote(b"x"))
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3
    finally:
        ray.kill(echo)


def skeleton_write_ms(samples: int = 300, payload_size: int = 64) -> tuple[float, float]:
    """Median and 99th percentile (ms) of one write through the skeleton, one at a time."""
    with tempfile.TemporaryDirectory(prefix="raft-skeleton-") as tmp:
        cls = ray.remote(_SkeletonNode).options(num_cpus=0, max_concurrency=16)
        nodes = [cls.remote(os.path.join(tmp, f"node-{i}.log")) for i in range(3)]
        try:
            ray.get(nodes[0].set_followers.remote(nodes[1:]))
            payload = b"x" * payload_size
            for _ in range(20):
                ray.get(nodes[0].write.remote(payload))
            times = []
            for _ in range(samples):
                t = time.perf_counter()
                ray.get(nodes[0].write.remote(payload))
                times.append(time.perf_counter() - t)
            times.sort()
            return statistics.median(times) * 1e3, times[int(len(times) * 0.99)] * 1e3
        finally:
            for n in nodes:
                ray.kill(n)
