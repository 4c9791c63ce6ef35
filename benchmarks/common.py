"""What every benchmark shares: the Ray baselines, where results go, tables, plots, progress bars.

Every number a benchmark reports is also given as a ratio to baselines measured in the same run
on the same machine (:func:`ray_baseline`): the round trip of a trivial call to an async Ray actor
(what one Raft message costs at least) and the rate of such calls pipelined (what Ray alone can
carry). Results are saved as CSV, with the run's configuration and environment as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
import ray
from tabulate import tabulate

from raft_actors import KVStore, RaftCluster, RaftConfig
from raft_actors.demo import ray_round_trip

T = TypeVar("T")


class _Echo:
    """An async actor, as every Raft node is, that answers at once."""

    async def ping(self, x: int = 0) -> int:
        return x


@dataclass(frozen=True)
class Baseline:
    """Ray's own costs on this machine, now."""

    rtt_ms: float  #: median round trip of one call to an async actor
    pipelined_calls_s: float  #: calls per second to one async actor with many in flight

    def as_dict(self) -> dict[str, float]:
        return {"ray_rtt_ms": self.rtt_ms, "ray_pipelined_calls_s": self.pipelined_calls_s}


def ray_baseline(samples: int = 300, pipelined: int = 3000, in_flight: int = 200) -> Baseline:
    """Measure the Ray actor round trip (median of ``samples`` calls one at a time) and the
    pipelined call rate (``pipelined`` calls, ``in_flight`` at a time) on a fresh async actor."""
    echo = ray.remote(_Echo).options(num_cpus=0, max_concurrency=1000).remote()
    try:
        rtt = ray_round_trip(echo, samples)

        async def pipeline() -> float:
            sem = asyncio.Semaphore(in_flight)

            async def one(i: int) -> None:
                async with sem:
                    await echo.ping.remote(i)

            t = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(pipelined)))
            return pipelined / (time.perf_counter() - t)

        return Baseline(rtt * 1e3, asyncio.run(pipeline()))
    finally:
        ray.kill(echo)


def environment() -> dict[str, Any]:
    """Versions and machine of this run."""
    import raft_actors

    return {"python": platform.python_version(), "ray": ray.__version__, "raft_actors": raft_actors.__version__,
            "cores": os.cpu_count(), "platform": platform.platform(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save(out: str, name: str, df: pd.DataFrame, config: dict[str, Any]) -> None:
    """Write ``df`` to ``<out>/<name>.csv`` and ``config`` with the environment to ``<name>.json``."""
    os.makedirs(out, exist_ok=True)
    df.to_csv(os.path.join(out, f"{name}.csv"), index=False)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"benchmark": name, "config": config, "environment": environment()}, f, indent=2, default=str)


def show(title: str, df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """Print ``df`` as a table under ``title``; returns the text."""
    text = f"\n## {title}\n\n" + tabulate(df, headers="keys", tablefmt="github", floatfmt=floatfmt, showindex=False)
    print(text)
    return text


def pyplot() -> Any:
    """matplotlib's pyplot (headless), or ``None`` if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar on stderr."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


@contextmanager
def fresh_cluster(nodes: int, config: RaftConfig | None = None, storage: str = "file") -> Iterator[RaftCluster]:
    """A fresh KV cluster with its data in a temporary directory, deleted afterwards on every
    machine (on a multi-machine Ray too)."""
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        cl = RaftCluster.launch(nodes, KVStore, config, storage=storage, data_dir=tmp)  # type: ignore[arg-type]
        try:
            yield cl
        finally:
            cl.shutdown(delete_data=True)


def init_ray(address: str | None = None) -> bool:
    """Start or join Ray for a benchmark run (``address``: an existing cluster, e.g. ``"auto"``);
    whether this call did it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True
