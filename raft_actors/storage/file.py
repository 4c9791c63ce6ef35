"""Durable storage: a write-ahead log in segment files, plus the latest snapshot.

Files in the storage directory:

``wal-{seq:010d}.log``
    Log segments, ``seq`` increasing from 1. A segment is the magic ``b"RAFTWAL1"`` followed by
    records framed as ``<u32 length><u32 crc32(length)>payload<u32 crc32(payload)>``: the header
    checksum makes a damaged length detectable before it is trusted, and a checksum at the end
    of the record makes a record whose end is zeros (a torn write) distinguishable from a damaged
    one whose end was written. The payload is a type byte and a body: ``ENTRIES`` (a contiguous
    batch; per entry ``<QQBI`` term, index, kind, command length — ``0xFFFFFFFF`` for ``None`` —
    then the command) or ``HARD_STATE`` (``<QQQB`` term, vote, commit, lost_state). Every segment starts with a
    ``HARD_STATE`` record, so deleting the segments before it never loses the hard state. An
    ``ENTRIES`` record whose first index is at or below the end of the log replaces the log
    from there (an overwritten suffix).

``snapshot.bin``
    The latest snapshot: magic ``b"RAFTSNP1"``, ``<u32 header length>``, a header (index, term,
    ``first_valid_seq``, data length, data crc32, the hard state, the configuration), the crc32 of the
    length and header, then the data. It is written as ``snapshot.tmp``, synced, renamed over
    ``snapshot.bin`` and the directory synced. Segments numbered below ``first_valid_seq`` are
    older than the snapshot's log (a snapshot installed from the leader replaced them) and are
    ignored and deleted. The hard state in the header is the one to use when no valid segment
    exists yet (a crash right after installing a snapshot).

:meth:`FileStorage.sync` writes everything buffered since the last sync with one ``write`` and
one ``fdatasync`` (group commit). Opening the storage replays it. A crash can leave the last
segment ending in a torn record (incomplete, or zero-filled by the file system): that tail is cut
off (``repaired_bytes``) and logged. Any other damage raises :class:`CorruptStorageError` naming
the file and the byte offset: nothing is ever skipped silently.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..core.messages import Entry, HardState, SnapshotMeta
from ..errors import RaftError
from .base import Recovered, SnapshotData
from .fs import AppendFile, FileSystem, OsFileSystem

log = logging.getLogger(__name__)

WAL_MAGIC = b"RAFTWAL1"
SNAPSHOT_MAGIC = b"RAFTSNP1"
SNAPSHOT_NAME = "snapshot.bin"
SNAPSHOT_TMP = "snapshot.tmp"
SNAPSHOT_STAGING = "snapshot.staging"
REC_ENTRIES = 1
REC_HARD_STATE = 2
#: records longer than this are corruption, not data
MAX_RECORD = 1 << 30
NO_COMMAND = 0xFFFFFFFF
SECTOR = 512

_SEGMENT_RE = re.compile(r"^wal-(\d{10})\.log$")
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<II")  # payload length, crc32 of those 4 bytes
_TRAILER = 4  # crc32(payload)
_OVERHEAD = _HEAD.size + _TRAILER
_ENTRY = struct.Struct("<QQBI")
_HS = struct.Struct("<QQQB")
_SNAP_FIXED = struct.Struct("<QQQQIQQQBIIQ")  # index term fvs data_len data_crc | hs | n_voters n_learners max_id
_ZERO_SECTOR = bytes(SECTOR)
_ENTRIES_TYPE = bytes([REC_ENTRIES])
_NEW = tuple.__new__  # builds an Entry without NamedTuple's argument handling (hot path)


class CorruptStorageError(RaftError):
    """The storage directory holds damaged or inconsistent data that is not a torn final write.

    ``path`` is the damaged file and ``offset`` the byte offset in it where the damage starts.
    """

    def __init__(self, path: str, offset: int, what: str):
        super().__init__(f"{path}: offset {offset}: {what}")
        self.path = path
        self.offset = offset
        self.what = what

    def __reduce__(self) -> tuple[type[CorruptStorageError], tuple[str, int, str]]:  # keep the attributes
        return (type(self), (self.path, self.offset, self.what))


def segment_name(seq: int) -> str:
    """The file name of WAL segment ``seq``."""
    return f"wal-{seq:010d}.log"


def _frame(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """A record: its header, payload and trailer."""
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(length)), payload, _U32.pack(zlib.crc32(payload))


def _encode_entries(entries: Sequence[Entry]) -> bytes:
    """The payload of an ``ENTRIES`` record; raises ``ValueError`` unless the batch is contiguous."""
    pack = _ENTRY.pack
    parts = [_ENTRIES_TYPE]
    add = parts.append
    expected = entries[0].index
    for term, index, command, kind in entries:
        if index != expected:
            raise ValueError(f"entries are not contiguous: index {index} where {expected} was expected")
        expected += 1
        if command is None:
            add(pack(term, index, kind, NO_COMMAND))
        else:
            add(pack(term, index, kind, len(command)))
            add(command)
    return b"".join(parts)


def _hard_state_record(hs: HardState) -> bytes:
    return b"".join(_frame(bytes([REC_HARD_STATE]) + _HS.pack(hs.term, hs.vote, hs.commit, bool(hs.lost_state))))


def _encode_snapshot_header(meta: SnapshotMeta, data_len: int, data_crc: int, fvs: int, hs: HardState) -> bytes:
    voters, learners = tuple(meta.voters), tuple(meta.learners)
    header = _SNAP_FIXED.pack(
        meta.index, meta.term, fvs, data_len, data_crc, hs.term, hs.vote, hs.commit, bool(hs.lost_state), len(voters),
        len(learners), meta.max_id,
    ) + struct.pack(f"<{len(voters) + len(learners)}Q", *voters, *learners)
    lead = _U32.pack(len(header)) + header
    return SNAPSHOT_MAGIC + lead + _U32.pack(zlib.crc32(lead))


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    size: int
    max_index: int = 0  # highest entry index any of its records holds (0: none)
    has_hard_state: bool = False


@dataclass(slots=True)
class _Snapshot:
    meta: SnapshotMeta
    fvs: int
    hard_state: HardState
    data_offset: int
    data_len: int
    file_size: int


@dataclass(frozen=True, slots=True)
class _Staged:
    """A snapshot file written and synced by :meth:`FileStorage.stage_snapshot`, not yet adopted."""

    path: str
    meta: SnapshotMeta
    fvs: int
    hs: HardState
    header_len: int
    data_len: int


@dataclass(slots=True)
class _Replayed:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: _Snapshot | None = None
    snapshot_data: bytes | None = None
    entries: list[Entry] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    next_seq: int = 1  # seq for a segment created when none is left
    had_files: bool = False
    leftovers: list[str] = field(default_factory=list)  # files to delete
    torn: list[tuple[str, int, int, str]] = field(default_factory=list)  # (path, cut at, size, why)


class FileStorage:
    """A durable :class:`~raft_actors.storage.base.Storage` in directory ``path``.

    It behaves like :class:`~raft_actors.storage.memory.MemoryStorage` except that what was
    synced survives the process and the machine. Opening it replays the directory (creating it
    if missing); :meth:`load` then returns what was recovered.

    Args:
        path: the storage directory (one per node).
        fs: the file system to use: :class:`~raft_actors.storage.fs.OsFileSystem` (the default)
            or a :class:`~raft_actors.storage.simdisk.SimDisk` in the simulator.
        segment_bytes: a WAL segment that reaches this size is closed and a new one started.

    Raises:
        CorruptStorageError: the directory holds damaged data (not merely a torn last write).

    Attributes:
        repaired_bytes: bytes of torn writes cut off the end of the log when it was opened.
    """

    def __init__(self, path: str, fs: FileSystem | None = None, segment_bytes: int = 64 * 2**20,
                 initial_hard_state: HardState | None = None):
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.path = path
        self.fs: FileSystem = fs if fs is not None else OsFileSystem()
        self.segment_bytes = segment_bytes
        self.repaired_bytes = 0
        self._file: AppendFile | None = None
        self._closed = False
        self._broken: BaseException | None = None
        self._initial_hs = initial_hard_state
        self.fs.makedirs(path)
        try:
            rep = self._open()
        except BaseException:
            if self._file is not None:
                self._file.close()
            raise
        self._cache: Recovered | None = Recovered(rep.hard_state, self._meta, rep.snapshot_data, rep.entries)

    def _open(self) -> _Replayed:
        """Replay and repair the directory, then make the last segment the one written."""
        rep = self._replay()
        for path in rep.leftovers:  # only once the whole directory was found sound
            self.fs.remove(path)
        for path, pos, n, what in rep.torn:
            log.warning("%s: torn write at offset %d (%s): cutting %d bytes off the log", path, pos, what, n - pos)
            self.fs.truncate(path, pos)
            self.repaired_bytes += n - pos
        self._empty = not rep.had_files
        if self._empty and self._initial_hs is not None:
            rep.hard_state = self._initial_hs  # written with the very first segment, atomically
        self._hs = rep.hard_state
        self._snap = rep.snapshot
        self._fvs = rep.snapshot.fvs if rep.snapshot else 0
        self._segments = rep.segments
        base = rep.snapshot.meta.index if rep.snapshot else 0
        self._offset = base  # like MemoryStorage.offset: appends must come after it
        self._last = rep.entries[-1].index if rep.entries else base
        self._pending: list[bytes] = []
        self._pending_hs = False
        if self._segments:
            last = self._segments[-1]
            self._file = self.fs.open_append(last.path)
            if last.size == 0:  # its magic was torn: write the segment's head again
                self._write_now(WAL_MAGIC + _hard_state_record(self._hs))
            elif not last.has_hard_state:  # its first record was torn off: segments start with one
                self._write_now(_hard_state_record(self._hs))
            last.has_hard_state = True
        else:
            self._start_segment(rep.next_seq, self._hs)
        return rep

    # -- Storage -----------------------------------------------------------------------------

    @property
    def _meta(self) -> SnapshotMeta | None:
        return self._snap.meta if self._snap else None

    def load(self) -> Recovered:
        """The hard state, snapshot and entries after it, as last synced.

        Until the first change this returns what opening the storage recovered; afterwards it
        reads the files again.
        """
        self._check()
        if self._cache is not None:
            c = self._cache
            return Recovered(c.hard_state, c.snapshot, c.snapshot_data, list(c.entries))
        rep = self._replay()
        meta = rep.snapshot.meta if rep.snapshot else None
        return Recovered(rep.hard_state, meta, rep.snapshot_data, rep.entries)

    def append(self, entries: list[Entry]) -> None:
        """Buffer ``entries`` (contiguous), replacing the stored ones from ``entries[0].index``.

        Raises ``ValueError`` if that would leave a gap, or if it is at or below the point the
        log was compacted to (or, after reopening, the snapshot index).
        """
        self._check()
        if not entries:
            return
        first = entries[0].index
        if first > self._last + 1 or first <= self._offset:
            raise ValueError(f"cannot append at index {first}: storage holds {self._offset + 1}..{self._last}")
        record = _frame(_encode_entries(entries))
        self._cache = None
        self._pending += record
        self._last = entries[-1].index
        seg = self._segments[-1]
        seg.max_index = max(seg.max_index, self._last)

    def set_hard_state(self, hs: HardState) -> None:
        """Buffer a new hard state (written after the entries buffered with it)."""
        self._check()
        if hs != self._hs:
            self._cache = None
            self._hs = hs
            self._pending_hs = True

    def sync(self) -> None:
        """Write everything buffered with one write and one fdatasync; nothing buffered, no I/O."""
        self._check()
        if not self._pending and not self._pending_hs:
            return
        parts = self._pending
        if self._pending_hs:
            parts.append(_hard_state_record(self._hs))
        self._pending = []
        self._pending_hs = False
        self._write_now(b"".join(parts))
        if self._segments[-1].size >= self.segment_bytes:
            self._guarded(self._roll)

    def stage_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> _Staged:
        """Write and fsync a snapshot file for :meth:`save_snapshot` to adopt: the slow part of
        saving a large snapshot. It touches nothing the log uses, so a node may run it in
        another thread while it goes on writing its log (one staging at a time)."""
        self._check()
        return self._stage(meta, data, self._fvs, self._hs, SNAPSHOT_STAGING)

    def save_snapshot(self, meta: SnapshotMeta, data: SnapshotData, staged: _Staged | None = None) -> None:
        """Durably keep a snapshot of this node's state machine at ``meta.index`` (the entries
        buffered so far are synced first; entries after ``meta.index`` stay). ``staged``, from
        :meth:`stage_snapshot` of the same snapshot, saves writing it again."""
        self._check()
        if meta.index < self._offset:
            raise ValueError(f"snapshot at {meta.index} is older than the compacted log (up to {self._offset})")
        self.sync()
        self._cache = None
        if staged is not None and staged.meta == meta and staged.fvs == self._fvs:
            self._guarded(self._adopt, staged)
        else:
            self._guarded(self._write_snapshot, meta, data, self._fvs, self._hs)

    def install_snapshot(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        """Durably replace the whole log by a snapshot from the leader.

        Entries buffered and not synced are dropped with the log. Crash-safe at every step: the
        snapshot is written naming the next segment as the first valid one, then that segment
        is started, then the older ones are deleted.
        """
        self._check()
        self._cache = None
        self._pending = []
        # A commit index beyond the snapshot would point at entries not yet stored: write it
        # clamped now, and the full one with the next sync (after the entries that follow).
        hs = self._hs._replace(commit=min(self._hs.commit, meta.index))
        old = self._segments
        fvs = old[-1].seq + 1
        self._guarded(self._write_snapshot, meta, data, fvs, hs)
        self._fvs = fvs
        self._segments = []
        self._guarded(self._start_segment, fvs, hs)
        self._pending_hs = hs != self._hs
        self._offset = self._last = meta.index
        for seg in old:
            self._guarded(self.fs.remove, seg.path)

    def compact(self, index: int) -> None:
        """Entries up to ``index`` are no longer needed: delete the oldest segments whose
        entries all are (never the segment being written, never beyond the snapshot)."""
        self._check()
        if index > self._offset:
            self._offset = index
            self._last = max(self._last, index)
        bound = min(self._offset, self._snap.meta.index if self._snap else 0)
        segs = self._segments
        n = 0
        while n < len(segs) - 1 and segs[n].max_index <= bound:
            n += 1
        for seg in segs[:n]:
            self._guarded(self.fs.remove, seg.path)
            self._guarded(self.fs.sync_dir, self.path)  # one at a time, front first: never a gap
            del segs[0]

    def open_snapshot(self) -> tuple[SnapshotMeta, int, BinaryIO] | None:
        """``(meta, size, reader)`` of the latest snapshot: the reader is positioned at the start
        of its data and keeps reading that snapshot even if a newer one replaces it."""
        self._check()
        snap = self._snap
        if snap is None:
            return None
        reader = self.fs.open_read(self._join(SNAPSHOT_NAME))
        try:
            reader.seek(snap.data_offset)
        except BaseException:
            reader.close()
            raise
        return snap.meta, snap.data_len, reader

    @staticmethod
    def holds_state(path: str, fs: FileSystem | None = None) -> bool:
        """Whether directory ``path`` holds a snapshot or a log segment that begins soundly (without
        opening or changing anything): a node whose directory does not was never started there,
        or lost its data. Files that a crash tore down to nothing sound (while the first segment
        was being created) hold nothing durable, so they do not count."""
        fs = fs if fs is not None else OsFileSystem()
        if not fs.exists(path):
            return False
        names = fs.listdir(path)
        if SNAPSHOT_NAME in names:
            return True
        for seq in sorted(int(m.group(1)) for m in map(_SEGMENT_RE.match, names) if m):
            data = fs.read(os.path.join(path, segment_name(seq)))
            if data[:8] == WAL_MAGIC and len(data) > 8 and _check_record(data, memoryview(data), 8)[0] is None:
                return True
        return False

    def is_empty(self) -> bool:
        """Whether the directory held no WAL segment and no snapshot when this was opened.

        ``initial_hard_state`` (for example one marking a node that lost its state) is written
        with the first segment of such a directory, so it holds from the first byte on disk."""
        return self._empty

    def size(self) -> int:
        """Bytes on disk of the WAL segments and the snapshot."""
        return sum(s.size for s in self._segments) + (self._snap.file_size if self._snap else 0)

    def close(self) -> None:
        """Sync what is buffered and release the files (a no-op after a failed write)."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self.sync()
        finally:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- writing -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"storage {self.path} is closed")
        if self._broken is not None:
            raise OSError(f"storage {self.path} failed earlier and must be reopened") from self._broken

    def _guarded(self, fn: Callable[..., object], *args: object) -> None:
        """Run a writing step; if it fails, the storage state is unknown: refuse further use."""
        try:
            fn(*args)
        except BaseException as exc:
            self._broken = exc
            raise

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _write_now(self, data: bytes) -> None:
        """Append ``data`` to the current segment and make it durable."""
        f = self._file
        assert f is not None
        try:
            f.write(data)
            f.sync()
        except BaseException as exc:
            self._broken = exc
            raise
        self._segments[-1].size += len(data)

    def _start_segment(self, seq: int, hs: HardState) -> None:
        """Create segment ``seq`` (magic and hard state), durably, and make it the current one."""
        path = self._join(segment_name(seq))
        if self._file is not None:
            self._file.close()
            self._file = None
        f = self.fs.open_append(path)
        self._file = f
        if f.tell():  # a leftover from a crash, past every valid segment: not part of the log
            f.close()
            self.fs.truncate(path, 0)
            f = self._file = self.fs.open_append(path)
        head = WAL_MAGIC + _hard_state_record(hs)
        f.write(head)
        f.sync()
        self.fs.sync_dir(self.path)
        self._segments.append(_Segment(seq, path, len(head), 0, True))

    def _roll(self) -> None:
        self._start_segment(self._segments[-1].seq + 1, self._hs)

    def _write_snapshot(self, meta: SnapshotMeta, data: SnapshotData, fvs: int, hs: HardState) -> None:
        self._adopt(self._stage(meta, data, fvs, hs, SNAPSHOT_TMP))

    def _stage(self, meta: SnapshotMeta, data: SnapshotData, fvs: int, hs: HardState, name: str) -> _Staged:
        tmp = self._join(name)
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        crc = size = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
            size += len(part)
        header = _encode_snapshot_header(meta, size, crc, fvs, hs)
        f = self.fs.open_append(tmp)
        try:
            f.write(header)
            for part in parts:
                f.write(part)
            f.sync()
        finally:
            f.close()
        return _Staged(tmp, SnapshotMeta(meta.index, meta.term, tuple(meta.voters), tuple(meta.learners), meta.max_id),
                       fvs, hs, len(header), size)

    def _adopt(self, st: _Staged) -> None:
        self.fs.rename(st.path, self._join(SNAPSHOT_NAME))
        self.fs.sync_dir(self.path)
        self._snap = _Snapshot(st.meta, st.fvs, st.hs, st.header_len, st.data_len, st.header_len + st.data_len)

    # -- recovery ------------------------------------------------------------------------------

    def _replay(self) -> _Replayed:
        """Read the directory (changing nothing): what it holds once torn tails are cut off and
        leftover files deleted, and which those are."""
        # Decoding creates an object per entry and nothing cyclic: the cyclic garbage collector,
        # triggered over and over by those allocations, would take two thirds of the time.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._replay_files()
        finally:
            if enabled:
                gc.enable()

    def _replay_files(self) -> _Replayed:
        fs = self.fs
        rep = _Replayed()
        names = fs.listdir(self.path)
        for leftover in (SNAPSHOT_TMP, SNAPSHOT_STAGING):
            if leftover in names:
                rep.leftovers.append(self._join(leftover))
        if SNAPSHOT_NAME in names:
            rep.had_files = True
            self._read_snapshot(rep)
        seqs = sorted(int(m.group(1)) for m in map(_SEGMENT_RE.match, names) if m)
        rep.had_files = rep.had_files or bool(seqs)
        fvs = rep.snapshot.fvs if rep.snapshot else 0
        rep.next_seq = max(fvs, 1)  # used only if no valid segment is left
        stale = [s for s in seqs if s < fvs]
        seqs = seqs[len(stale) :]
        rep.leftovers += [self._join(segment_name(s)) for s in stale]
        for prev, seq in itertools.pairwise(seqs):
            if seq != prev + 1:
                raise CorruptStorageError(self._join(segment_name(prev + 1)), 0, "segment missing (gap in the WAL)")

        hs = rep.snapshot.hard_state if rep.snapshot else HardState()
        hs_at = (self._join(SNAPSHOT_NAME), 0)
        snap_index = rep.snapshot.meta.index if rep.snapshot else 0
        log_: list[Entry] = []
        first = 0  # index of log_[0]
        log_at = ("", 0)  # where the record that started log_ is
        for i, seq in enumerate(seqs):
            path = self._join(segment_name(seq))
            is_last = i == len(seqs) - 1
            data = fs.read(path)
            seg = _Segment(seq, path, len(data))
            rep.segments.append(seg)
            n = len(data)
            if data[:8] != WAL_MAGIC:
                if is_last and (n < len(WAL_MAGIC) or WAL_MAGIC.startswith(data.rstrip(b"\0"))):
                    # a segment created just before a crash (cut short, or zeros after a part of
                    # its magic): emptied here, its magic and hard state written again on opening
                    rep.torn.append((path, 0, n, "segment header"))
                    seg.size = 0
                    break
                raise CorruptStorageError(path, 0, f"bad segment magic {data[:8]!r}")
            view = memoryview(data)
            pos = 8
            while pos < n:
                bad, end = _check_record(data, view, pos)
                if bad is not None:
                    if is_last and _is_torn(data, pos, end):
                        rep.torn.append((path, pos, n, bad))
                        seg.size = pos
                        break
                    raise CorruptStorageError(path, pos, bad + (" (not the end of the log)" if not is_last else ""))
                kind = data[pos + _HEAD.size]
                body = pos + _HEAD.size + 1
                if kind == REC_ENTRIES:
                    batch = _decode_entries(data, body, end - _TRAILER, path, pos)
                    if batch:
                        j = batch[0].index
                        if not log_ or j <= first or j <= snap_index + 1:
                            log_, first, log_at = batch, j, (path, pos)
                        elif j <= first + len(log_):
                            del log_[j - first :]
                            log_ += batch
                        else:
                            raise CorruptStorageError(
                                path, pos, f"entries start at {j} but the log ends at {first + len(log_) - 1}"
                            )
                        seg.max_index = max(seg.max_index, batch[-1].index)
                elif kind == REC_HARD_STATE:
                    if end - _TRAILER - body != _HS.size:
                        raise CorruptStorageError(path, pos, "hard-state record of the wrong size")
                    term, vote, commit, lost = _HS.unpack_from(data, body)
                    if lost > 1:
                        raise CorruptStorageError(path, pos, f"bad lost_state flag {lost}")
                    hs, hs_at = HardState(term, vote, commit, bool(lost)), (path, pos)
                    seg.has_hard_state = True
                else:
                    raise CorruptStorageError(path, pos, f"unknown record type {kind}")
                pos = end

        if log_ and first <= snap_index:
            del log_[: snap_index - first + 1]
            first = snap_index + 1
        if log_ and first > snap_index + 1:
            raise CorruptStorageError(log_at[0], log_at[1], f"entries {snap_index + 1}..{first - 1} are missing")
        last = first + len(log_) - 1 if log_ else snap_index
        if hs.commit > last:
            raise CorruptStorageError(
                hs_at[0], hs_at[1], f"hard state commits index {hs.commit} but the log ends at {last}"
            )
        rep.hard_state = hs
        # files torn down to nothing sound (a crash while the first segment was being created)
        # held nothing durable: the directory counts as empty (see holds_state)
        rep.had_files = rep.snapshot is not None or any(seg.has_hard_state for seg in rep.segments)
        rep.entries = log_
        return rep

    def _read_snapshot(self, rep: _Replayed) -> None:
        path = self._join(SNAPSHOT_NAME)
        data = self.fs.read(path)
        if data[:8] != SNAPSHOT_MAGIC:
            raise CorruptStorageError(path, 0, f"bad snapshot magic {data[:8]!r}")
        if len(data) < 12:
            raise CorruptStorageError(path, 8, "snapshot header cut short")
        (hlen,) = _U32.unpack_from(data, 8)
        end = 12 + hlen
        if hlen < _SNAP_FIXED.size or end + 4 > len(data):
            raise CorruptStorageError(path, 8, f"bad snapshot header length {hlen}")
        (crc,) = _U32.unpack_from(data, end)
        if zlib.crc32(memoryview(data)[8:end]) != crc:
            raise CorruptStorageError(path, 8, "snapshot header checksum mismatch")
        index, term, fvs, data_len, data_crc, t, v, c, lost, nv, nl, max_id = _SNAP_FIXED.unpack_from(data, 12)
        if hlen != _SNAP_FIXED.size + 8 * (nv + nl):
            raise CorruptStorageError(path, 12, "snapshot header length does not match its configuration")
        ids = struct.unpack_from(f"<{nv + nl}Q", data, 12 + _SNAP_FIXED.size)
        offset = end + 4
        if len(data) - offset != data_len:
            raise CorruptStorageError(path, offset, f"snapshot data is {len(data) - offset} bytes, expected {data_len}")
        body = data[offset:]
        if zlib.crc32(body) != data_crc:
            raise CorruptStorageError(path, offset, "snapshot data checksum mismatch")
        rep.snapshot = _Snapshot(SnapshotMeta(index, term, ids[:nv], ids[nv:], max_id), fvs, HardState(t, v, c, bool(lost)), offset,
                                 data_len, len(data))
        rep.snapshot_data = body


