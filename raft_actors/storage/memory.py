"""Storage in memory: fast, and gone when the process dies."""

from __future__ import annotations

from ..core.messages import Entry, HardState


class MemoryStorage:
    """A :class:`~raft_actors.storage.base.Storage` kept in process memory.

    It survives everything but the death of its process. The simulator keeps one per node
    across simulated crashes, as a disk would be kept.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []

    def load(self) -> tuple[HardState, list[Entry]]:
        return self.hard_state, list(self.entries)

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if first > len(self.entries) + 1:
            raise ValueError(f"gap: appending index {first} after {len(self.entries)}")
        del self.entries[first - 1 :]
        self.entries.extend(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def sync(self) -> None:
        pass

    def is_empty(self) -> bool:
        return not self.entries and self.hard_state == HardState()
