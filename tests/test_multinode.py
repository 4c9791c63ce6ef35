"""A Raft cluster spread over several Ray nodes: placement by slot, a second driver, machine loss.

The scenario (``tests/multinode_scenario.py``) starts a multi-node Ray on this machine with
``ray.cluster_utils.Cluster``, so it runs in a process of its own: the rest of the suite shares
one in-process Ray session (the ``ray_session`` fixture), and a driver joins one Ray only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("multinode_scenario.py")


@pytest.mark.timeout(240)
def test_raft_nodes_on_slots_survive_machine_loss_and_come_back() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCENARIO)], capture_output=True, text=True, timeout=200,
                          env=env, cwd=SCENARIO.parent.parent, check=False)
    elapsed = time.monotonic() - start
    # Ray's own notices (a raylet killed on purpose, ...) are noise; keep the scenario's lines
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("TIMING", "[", "SCENARIO"))]
    print("\n".join(lines), f"\nscenario process: {elapsed:.1f} s", sep="")
    assert proc.returncode == 0 and "SCENARIO OK" in proc.stdout, (
        f"scenario failed (exit code {proc.returncode}) after {elapsed:.1f} s\n"
        f"--- stdout (tail)\n{proc.stdout[-6000:]}\n--- stderr (tail)\n{proc.stderr[-6000:]}"
    )
    timings = dict(ln.split()[1:3] for ln in lines if ln.startswith("TIMING"))
    for step in ("ray_cluster_start", "raft_launch", "second_driver", "follower_back_after_add",
                 "leader_back_after_add", "total"):
        assert step in timings, f"no timing for {step}: {timings}"