def _check_record(data: bytes, view: memoryview, pos: int) -> tuple[str | None, int]:
    """``(None, end)`` for a sound record at ``pos``, else ``(what is wrong, claimed end)``."""
    n = len(data)
    if n - pos < _HEAD.size:
        return "record header cut short", n
    length, head_crc = _HEAD.unpack_from(data, pos)
    if zlib.crc32(view[pos : pos + 4]) != head_crc:
        return "record header checksum mismatch", pos + _HEAD.size
    if not 1 <= length <= MAX_RECORD:
        return f"bad record length {length}", pos + _HEAD.size
    end = pos + _OVERHEAD + length
    if end > n:
        return "record runs past the end of the file", end
    if zlib.crc32(view[pos + _HEAD.size : end - _TRAILER]) != _U32.unpack_from(data, end - _TRAILER)[0]:
        return "record checksum mismatch", end
    return None, end


def _is_torn(data: bytes, pos: int, end: int) -> bool:
    """Whether the bad record at ``pos`` (claiming to end at ``end``) in the last segment looks
    like a write cut by a crash rather than damage to data written earlier.

    Torn: the record is cut short by the end of the file (its header, or a payload whose sound
    header says it is longer); or the file ends in zeros that start at the record or at a sector
    boundary inside it (a file system extends a file before writing its blocks); or it is the
    final record and a whole sector of its payload is zeros.
    """
    n = len(data)
    if n - pos < _HEAD.size or end > n:
        return True
    zeros_from = pos + len(data[pos:].rstrip(b"\0"))
    if zeros_from < n:
        aligned = -(-zeros_from // SECTOR) * SECTOR
        if zeros_from == pos or aligned < min(end, n):
            return True
    if end == n:
        s = -(-(pos + _HEAD.size) // SECTOR) * SECTOR
        while s + SECTOR <= end:
            if data[s : s + SECTOR] == _ZERO_SECTOR:
                return True
            s += SECTOR
    return False


def _decode_entries(data: bytes, pos: int, end: int, path: str, at: int) -> list[Entry]:
    """The entries of an ``ENTRIES`` record whose body is ``data[pos:end]``."""
    out: list[Entry] = []
    add = out.append
    unpack = _ENTRY.unpack_from
    size = _ENTRY.size
    expected = -1
    try:
        while pos < end:
            term, index, kind, n = unpack(data, pos)
            pos += size
            if n == NO_COMMAND:
                command = None
            else:
                command = data[pos : pos + n]
                pos += n
            if index != expected and expected != -1:
                raise CorruptStorageError(path, at, f"entries record is not contiguous at index {index}")
            expected = index + 1
            add(_NEW(Entry, (term, index, command, kind)))
    except struct.error:
        raise CorruptStorageError(path, at, "entries record is malformed") from None
    if pos != end:
        raise CorruptStorageError(path, at, "entries record is malformed")
    return out
