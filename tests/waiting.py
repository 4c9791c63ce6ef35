"""Small helpers shared by the tests and by scripts they run in subprocesses (importable as
``tests.waiting`` and, from a script in ``tests/``, as ``waiting``): no pytest here."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy (returned); ``AssertionError`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_scenario(script: str, timeout: float) -> tuple[int | None, str, str]:
    """Run the Python ``script`` in a process and a session of its own; returns its exit code
    (``None`` if it overran ``timeout``), stdout and stderr. One that overruns is interrupted
    (so that it can stop what it started) and killed if it does not end within 30 s more.
    Whatever is left in its session afterwards (Ray processes started by ``ray start``, which
    stay in the session of whoever ran it) is killed."""
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(script))),
                            start_new_session=True)
    code: int | None = None
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    for sig in (signal.SIGTERM, signal.SIGKILL):  # what it left running in its process group
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(1.0)
    return code, out, err


def scenario_passes(script: str, timeout: float, steps: tuple[str, ...]) -> dict[str, str]:
    """Run a scenario script (:func:`run_scenario`) and check it ended with ``SCENARIO OK`` and
    printed a ``TIMING <step> <seconds>`` line for each of ``steps``; prints and returns them."""
    import re

    start = time.monotonic()
    code, out, err = run_scenario(script, timeout)
    elapsed = time.monotonic() - start
    # Ray prints notices of its own into the same output, even in the middle of a line: pick the
    # scenario's timings out wherever they are
    timings = dict(re.findall(r"TIMING (\w+) ([\d.]+)", out))
    print("\n".join(f"{step}: {sec} s" for step, sec in timings.items()), f"scenario process: {elapsed:.1f} s",
          sep="\n")
    assert code == 0 and "SCENARIO OK" in out, (
        f"scenario failed (exit code {code}; None: it overran) after {elapsed:.1f} s\n"
        f"--- stdout (tail)\n{out[-6000:]}\n--- stderr (tail)\n{err[-6000:]}")
    missing = [s for s in steps if s not in timings]
    assert not missing, f"no timing for {missing}: {timings}"
    return timings


def restarted(status: object, node: int, pid: int) -> bool:
    """Whether ``status`` (a ``RaftCluster.status()`` frame) shows node ``node`` in a process
    other than ``pid``; ``False`` while the node does not answer (its pid is ``<NA>`` then)."""
    import pandas as pd

    now = status.loc[node, "pid"]  # type: ignore[attr-defined]
    return not pd.isna(now) and int(now) != pid
