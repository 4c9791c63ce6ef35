"""A replicated key-value store."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .base import PickleSnapshotMixin

_ARITY = {"put": 3, "delete": 2, "cas": 4, "get": 2}
_QUERIES = {"get": 2, "len": 1, "keys": 1}


def put(key: Hashable, value: Any) -> tuple:
    """Command: set ``key`` to ``value``. Result: ``None``."""
    return ("put", key, value)


def delete(key: Hashable) -> tuple:
    """Command: remove ``key``. Result: whether it existed."""
    return ("delete", key)


def cas(key: Hashable, expected: Any, new: Any) -> tuple:
    """Command: set ``key`` to ``new`` if its value is ``expected`` (``None``: absent). Result: bool."""
    return ("cas", key, expected, new)


def get(key: Hashable) -> tuple:
    """Query (or command, to read through the log): the value of ``key``, or ``None``."""
    return ("get", key)


class KVStore(PickleSnapshotMixin):
    """A dict replicated by Raft.

    Commands are tuples (build them with :func:`put`, :func:`delete`, :func:`cas`, :func:`get`):
    ``("put", key, value)``, ``("delete", key)``, ``("cas", key, expected, new)``,
    ``("get", key)``. Queries: ``("get", key)``, ``("len",)``, ``("keys",)``.
    """

    def __init__(self) -> None:
        self.data: dict[Hashable, Any] = {}

    @staticmethod
    def _check(command: Any, table: dict[str, int], what: str) -> None:
        if not isinstance(command, tuple) or not command:
            raise TypeError(f"a KVStore {what} is a tuple such as ('put', key, value), got {command!r}")
        op = command[0]
        if op not in table:
            raise ValueError(f"unknown KVStore {what} {op!r}; expected one of {sorted(table)}")
        if len(command) != table[op]:
            raise ValueError(f"KVStore {what} {op!r} takes {table[op] - 1} argument(s), got {len(command) - 1}")
        if len(command) > 1:
            hash(command[1])  # a key must be hashable: raises TypeError otherwise

    def validate(self, command: Any) -> None:
        self._check(command, _ARITY, "command")

    def apply(self, command: Any) -> Any:
        # the leader validated the command before it entered the log (validate is
        # deterministic), so applying needs no second check: anything malformed still raises
        # the same way on every replica
        op = command[0]
        if op == "put":
            if len(command) != 3:
                self._check(command, _ARITY, "command")
            self.data[command[1]] = command[2]
            return None
        self._check(command, _ARITY, "command")
        if op == "delete":
            return self.data.pop(command[1], _MISSING) is not _MISSING
        if op == "cas":
            _, key, expected, new = command
            if self.data.get(key) != expected:
                return False
            self.data[key] = new
            return True
        return self.data.get(command[1])

    def query(self, query: Any) -> Any:
        self._check(query, _QUERIES, "query")
        op = query[0]
        if op == "get":
            return self.data.get(query[1])
        if op == "len":
            return len(self.data)
        return sorted(self.data, key=repr)


_MISSING = object()
