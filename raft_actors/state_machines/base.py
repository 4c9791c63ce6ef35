"""The protocol a replicated state machine follows."""

from __future__ import annotations

import pickle
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StateMachine(Protocol):
    """What raft_actors needs of a state machine. Any class with these methods will do.

    - ``apply(command)`` runs a committed command and returns its result. It must be
      deterministic: every replica applies the same commands in the same order and must reach
      the same state. An exception it raises is the command's result (the client gets a
      :class:`~raft_actors.errors.CommandError`); the state machine must then be unchanged or
      changed the same way on every replica.
    - ``query(query)`` answers a read without changing anything.
    - ``snapshot() -> bytes`` and ``restore(data)`` save and load the whole state.

    Optionally ``validate(command)`` raises (``ValueError``, ``TypeError``...) for a command
    that must not enter the log at all; the leader calls it before proposing.
    """

    def apply(self, command: Any) -> Any: ...

    def query(self, query: Any) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class PickleSnapshotMixin:
    """``snapshot``/``restore`` that pickle the instance's ``__dict__``."""

    def snapshot(self) -> bytes:
        return pickle.dumps(self.__dict__, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, data: bytes) -> None:
        self.__dict__.clear()
        self.__dict__.update(pickle.loads(data))
