"""Storage in memory: fast, and gone when the process dies."""

from __future__ import annotations

import io
from typing import BinaryIO

from ..core.messages import Entry, HardState, SnapshotMeta
from .base import Recovered, SnapshotData, snapshot_bytes


class MemoryStorage:
    """A :class:`~raft_actors.storage.base.Storage` kept in process memory.

    It survives everything but the death of its process: a node using it that restarts has
    lost its state and comes back as a non-voter.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_data: bytes | None = None
        self.offset = 0  # index of the entry before entries[0]
        self.entries: list[Entry] = []

    def load(self) -> Recovered:
        return Recovered(self.hard_state, self.snapshot, self.snapshot_data, self._after_snapshot())

    def _after_snapshot(self) -> list[Entry]:
        first = self.snapshot.index + 1 if self.snapshot else 1
        return self.entries[max(0, first - self.offset - 1) :]

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        last = self.offset + len(self.entries)
        if first > last + 1 or first <= self.offset:
            raise ValueError(f"cannot append at index {first}: storage holds {self.offset + 1}..{last}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def sync(self) -> None:
        pass

    def stage_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        return None

    def save_snapshot(self, meta: SnapshotMeta, data: SnapshotData, staged: object = None) -> None:
        self.snapshot, self.snapshot_data = meta, snapshot_bytes(data)

    def install_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        self.save_snapshot(meta, data)
        self.offset, self.entries = meta.index, []

    def compact(self, index: int) -> None:
        if index > self.offset:
            del self.entries[: index - self.offset]
            self.offset = index

    def open_snapshot(self) -> tuple[SnapshotMeta, int, BinaryIO] | None:
        if self.snapshot is None or self.snapshot_data is None:
            return None
        return self.snapshot, len(self.snapshot_data), io.BytesIO(self.snapshot_data)

    def is_empty(self) -> bool:
        return not self.entries and self.snapshot is None and self.hard_state == HardState()

    def size(self) -> int:
        return len(self.snapshot_data or b"") + sum(len(e.command or b"") + 24 for e in self.entries)

    def close(self) -> None:
        pass
