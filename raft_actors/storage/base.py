"""The interface a node persists its Raft state through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO, NamedTuple, Protocol, runtime_checkable

from ..core.messages import Entry, HardState, SnapshotMeta

#: a snapshot's bytes, whole or in pieces to be written one after the other (saves joining a
#: large state machine snapshot into one more copy)
SnapshotData = bytes | Sequence[bytes]


def snapshot_bytes(data: SnapshotData) -> bytes:
    """``data`` as one ``bytes`` object."""
    return data if isinstance(data, bytes) else b"".join(data)


class Recovered(NamedTuple):
    """What a storage holds, as last synced: read once when a node starts.

    ``entries`` are the log entries after the snapshot (``snapshot.index + 1`` onwards, or from
    index 1 without a snapshot), contiguous.
    """

    hard_state: HardState
    snapshot: SnapshotMeta | None
    snapshot_data: bytes | None
    entries: list[Entry]


@runtime_checkable
class Storage(Protocol):
    """Where one node keeps its log, hard state and latest snapshot.

    The node calls :meth:`append` and :meth:`set_hard_state` for each batch, then :meth:`sync`,
    and only then sends messages or answers anybody (persist before send). Snapshots are
    durable when :meth:`save_snapshot` / :meth:`install_snapshot` return.
    """

    def load(self) -> Recovered:
        """The hard state, snapshot and log entries as last synced."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Store ``entries``, first dropping any stored entries at ``entries[0].index`` or later
        (durable after the next :meth:`sync`)."""
        ...

    def set_hard_state(self, hs: HardState) -> None:
        """Replace the stored term, vote and commit index, all at once (durable after :meth:`sync`)."""
        ...

    def sync(self) -> None:
        """Make every earlier append and hard-state change durable (one fsync for the batch)."""
        ...

    def stage_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> Any:
        """Do the slow part of :meth:`save_snapshot` (write and fsync the data) ahead of it.

        It must not touch anything the log uses: a node may run it in another thread while it
        goes on appending and syncing. Returns what :meth:`save_snapshot` takes as ``staged``.
        """
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: SnapshotData, staged: Any = None) -> None:
        """Durably keep a snapshot this node took of its own state machine at ``meta.index``
        (``staged``: the result of :meth:`stage_snapshot` for it, if any).

        Entries after ``meta.index`` stay; entries up to it may be dropped by :meth:`compact`.
        """
        ...

    def install_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        """Durably replace the whole log by a snapshot received from the leader: afterwards the
        storage holds the snapshot and no entries (the log continues at ``meta.index + 1``)."""
        ...

    def compact(self, index: int) -> None:
        """Entries up to ``index`` are covered by the snapshot and may be discarded."""
        ...

    def open_snapshot(self) -> tuple[SnapshotMeta, int, BinaryIO] | None:
        """The latest snapshot as ``(meta, size in bytes, reader of its data)``, for sending it
        in chunks; ``None`` if there is none. The caller closes the reader."""
        ...

    def is_empty(self) -> bool:
        """Whether nothing was stored when this storage was opened (a fresh node, or one whose
        storage was lost)."""
        ...

    def size(self) -> int:
        """Bytes of log and snapshot kept now."""
        ...

    def close(self) -> None:
        """Release files; the storage is not used afterwards."""
        ...
