"""A storage wrapper that measures what persistence costs: fsyncs, their time, their batch size."""

from __future__ import annotations

import errno
import statistics
import time
from collections import deque
from typing import Any

from ..core.messages import Entry


class MeteredStorage:
    """Wraps any :class:`~raft_actors.storage.base.Storage`, timing each :meth:`sync`.

    Everything else is passed through. :meth:`stats` summarizes the last ``window`` syncs that
    had something to write (medians, not means: these machines are noisy).
    """

    def __init__(self, storage: Any, window: int = 10_000):
        self.inner = storage
        self._times: deque[float] = deque(maxlen=window)
        self._batch: deque[int] = deque(maxlen=window)
        self._entries = 0
        self.syncs = 0
        self.synced_entries = 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=1000)  # (seconds, entries), for metrics
        self._fault: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def inject(self, fault: str | None) -> None:
        """Fault injection: ``"fail_fsync"``: the next sync raises ``OSError(EIO)`` after writing
        (the data may or may not be on the disk); ``"full"``: the next write raises
        ``OSError(ENOSPC)`` before anything is written; ``None``: no fault."""
        self._fault = fault

    def append(self, entries: list[Entry]) -> None:
        if self._fault == "full":
            raise OSError(errno.ENOSPC, "no space left on device (injected)")
        self._entries += len(entries)
        self.inner.append(entries)

    def sync(self) -> None:
        fault = self._fault
        if fault == "full":
            raise OSError(errno.ENOSPC, "no space left on device (injected)")
        start = time.perf_counter()
        if fault == "fail_fsync":
            raise OSError(errno.EIO, "fsync failed (injected)")
        self.inner.sync()
        took = time.perf_counter() - start
        self._times.append(took)
        self._batch.append(self._entries)
        self.recent.append((took, self._entries))
        self.syncs += 1
        self.synced_entries += self._entries
        self._entries = 0

    def reset(self) -> None:
        """Forget the samples so far (to measure one phase of a benchmark)."""
        self._times.clear()
        self._batch.clear()

    def stats(self) -> dict[str, float | int]:
        """``syncs`` so far, and over the recent window the median and 99th percentile time of
        one sync (ms) and the median entries per sync."""
        times = sorted(self._times)
        if not times:
            return {"syncs": self.syncs, "sync_ms_p50": 0.0, "sync_ms_p99": 0.0, "entries_per_sync_p50": 0.0}
        return {
            "syncs": self.syncs,
            "sync_ms_p50": statistics.median(times) * 1e3,
            "sync_ms_p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
            "entries_per_sync_p50": float(statistics.median(self._batch)),
        }
