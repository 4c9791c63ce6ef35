"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(ray_session: None, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAFT_ACTORS_DATA_DIR", str(tmp_path))  # the examples' clusters keep their data here
    monkeypatch.chdir(tmp_path)  # and what they write (a report) goes there too
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
