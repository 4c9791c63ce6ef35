"""A replicated counter."""

from __future__ import annotations

from typing import Any

from .base import PickleSnapshotMixin


class Counter(PickleSnapshotMixin):
    """An integer. Commands: ``("add", n)`` returns the new value; ``("set", n)``.
    Query: ``("get",)`` (or anything else) returns the value."""

    def __init__(self) -> None:
        self.value = 0

    def validate(self, command: Any) -> None:
        if not (isinstance(command, tuple) and len(command) == 2 and command[0] in ("add", "set")):
            raise ValueError(f"a Counter command is ('add', n) or ('set', n), got {command!r}")
        if not isinstance(command[1], int) or isinstance(command[1], bool):
            raise TypeError(f"a Counter takes integers, got {command[1]!r}")

    def apply(self, command: Any) -> int:
        self.validate(command)
        op, n = command
        self.value = self.value + n if op == "add" else n
        return self.value

    def query(self, query: Any = ("get",)) -> int:
        return self.value
