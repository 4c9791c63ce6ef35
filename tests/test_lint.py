"""Code-base rules: ruff-clean, and a protocol core that stays pure."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    proc = subprocess.run([ruff, "check", "raft_actors", "tests"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def core_import_violations(path: Path) -> list[str]:
    """The imports in ``path`` (a module of ``raft_actors/core/``) that reach outside the core:
    any relative import that climbs out of the package, and any absolute import but a few
    pure standard-library modules. Also a call to ``open``."""
    allowed = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "random", "typing"}
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name not in allowed]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module not in allowed:
                bad.append(f"from {node.module} import ...")
            elif node.level > 1:
                bad.append(f"from {'.' * node.level}{node.module or ''} import ... (outside the core)")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
            bad.append("open(...)")
    return bad


def test_core_is_pure() -> None:
    """The protocol core imports no Ray, asyncio, clock, threads, sockets or file system, and
    nothing of raft_actors outside ``core/``."""
    for path in (ROOT / "raft_actors" / "core").glob("*.py"):
        assert core_import_violations(path) == [], path.name


def test_the_purity_check_catches_imports_that_leave_the_core(tmp_path: Path) -> None:
    mod = tmp_path / "mod.py"
    mod.write_text("from ..config import RaftConfig\nfrom ..node import RaftNode\nfrom .log import RaftLog\n"
                   "import os\nfrom ray import get\nimport typing\n")
    assert core_import_violations(mod) == [
        "from ..config import ... (outside the core)", "from ..node import ... (outside the core)",
        "import os", "from ray import ...",
    ]


def test_importing_the_package_does_not_load_pandas() -> None:
    """pandas is for tables (``status()``, ``membership_log()``, reports) and is imported where
    one is made: loaded with the package it cost a script a quarter of a second at import and
    its ~35,000 objects in every full garbage collection (which thousands of live refs set off)."""
    code = "import sys, raft_actors; print(sorted(m for m in ('pandas', 'tabulate') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
