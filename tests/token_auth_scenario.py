"""The README's by-hand multi-machine recipe, with Ray's token authentication on, on one machine.

Run by ``tests/test_token_auth.py`` in a process of its own (in a session of its own, so that
everything Ray starts here is stopped with it), or by hand::

    python tests/token_auth_scenario.py

Three "machines" share this host, each with a home directory of its own (where Ray keeps its
token, ``~/.ray/auth_token``) and its own slot, ``raft_slot_db1`` to ``_db3``. The steps are
the README's ("Run across machines"), with the flags one host shared by three Ray nodes needs
(one CPU each, no dashboard) and a Ray temp directory of the scenario's own (``RAY_TMPDIR``,
so that ``address="auto"`` finds this Ray and no other one running here):

1. ``ray get-auth-token --generate`` on db1; the token file is copied to db2 and db3 (``scp``
   between real machines), readable by its owner only;
2. ``RAY_AUTH_MODE=token`` on every machine: ``ray start --head`` on db1, ``ray start
   --address=...`` on db2 and db3;
3. a Ray node without the token, and one with token auth off, are refused;
4. a driver on db1 launches a 3-node Raft cluster with ``address="auto"`` and
   ``placement="slots"`` (one Raft node per machine), writes and reads; a second driver on db2
   connects to it by name and reads the write back; the cluster is shut down.

Prints ``TIMING <step> <seconds>`` lines and ends with ``SCENARIO OK`` (exit code 0). Ray's
processes are left to the caller to stop (``ray stop`` would stop every Ray on the host): they
are in this process's session.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MACHINES = ("db1", "db2", "db3")
NAME = "token-auth"
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def timing(step: str, seconds: float) -> None:
    print(f"TIMING {step} {seconds:.1f}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One "machine": its home directory and the environment its commands run with."""

    def __init__(self, root: Path, name: str, base_env: dict[str, str]):
        self.name = name
        self.home = root / name
        self.home.mkdir()
        self.env = {**base_env, "HOME": str(self.home), "RAY_AUTH_MODE": "token"}

    @property
    def token_file(self) -> Path:
        return self.home / ".ray" / "auth_token"

    def run(self, *args: str, check: bool = True, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        log(f"{self.name}$ {' '.join(args)}" + (f"  ({env})" if env else ""))
        proc = subprocess.run(args, check=False, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args} failed with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def python(self, code: str, timeout: float = 180) -> str:
        return self.run(sys.executable, "-c", code, timeout=timeout).stdout


DRIVER = """
import json
from raft_actors import RaftCluster
from raft_actors.state_machines import get, put

cluster = RaftCluster.launch(3, address="auto", name={name!r}, placement="slots")
client = cluster.client()
client.submit(put("x", 1))
assert client.query(get("x")) == 1
status = cluster.status()
print("STATUS", json.dumps({{"slots": sorted(status["slot"]), "ray_nodes": status["ray_node"].nunique()}}))
"""

SECOND_DRIVER = """
from raft_actors import RaftCluster
from raft_actors.state_machines import get, put

cluster = RaftCluster.connect({name!r})
assert cluster.client().query(get("x")) == 1
cluster.client().submit(put("y", 2))
assert cluster.client().query(get("y")) == 2
cluster.shutdown(delete_data=True)
print("SECOND DRIVER OK")
"""


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths live under it
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    base.update(RAY_TMPDIR=str(root / "tmp"), RAFT_ACTORS_DATA_DIR=str(root / "data"),
                RAY_USAGE_STATS_ENABLED="0")
    (root / "tmp").mkdir()
    try:
        db1, db2, db3 = (Host(root, m, base) for m in MACHINES)
        t0 = time.monotonic()

        # 1. one token for the cluster, on every machine
        db1.run("ray", "get-auth-token", "--generate")
        token = db1.token_file.read_text().strip()
        assert len(token) >= 32, "a token of some length"
        for h in (db1, db2, db3):
            if h is not db1:
                h.token_file.parent.mkdir(mode=0o700)
                shutil.copyfile(db1.token_file, h.token_file)
            h.token_file.chmod(0o600)
            assert stat.S_IMODE(h.token_file.stat().st_mode) == 0o600

        # 2. Ray on every machine, token auth on
        port = free_port()
        head = f"127.0.0.1:{port}"
        one_host = ("--num-cpus=1", "--include-dashboard=false")
        db1.run("ray", "start", "--head", f"--port={port}", '--resources={"raft_slot_db1": 1}', *one_host)
        for h in (db2, db3):
            h.run("ray", "start", f"--address={head}", f'--resources={{"raft_slot_{h.name}": 1}}', "--num-cpus=1")
        timing("ray_start", time.monotonic() - t0)

        # 3. without the token, or with token auth off, a machine is refused (the one with auth
        # off retries the GCS once a second, RAY_NUM_REDIS_GET_RETRIES times: 20 by default)
        stranger = Host(root, "stranger", base)
        t_refused = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            refusing = pool.submit(stranger.run, "ray", "start", f"--address={head}",
                                   '--resources={"raft_slot_x": 1}', "--num-cpus=1", check=False, timeout=60)
            going_off = pool.submit(lambda: db2.run("ray", "start", f"--address={head}", "--num-cpus=1",
                                                    check=False, timeout=60, RAY_AUTH_MODE="disabled",
                                                    RAY_NUM_REDIS_GET_RETRIES="3"))
            refused, off = refusing.result(), going_off.result()
        timing("refusals", time.monotonic() - t_refused)
        assert refused.returncode != 0 and "AuthenticationError" in refused.stderr + refused.stdout, refused
        assert off.returncode != 0 and "uthenticat" in off.stderr + off.stdout, off
        for what, proc in (("without the token", refused), ("with token auth off", off)):
            said = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "uthenticat" in ln]
            log(f"a node {what} was refused: {said[-1][:300] if said else '?'}")

        # 4. a Raft cluster across the three machines, from drivers on two of them
        t1 = time.monotonic()
        out = db1.python(DRIVER.format(name=NAME))
        status = json.loads(out.split("STATUS", 1)[1].strip().splitlines()[0])
        assert status == {"slots": ["db1", "db2", "db3"], "ray_nodes": 3}, status
        timing("raft_launch", time.monotonic() - t1)
        t2 = time.monotonic()
        assert "SECOND DRIVER OK" in db2.python(SECOND_DRIVER.format(name=NAME))
        timing("second_driver", time.monotonic() - t2)
        assert not any((root / "data" / NAME).glob("node-*")), "shutdown(delete_data=True) removed the data"
        timing("total", time.monotonic() - _T0)
        print("SCENARIO OK", flush=True)
    finally:
        stop_ray_under(root)
        shutil.rmtree(root, ignore_errors=True)


def stop_ray_under(root: Path) -> None:
    """Kill the Ray processes this scenario started (their command line or environment names
    its directory): run by hand, outside the test's own session clean-up, it leaves nothing
    running (``ray stop`` would stop every Ray on the machine)."""
    mine = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mine in (proc / "cmdline").read_bytes() or mine in (proc / "environ").read_bytes():
                os.kill(int(proc.name), 9)
        except OSError:
            pass


if __name__ == "__main__":
    main()
