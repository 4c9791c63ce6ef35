"""``cluster.yaml`` passes Ray's own checks, and every Raft-hosting machine offers a slot.

No network, no cloud credentials: Ray's ``prepare_config`` and ``validate_config`` are what
``ray up`` runs before it talks to any machine or cloud. (``ray up`` then bootstraps the provider,
which for AWS needs boto3 and credentials; that step is left out, for the same reason.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from raft_actors.placement import SLOT_PREFIX, SLOT_SHARE

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
DATA_DIR_ENV = "RAFT_ACTORS_DATA_DIR"


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as ``ray up`` prepares and validates it (raises if Ray rejects it)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(config)
    validate_config(config)
    return config


def aws_variant_text() -> str:
    """The commented-out AWS block, uncommented as the file's own instruction does it
    (``sed -n '/^# # ==== BEGIN aws/,/^# # ==== END aws/s/^# \\{0,1\\}//p' cluster.yaml``)."""
    out, inside = [], False
    for line in CLUSTER_YAML.read_text().splitlines():
        inside = inside or line.startswith("# # ==== BEGIN aws")
        if inside and line.startswith("#"):
            out.append(re.sub(r"^# ?", "", line))
        if inside and line.startswith("# # ==== END aws"):
            break
    assert out, "no aws-variant block in cluster.yaml"
    return "\n".join(out) + "\n"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sed") is None, reason="needs bash and sed")
def test_the_documented_command_extracts_the_aws_variant(tmp_path) -> None:
    (cmd,) = [ln.lstrip("# ") for ln in CLUSTER_YAML.read_text().splitlines() if "sed -n" in ln and "aws" in ln]
    shutil.copy(CLUSTER_YAML, tmp_path / "cluster.yaml")
    subprocess.run(["bash", "-c", cmd], cwd=tmp_path, check=True, timeout=10)
    assert (tmp_path / "cluster-aws.yaml").read_text() == aws_variant_text()


def run_start_command(cmd: str, head_ip: str = "10.0.0.1", host: str = "db-1") -> dict[str, Any]:
    """Run a start command in bash with ``ray`` and ``hostname`` stubbed out; returns what each
    ``ray start`` got: its ``--resources`` (parsed), its RAFT_ACTORS_DATA_DIR and RAY_AUTH_MODE."""
    stub = (f'hostname() {{ echo {host}; }}; '
            f'ray() {{ echo "ARGS $*"; echo "ENV ${{{DATA_DIR_ENV}:-}}"; echo "AUTH ${{RAY_AUTH_MODE:-}}"; '
            f'printf "ARG %s\\n" "$@"; }}; '
            f'export RAY_HEAD_IP={head_ip}; ')
    proc = subprocess.run(["bash", "-c", stub + cmd], capture_output=True, text=True, check=True, timeout=10)
    lines = proc.stdout.splitlines()
    if not lines or not lines[0].startswith("ARGS start"):
        return {}
    args = [ln[4:] for ln in lines if ln.startswith("ARG ")]
    env = next(ln[4:] for ln in lines if ln.startswith("ENV"))
    auth = next(ln[5:] for ln in lines if ln.startswith("AUTH"))
    resources = [json.loads(a.split("=", 1)[1]) for a in args if a.startswith("--resources=")]
    return {"args": args, "env": env, "auth": auth, "resources": resources[0] if resources else None}


def test_cluster_yaml_passes_ray_up_checks() -> None:
    config = prepared(yaml.safe_load(CLUSTER_YAML.read_text()))
    assert config["cluster_name"] == "raft-actors"
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and len(config["provider"]["worker_ips"]) >= 2
    assert {"ssh_user", "ssh_private_key"} <= set(config["auth"])
    # the project gets installed on every machine
    assert any("pip install" in c and "raft-actors" in c for c in config["setup_commands"])
    assert config["head_setup_commands"] == config["worker_setup_commands"] == config["setup_commands"]


def drivers_env(setup_commands: list[str], home: Path, name: str = DATA_DIR_ENV) -> str:
    """Run the setup commands that edit ~/.bashrc (twice: ``ray up`` may run them again) in a
    scratch home; returns the variable ``name`` a shell of ``ray exec`` would then have."""
    (home / ".bashrc").write_text("# the machine's own\n")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    cmds = [c for c in setup_commands if ".bashrc" in c and name in c]
    assert cmds, f"drivers on the cluster get no {name}"
    for cmd in cmds + cmds:
        subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=10)
    assert (home / ".bashrc").read_text().count(name) == 1, "~/.bashrc grows each time"
    out = subprocess.run(["bash", "-c", f"source ~/.bashrc; echo ${name}"], env=env, check=True,
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_machine_offers_its_own_slot(tmp_path) -> None:
    config = prepared(yaml.safe_load(CLUSTER_YAML.read_text()))
    data_dir = drivers_env(config["setup_commands"], tmp_path)
    assert data_dir.startswith("/") and not data_dir.startswith("/tmp"), data_dir  # a lasting disk
    assert any(f"mkdir -p {data_dir}" in c for c in config["setup_commands"]), "the data directory is not created"
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        cmds = config[kind]
        assert cmds[0] == "ray stop", kind
        starts = [r for r in (run_start_command(c) for c in cmds) if r]
        assert len(starts) == 1, f"{kind}: expected one `ray start`, got {starts}"
        (start,) = starts
        assert ("--head" in start["args"]) == (kind == "head_start_ray_commands")
        # the slot is named after the machine, so each machine has its own
        assert start["resources"] == {f"{SLOT_PREFIX}db-1": 1}, start
        assert run_start_command(cmds[-1], host="db-2")["resources"] == {f"{SLOT_PREFIX}db-2": 1}
        assert start["env"] == data_dir, f"{kind}: ray start does not get {DATA_DIR_ENV}"
        if kind == "worker_start_ray_commands":
            assert "--address=10.0.0.1:6379" in start["args"]
    # a slot holds one Raft node of each of many clusters
    assert SLOT_SHARE <= 1


def test_aws_variant_passes_ray_up_checks_and_gives_each_worker_type_a_slot() -> None:
    raw = yaml.safe_load(aws_variant_text())
    # prepare_config only reads Ray's AWS defaults file: no boto3 or credentials needed
    config = prepared(raw)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert not any(r.startswith(SLOT_PREFIX) for r in types[head]["resources"]), "the head should host no Raft node"
    slots = []
    for name, node_type in types.items():
        if name == head:
            continue
        slot = [r for r in node_type["resources"] if r.startswith(SLOT_PREFIX)]
        assert len(slot) == 1 and node_type["resources"][slot[0]] == 1, (name, node_type["resources"])
        # exactly one machine per type: the autoscaler replaces a lost one, with the same slot
        assert node_type["min_workers"] == node_type["max_workers"] == 1, name
        slots += slot
    assert len(slots) == len(set(slots)) >= 3, slots
    assert config["max_workers"] >= len(slots)
    # the launcher hands each node its type's resources itself: the start commands add none
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert not any("--resources" in c for c in config[kind]), kind
        assert any(f"{DATA_DIR_ENV}=" in c and "ray start" in c for c in config[kind]), kind
    assert any("pip install" in c and "raft-actors" in c for c in config["setup_commands"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("variant", ["on-prem", "aws"])
def test_every_machine_runs_ray_with_token_auth_and_the_same_token(variant: str, tmp_path) -> None:
    """Ray's token authentication, as Ray 2.61 turns it on for every cluster: each ``ray start``
    in token mode, drivers (``ray exec``/``ray attach`` shells) too, and one token copied from
    the laptop to Ray's default token path on every machine, readable by its owner only."""
    text = CLUSTER_YAML.read_text() if variant == "on-prem" else aws_variant_text()
    config = prepared(yaml.safe_load(text))
    mounts = config["file_mounts"]
    assert "~/.ray/auth_token" in mounts, mounts
    token_source = mounts["~/.ray/auth_token"]
    assert token_source.startswith("~/.ray/") and "raft-actors" in token_source  # on the laptop, not in the repo
    assert not Path(token_source).expanduser().is_relative_to(CLUSTER_YAML.parent)
    assert drivers_env(config["setup_commands"], tmp_path, "RAY_AUTH_MODE") == "token"
    home = tmp_path / "machine"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("t" * 64)
    (home / ".ray" / "auth_token").chmod(0o644)  # as rsync may leave it
    for cmd in [c for c in config["setup_commands"] if "auth_token" in c]:
        subprocess.run(["bash", "-c", cmd], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True, timeout=10)
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o077 == 0, "the token is readable by others"
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [r for r in (run_start_command(c) for c in config[kind]) if r]
        assert [s["auth"] for s in starts] == ["token"], f"{kind}: ray start is not in token mode"
    # the file's own instructions make the token before `ray up`
    assert "openssl rand -hex 32 > ~/.ray/raft-actors-cluster.token" in CLUSTER_YAML.read_text()
