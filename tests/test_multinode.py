"""A Raft cluster spread over several Ray nodes: placement by slot, a second driver, machine loss.

The scenario (``tests/multinode_scenario.py``) starts a multi-node Ray on this machine with
``ray.cluster_utils.Cluster``, so it runs in a process of its own: the rest of the suite shares
one in-process Ray session (the ``ray_session`` fixture), and a driver joins one Ray only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("multinode_scenario.py")


def run_scenario(timeout: float) -> tuple[int | None, str, str]:
    """Run the scenario; returns its exit code (``None`` if it overran ``timeout``), stdout and
    stderr. One that overruns is interrupted, so that it stops its Ray nodes, and killed (with
    whatever it started) if it does not end within 30 s more."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    proc = subprocess.Popen([sys.executable, str(SCENARIO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=SCENARIO.parent.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the scenario's own session: it and its children
            out, err = proc.communicate()
        return None, out, err


@pytest.mark.timeout(240)
def test_raft_nodes_on_slots_survive_machine_loss_and_come_back() -> None:
    start = time.monotonic()
    returncode, stdout, stderr = run_scenario(timeout=180)
    elapsed = time.monotonic() - start
    # Ray prints notices of its own (a raylet killed on purpose, ...) into the same output, even
    # in the middle of a line: pick the scenario's timings out wherever they are
    timings = dict(re.findall(r"TIMING (\w+) ([\d.]+)", stdout))
    print("\n".join(f"{step}: {sec} s" for step, sec in timings.items()), f"scenario process: {elapsed:.1f} s",
          sep="\n")
    assert returncode == 0 and "SCENARIO OK" in stdout, (
        f"scenario failed (exit code {returncode}; None: it overran) after {elapsed:.1f} s\n"
        f"--- stdout (tail)\n{stdout[-6000:]}\n--- stderr (tail)\n{stderr[-6000:]}"
    )
    for step in ("ray_cluster_start", "raft_launch", "second_driver", "follower_back_after_add",
                 "leader_back_after_add", "total"):
        assert step in timings, f"no timing for {step}: {timings}"
