"""Code-base rules: ruff-clean, and a protocol core that stays pure."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    proc = subprocess.run([ruff, "check", "raft_actors", "tests"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_is_pure() -> None:
    """The protocol core imports no Ray, asyncio, clock, threads, sockets or file system."""
    allowed = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "random", "typing"}
    for path in (ROOT / "raft_actors" / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                    pytest.fail(f"{path.name} opens files")
                continue
            for name in names:
                assert name in allowed, f"{path.name} imports {name}"
