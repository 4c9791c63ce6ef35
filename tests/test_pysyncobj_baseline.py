"""The PySyncObj baseline benchmark: short runs give sane numbers and leave no process behind.

Skipped when PySyncObj (an optional extra, ``pip install pysyncobj``) is not installed."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

pytest.importorskip("pysyncobj")

from benchmarks import pysyncobj_baseline as baseline

from .waiting import process_alive

pytestmark = pytest.mark.timeout(60)


def _processes() -> dict[int, tuple[str, int, int]]:
    """``{pid: (state, parent pid, process group)}`` of every process (empty without /proc)."""
    processes = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        processes[int(stat.parent.name)] = (state, int(ppid), int(pgrp))
    return processes


def _children() -> set[int]:
    """PIDs of this process's live (not zombie) children."""
    return {pid for pid, (state, ppid, _) in _processes().items() if ppid == os.getpid() and state != "Z"}


def _in_groups(groups: list[int]) -> set[int]:
    """PIDs of the processes in any of the process groups ``groups``."""
    return {pid for pid, (_, _, pgrp) in _processes().items() if pgrp in groups}


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_available() -> None:
    assert baseline.available()
    assert baseline.pysyncobj_version()


def test_short_runs_give_positive_numbers_and_clean_up() -> None:
    before = _children()
    tp = baseline.run_throughput(seconds=1.0, in_flight=100, warmup=0.2)
    lat = baseline.run_latency(n=20)

    assert _positive(tp["ops_per_s"]) and tp["committed"] > 0
    assert tp["errors"] == 0
    assert tp["replicas_consistent"] and lat["replicas_consistent"]
    assert tp["in_flight"] == 100 and tp["nodes"] == 3 and tp["value_size"] == 16
    assert tp["profile"] == "throughput" and tp["settings"] == baseline.PROFILES["throughput"]
    assert lat["profile"] == "latency" and lat["settings"]["appendEntriesUseBatch"] is False
    assert lat["n"] == 20
    for key in ("median_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
        assert _positive(lat[key]), key
    assert lat["min_ms"] <= lat["median_ms"] <= lat["p99_ms"] <= lat["max_ms"]

    pids = tp["node_pids"] + lat["node_pids"]
    assert len(set(pids)) == 6
    assert not any(process_alive(pid) for pid in pids)
    assert _children() <= before


def test_journal_and_in_leader_client_leave_no_forked_snapshot_writer() -> None:
    """With the journal, PySyncObj forks to write snapshots: frequent ones here, and none of
    those forks may outlive the run."""
    before = _children()
    settings = baseline.pysyncobj_settings("throughput", logCompactionMinEntries=100)
    tp = baseline.run_throughput(seconds=1.0, in_flight=50, warmup=0.1, journal=True, client="leader",
                                 settings=settings)
    assert _positive(tp["ops_per_s"]) and tp["journal"] is True and tp["client"] == "leader"
    assert tp["settings"]["logCompactionMinEntries"] == 100 and tp["profile"] is None
    assert "journalFile" not in tp["settings"]  # per-node paths are added by the cluster
    assert _children() <= before
    assert not _in_groups(tp["node_pids"])  # every node led its own process group


def test_cluster_stops_its_processes_on_error() -> None:
    before = _children()
    with pytest.raises(KeyboardInterrupt), baseline.PySyncObjCluster(nodes=3) as cluster:
        pids = list(cluster.pids)
        assert cluster.leader is not None
        assert all(process_alive(pid) for pid in pids)
        raise KeyboardInterrupt
    assert not any(process_alive(pid) for pid in pids)
    assert _children() <= before


def test_skips_without_pysyncobj(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(baseline, "available", lambda: False)
    assert baseline.run_baseline()["available"] is False
    assert baseline.main([]) == 0
    assert "skipped" in capsys.readouterr().out


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        baseline.run_throughput(client="elsewhere")
    with pytest.raises(ValueError):
        baseline.run_throughput(profile="fastest")
    with pytest.raises(ValueError):
        baseline.run_latency(n=0)
