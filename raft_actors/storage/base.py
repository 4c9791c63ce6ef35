"""The interface a node persists its Raft state through."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.messages import Entry, HardState


@runtime_checkable
class Storage(Protocol):
    """Where one node keeps its log and hard state.

    The node calls :meth:`append` and :meth:`set_hard_state` for each batch, then :meth:`sync`,
    and only then sends messages or answers anybody (persist before send).
    """

    def load(self) -> tuple[HardState, list[Entry]]:
        """The hard state and the whole log (from index 1) as last synced."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Store ``entries``, first dropping any stored entries at ``entries[0].index`` or later."""
        ...

    def set_hard_state(self, hs: HardState) -> None:
        """Replace the stored term, vote and commit index."""
        ...

    def sync(self) -> None:
        """Make every earlier append and hard-state change durable."""
        ...

    def is_empty(self) -> bool:
        """Whether nothing was ever stored (a fresh node, or one whose storage was lost)."""
        ...
