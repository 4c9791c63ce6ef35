"""FileStorage: durable like a disk, and otherwise exactly like MemoryStorage.

Checked against MemoryStorage (the reference semantics) on real files and on the simulator's
SimDisk; through crashes at every kind of file operation; against torn and corrupted files; and
through SIGKILL of a process in the middle of its writes.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft_actors.core.messages import Entry, EntryKind, HardState, SnapshotMeta
from raft_actors.storage import (
    CorruptStorageError,
    FileStorage,
    MemoryStorage,
    OsFileSystem,
    Recovered,
    SimCrash,
    SimDisk,
    Storage,
)
from raft_actors.storage.file import SNAPSHOT_NAME, segment_name
from raft_actors.storage.fs import FileSystem

ROOT = Path(__file__).resolve().parents[1]
SIM_DIR = "/node1"


def ent(term: int, index: int, command: bytes | None = b"cmd", kind: int = EntryKind.NORMAL) -> Entry:
    return Entry(term, index, command, kind)


def batch(term: int, first: int, n: int, tag: bytes = b"c") -> list[Entry]:
    return [ent(term, i, tag + str(i).encode()) for i in range(first, first + n)]


def synced_batches(storage: Any, n: int) -> None:
    """Entries 1..3n of term 1, in ``n`` synced batches of 3."""
    for i in range(n):
        storage.append(batch(1, 3 * i + 1, 3))
        storage.sync()


def segments(path: str | Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("wal-"))


class Pair:
    """Drives a FileStorage and a MemoryStorage with the same calls and compares them."""

    def __init__(self, path: str, fs: FileSystem | None = None, segment_bytes: int = 64 * 2**20):
        self.path, self.fs, self.segment_bytes = path, fs, segment_bytes
        self.file = FileStorage(path, fs, segment_bytes)
        self.mem = MemoryStorage()

    def __getattr__(self, name: str) -> Callable[..., None]:
        def both(*args: Any) -> None:
            getattr(self.file, name)(*args)
            getattr(self.mem, name)(*args)

        return both

    def reopen_and_compare(self) -> Recovered:
        self.file.close()
        self.file = FileStorage(self.path, self.fs, self.segment_bytes)
        got, want = self.file.load(), self.mem.load()
        assert got == want
        return got


# -- round trips ----------------------------------------------------------------------------------


def test_implements_the_storage_protocol(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path / "s"))
    assert isinstance(s, Storage)
    s.close()


def test_round_trip_with_overwrites_noops_and_none(tmp_path: Path) -> None:
    p = Pair(str(tmp_path / "s"))
    assert p.file.load() == Recovered(HardState(), None, None, [])
    p.append([ent(1, 1, None, EntryKind.NOOP), ent(1, 2, b""), ent(1, 3, b"\x00\xff" * 50)])
    p.set_hard_state(HardState(1, 2, 1))
    p.sync()
    p.append(batch(1, 4, 5))
    p.append([ent(2, 6, None, EntryKind.NOOP), ent(2, 7, b"x")])  # replaces 6..8
    p.set_hard_state(HardState(2, 3, 5, True))
    p.sync()
    got = p.reopen_and_compare()
    assert [e.index for e in got.entries] == [1, 2, 3, 4, 5, 6, 7]
    assert got.entries[0].command is None and got.entries[1].command == b""
    assert got.entries[5] == ent(2, 6, None, EntryKind.NOOP)
    assert got.hard_state == HardState(2, 3, 5, True)
    p.append([ent(3, 6, b"y")])  # overwrite (above the commit index) after a reopen
    p.sync()
    got = p.reopen_and_compare()
    assert [e.index for e in got.entries] == [1, 2, 3, 4, 5, 6] and got.entries[-1] == ent(3, 6, b"y")


def test_appends_out_of_place_are_refused(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path / "s"))
    with pytest.raises(ValueError):
        s.append([ent(1, 2)])  # gap after an empty log
    s.append(batch(1, 1, 5))
    with pytest.raises(ValueError):
        s.append([ent(1, 7)])  # gap
    with pytest.raises(ValueError):
        s.append([ent(1, 6), ent(1, 8)])  # not contiguous
    s.save_snapshot(SnapshotMeta(3, 1, (1,)), b"snap")
    s.compact(3)
    with pytest.raises(ValueError):
        s.append([ent(2, 3)])  # at the compaction point
    s.append([ent(2, 4)])
    s.close()
    s = FileStorage(str(tmp_path / "s"))
    with pytest.raises(ValueError):
        s.append([ent(2, 2)])  # below the snapshot, after reopening
    assert [e.index for e in s.load().entries] == [4]
    s.close()


def test_unsynced_writes_are_not_loaded_and_load_rereads_after_writes(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path / "s"))
    s.append(batch(1, 1, 3))
    s.set_hard_state(HardState(1, 1, 0))
    assert s.load() == Recovered(HardState(), None, None, [])  # as last synced
    s.sync()
    assert s.load() == Recovered(HardState(1, 1, 0), None, None, batch(1, 1, 3))
    s.close()


def test_group_commit_one_write_one_sync(tmp_path: Path) -> None:
    disk = SimDisk(random.Random(1))
    s = FileStorage(SIM_DIR, disk)
    before = dict(disk.counts)
    s.sync()  # nothing buffered
    s.set_hard_state(HardState())  # unchanged: nothing to write
    s.sync()
    assert dict(disk.counts) == before
    for i in range(10):
        s.append(batch(1, 10 * i + 1, 10))
    s.set_hard_state(HardState(1, 1, 5))
    s.sync()
    assert disk.counts["write"] - before["write"] == 1
    assert disk.counts["sync"] - before["sync"] == 1
    assert len(s.load().entries) == 100


def test_segment_rollover_and_compaction(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    p = Pair(d, segment_bytes=300)
    for i in range(30):
        p.append(batch(1 + i // 10, 5 * i + 1, 5))
        p.set_hard_state(HardState(1 + i // 10, 1, 5 * i))
        p.sync()
    n_segs = len(segments(d))
    assert n_segs >= 10
    p.reopen_and_compare()
    size = p.file.size()
    assert size == sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    p.save_snapshot(SnapshotMeta(100, 2, (1, 2, 3)), b"state at 100")
    p.compact(100)
    left = segments(d)
    assert 1 < len(left) < n_segs
    assert left[0] != segment_name(1)  # deleted from the front
    assert p.file.size() < size + len(b"state at 100") + 100
    got = p.reopen_and_compare()
    assert got.snapshot == SnapshotMeta(100, 2, (1, 2, 3))
    assert [e.index for e in got.entries] == list(range(101, 151))
    assert got.hard_state == HardState(3, 1, 145)
    # compaction never deletes the segment being written, even if all of it is covered
    p.save_snapshot(SnapshotMeta(150, 3, (1, 2, 3)), b"state at 150")
    p.compact(150)
    assert len(segments(d)) == 1
    p.append(batch(3, 151, 2))
    p.sync()
    got = p.reopen_and_compare()
    assert [e.index for e in got.entries] == [151, 152]
    assert got.hard_state == HardState(3, 1, 145)  # kept though its segments are gone


def test_save_snapshot_keeps_later_entries(tmp_path: Path) -> None:
    p = Pair(str(tmp_path / "s"))
    p.append(batch(1, 1, 10))
    p.set_hard_state(HardState(1, 1, 8))
    p.sync()
    p.append(batch(1, 11, 2))  # buffered: the snapshot syncs it first
    p.save_snapshot(SnapshotMeta(6, 1, (1, 2)), b"six")
    got = p.reopen_and_compare()
    assert got.snapshot == SnapshotMeta(6, 1, (1, 2)) and got.snapshot_data == b"six"
    assert [e.index for e in got.entries] == [7, 8, 9, 10, 11, 12]
    p.compact(6)
    with pytest.raises(ValueError):  # entries 4..6 are gone: a snapshot at 3 would leave a gap
        p.file.save_snapshot(SnapshotMeta(3, 1, (1,)), b"older than the compaction")


def ten_entries_eight_committed(d: Path) -> Pair:
    p = Pair(str(d))
    p.append(batch(1, 1, 10))
    p.set_hard_state(HardState(1, 1, 8))
    p.sync()
    return p


def test_staged_snapshot_is_adopted_without_writing_it_again(tmp_path: Path) -> None:
    d = tmp_path / "s"
    p = ten_entries_eight_committed(d)
    meta = SnapshotMeta(6, 1, (1, 2))
    staged = p.file.stage_snapshot(meta, b"six")
    assert (d / "snapshot.staging").exists() and not (d / SNAPSHOT_NAME).exists()
    p.append(batch(1, 11, 2))  # the log goes on while the snapshot is staged
    p.sync()
    written = []
    real_open = p.file.fs.open_append
    p.file.fs.open_append = lambda path: (written.append(path), real_open(path))[1]  # type: ignore[method-assign]
    p.file.save_snapshot(meta, b"six", staged)
    p.mem.save_snapshot(meta, b"six")
    assert written == [] and not (d / "snapshot.staging").exists()  # renamed, not rewritten
    got = p.reopen_and_compare()
    assert got.snapshot == meta and got.snapshot_data == b"six"
    assert [e.index for e in got.entries] == list(range(7, 13))


def test_staged_snapshot_made_stale_by_an_install_is_not_adopted(tmp_path: Path) -> None:
    p = ten_entries_eight_committed(tmp_path / "s")
    staged = p.file.stage_snapshot(SnapshotMeta(6, 1, (1, 2)), b"six")
    p.install_snapshot(SnapshotMeta(30, 2, (1, 2)), b"leader")
    # a later local snapshot handed the stale staging file writes afresh
    p.append(batch(2, 31, 2))
    p.sync()
    p.file.save_snapshot(SnapshotMeta(31, 2, (1, 2)), b"mine", staged)
    p.mem.save_snapshot(SnapshotMeta(31, 2, (1, 2)), b"mine")
    got = p.reopen_and_compare()
    assert got.snapshot_data == b"mine" and [e.index for e in got.entries] == [32]


def test_leftover_staging_file_is_removed_at_recovery(tmp_path: Path) -> None:
    d = tmp_path / "s"
    p = Pair(str(d))
    p.append(batch(1, 1, 4))
    p.sync()
    p.file.stage_snapshot(SnapshotMeta(2, 1, (1,)), b"never adopted")  # then the node dies
    got = p.reopen_and_compare()
    assert got.snapshot is None and not (d / "snapshot.staging").exists()


def test_install_snapshot_replaces_the_log(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    p = Pair(d, segment_bytes=200)
    synced_batches(p, 10)
    p.set_hard_state(HardState(4, 2, 20))
    p.append(batch(1, 31, 3))  # buffered, dropped by the install
    old = segments(d)
    assert len(old) > 2
    p.install_snapshot(SnapshotMeta(50, 3, (1, 2, 3)), b"leader state")
    assert set(segments(d)).isdisjoint(old)  # every older segment deleted
    assert p.file.load() == Recovered(HardState(4, 2, 20), SnapshotMeta(50, 3, (1, 2, 3)), b"leader state", [])
    with pytest.raises(ValueError):
        p.file.append([ent(3, 50)])
    with pytest.raises(ValueError):
        p.file.append([ent(3, 52)])
    p.append(batch(3, 51, 2))
    p.sync()
    got = p.reopen_and_compare()
    assert got.snapshot == SnapshotMeta(50, 3, (1, 2, 3))
    assert [e.index for e in got.entries] == [51, 52]
    assert got.hard_state == HardState(4, 2, 20)


def test_compaction_beyond_the_snapshot_keeps_the_entries_after_it(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    s = FileStorage(d, segment_bytes=150)
    synced_batches(s, 10)
    s.set_hard_state(HardState(1, 1, 30))
    s.save_snapshot(SnapshotMeta(9, 1, (1,)), b"nine")
    s.compact(20)  # beyond the snapshot: entries 10..20 are still needed after a restart
    assert segments(d)[0] != segment_name(1)
    s.close()
    rec = FileStorage(d).load()
    assert rec.snapshot == SnapshotMeta(9, 1, (1,))
    assert [e.index for e in rec.entries] == list(range(10, 31))


def test_commit_beyond_an_installed_snapshot_waits_for_its_entries() -> None:
    for crash in (False, True):
        disk = SimDisk(random.Random(3))
        s = FileStorage(SIM_DIR, disk)
        s.append(batch(1, 1, 5))
        s.set_hard_state(HardState(1, 1, 5))
        s.sync()
        s.set_hard_state(HardState(2, 0, 30))  # the ready that installs 20 also brings 21..30
        s.install_snapshot(SnapshotMeta(20, 2, (1, 2)), b"twenty")
        s.append(batch(2, 21, 10))
        if crash:
            disk.crash()  # before the sync
            rec = FileStorage(SIM_DIR, disk).load()
            assert rec == Recovered(HardState(2, 0, 20), SnapshotMeta(20, 2, (1, 2)), b"twenty", [])
        else:
            s.sync()
            s.close()
            rec = FileStorage(SIM_DIR, disk).load()
            assert rec == Recovered(HardState(2, 0, 30), SnapshotMeta(20, 2, (1, 2)), b"twenty", batch(2, 21, 10))


def test_open_snapshot_reads_in_chunks_and_survives_replacement(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path / "s"))
    assert s.open_snapshot() is None
    data = random.Random(5).randbytes(300_000)
    s.append(batch(1, 1, 10))
    s.sync()
    s.save_snapshot(SnapshotMeta(10, 1, (1, 2, 3)), data)
    meta, size, reader = s.open_snapshot()
    assert meta == SnapshotMeta(10, 1, (1, 2, 3)) and size == len(data)
    chunks = [reader.read(65536)]
    s.save_snapshot(SnapshotMeta(10, 1, (1, 2, 3)), b"newer")  # replaces the file mid-transfer
    while chunk := reader.read(65536):
        chunks.append(chunk)
    reader.close()
    assert b"".join(chunks) == data
    meta, size, reader = s.open_snapshot()
    with reader:
        assert size == 5 and reader.read() == b"newer"
    s.close()


def test_is_empty_and_size(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    s = FileStorage(d)
    assert s.is_empty()
    empty_size = s.size()
    assert 0 < empty_size == os.path.getsize(os.path.join(d, segment_name(1)))
    s.append(batch(1, 1, 4))
    s.sync()
    assert s.is_empty()  # as it was when opened
    assert s.size() > empty_size
    s.close()
    s = FileStorage(d)
    assert not s.is_empty()
    s.close()
    only_snapshot = str(tmp_path / "t")
    s = FileStorage(only_snapshot)
    s.install_snapshot(SnapshotMeta(5, 1, (1,)), b"x" * 1000)
    s.close()
    for name in segments(only_snapshot):
        os.remove(os.path.join(only_snapshot, name))
    s = FileStorage(only_snapshot)
    assert not s.is_empty()
    assert s.size() == sum(os.path.getsize(os.path.join(only_snapshot, n)) for n in os.listdir(only_snapshot))
    assert s.size() > 1000
    s.close()
    disk = SimDisk(random.Random(0))
    s = FileStorage(SIM_DIR, disk)
    s.append(batch(1, 1, 1))
    s.close()
    disk.wipe()
    assert FileStorage(SIM_DIR, disk).is_empty()


def test_holds_state_and_an_initial_hard_state_written_with_the_first_segment(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    assert not FileStorage.holds_state(d)
    s = FileStorage(d, initial_hard_state=HardState(lost_state=True))
    assert s.load().hard_state == HardState(lost_state=True)
    s.close()  # nothing synced by the caller: the mark came with the segment itself
    assert FileStorage.holds_state(d)
    again = FileStorage(d, initial_hard_state=HardState())  # ignored: the directory has a log
    assert again.load().hard_state == HardState(lost_state=True) and not again.is_empty()
    disk = SimDisk(random.Random(1))
    FileStorage(SIM_DIR, disk, initial_hard_state=HardState(lost_state=True))
    disk.crash()  # the first segment was synced with its directory before the constructor returned
    assert FileStorage(SIM_DIR, disk).load().hard_state.lost_state


# -- property tests against MemoryStorage ---------------------------------------------------------


class Model:
    """Generates realistic Raft storage calls: committed entries are never overwritten,
    snapshots are taken of committed state, the leader's snapshots are at or past our commit."""

    def __init__(self) -> None:
        self.mem = MemoryStorage()
        self.term = 1

    @property
    def commit(self) -> int:
        return self.mem.hard_state.commit

    @property
    def last(self) -> int:
        return self.mem.offset + len(self.mem.entries)

    @property
    def snap_index(self) -> int:
        return self.mem.snapshot.index if self.mem.snapshot else 0

    def reset_to(self, rec: Recovered) -> None:
        m = self.mem = MemoryStorage()
        m.hard_state, m.snapshot, m.snapshot_data = rec.hard_state, rec.snapshot, rec.snapshot_data
        m.offset = rec.snapshot.index if rec.snapshot else 0
        m.entries = list(rec.entries)
        self.term = max([self.term, rec.hard_state.term, *(e.term for e in rec.entries)])

    def next_op(self, draw: Callable[[Any], Any]) -> tuple[str, tuple[Any, ...]]:
        kind = draw(st.sampled_from(["append"] * 4 + ["hs", "sync", "sync", "snap", "install", "reopen"]))
        if kind == "append":
            lo = max(self.commit, self.mem.offset) + 1
            first = draw(st.integers(lo, self.last + 1))
            self.term += draw(st.integers(0, 1))
            cmds = draw(st.lists(st.none() | st.binary(max_size=40), min_size=1, max_size=6))
            es = [
                Entry(self.term, first + i, c, EntryKind.NOOP if c is None else EntryKind.NORMAL)
                for i, c in enumerate(cmds)
            ]
            return "append", (es,)
        if kind == "hs":
            hs = self.mem.hard_state
            commit = draw(st.integers(hs.commit, max(hs.commit, self.last)))
            return "set_hard_state", (HardState(max(hs.term, self.term), draw(st.integers(0, 3)), commit,
                                                draw(st.booleans())),)
        if kind == "snap" and self.commit > max(self.snap_index, self.mem.offset):
            index = draw(st.integers(max(self.snap_index, self.mem.offset) + 1, self.commit))
            return "save_snapshot", (SnapshotMeta(index, self.term, (1, 2, 3)), draw(st.binary(max_size=64)))
        if kind == "install":
            index = draw(st.integers(max(self.commit, 1), self.last + 5))
            self.term += 1
            return "install_snapshot", (SnapshotMeta(index, self.term, (1, 2)), draw(st.binary(max_size=64)))
        if kind == "reopen":
            return "reopen", ()
        return "sync", ()

    def apply(self, name: str, args: tuple[Any, ...]) -> None:
        getattr(self.mem, name)(*args)
        if name == "save_snapshot":
            self.mem.compact(args[0].index)


def _run_against_memory(fs: FileSystem | None, path: str, data: st.DataObject) -> None:
    seg = data.draw(st.sampled_from([120, 400, 64 * 2**20]))
    model = Model()
    s = FileStorage(path, fs, seg)
    for _ in range(data.draw(st.integers(1, 40))):
        name, args = model.next_op(data.draw)
        if name == "reopen":
            s.close()
            s = FileStorage(path, fs, seg)
            assert s.load() == model.mem.load()
            continue
        getattr(s, name)(*args)
        if name == "save_snapshot":
            s.compact(args[0].index)
        model.apply(name, args)
        if name in ("sync", "save_snapshot", "install_snapshot"):  # durable now: load() reads it back
            assert s.load() == model.mem.load()
    s.close()
    s = FileStorage(path, fs, seg)
    assert s.load() == model.mem.load()
    s.close()


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(PROPERTY, max_examples=120)  # every sync is a real fdatasync
@given(st.data())
def test_property_matches_memory_storage_on_real_files(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        _run_against_memory(OsFileSystem(), os.path.join(d, "s"), data)


@PROPERTY
@given(st.data(), st.integers(0, 2**32))
def test_property_matches_memory_storage_on_simdisk(data: st.DataObject, seed: int) -> None:
    _run_against_memory(SimDisk(random.Random(seed)), SIM_DIR, data)


# -- crash consistency on SimDisk -----------------------------------------------------------------


def _random_op(model: Model, rng: random.Random) -> tuple[str, tuple[Any, ...]]:
    """Like Model.next_op, driven by a random.Random."""
    kind = rng.choice(["append"] * 5 + ["hs", "hs", "sync", "sync", "sync", "snap", "install"])
    if kind == "append":
        lo = max(model.commit, model.mem.offset) + 1
        first = rng.randint(lo, model.last + 1) if rng.random() < 0.3 else model.last + 1
        model.term += rng.random() < 0.2
        es = []
        for i in range(rng.randint(1, 8)):
            c = None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 3, 20, 200, 700]))
            es.append(Entry(model.term, first + i, c, EntryKind.NOOP if c is None else EntryKind.NORMAL))
        return "append", (es,)
    if kind == "hs":
        hs = model.mem.hard_state
        return "set_hard_state", (HardState(max(hs.term, model.term) + (rng.random() < 0.3), rng.randint(0, 3),
                                            rng.randint(hs.commit, max(hs.commit, model.last)), rng.random() < 0.1),)
    if kind == "snap" and model.commit > max(model.snap_index, model.mem.offset):
        index = rng.randint(max(model.snap_index, model.mem.offset) + 1, model.commit)
        return "save_snapshot", (SnapshotMeta(index, model.term, (1, 2, 3)), rng.randbytes(rng.randint(0, 900)))
    if kind == "install" and rng.random() < 0.4:
        model.term += 1
        index = rng.randint(max(model.commit, 1), model.last + 5)
        return "install_snapshot", (SnapshotMeta(index, model.term, (1, 2)), rng.randbytes(rng.randint(0, 900)))
    return "sync", ()


def _log_state(r: Recovered | MemoryStorage) -> tuple[Any, ...]:
    rec = r.load() if isinstance(r, MemoryStorage) else r
    return (rec.snapshot, rec.snapshot_data, tuple(rec.entries))


def _crash_run(seed: int, steps: int = 60) -> tuple[int, int]:
    """Random calls with crashes; returns (crashes, bytes repaired)."""
    rng = random.Random(seed)
    disk = SimDisk(random.Random(seed ^ 0x5EED))
    seg_bytes = rng.choice([256, 1024, 4096])
    model = Model()
    s = FileStorage(SIM_DIR, disk, seg_bytes)
    logs = [_log_state(model.mem)]  # states the log passed through since the last durable point
    hss = [model.mem.hard_state]
    repaired = 0
    for _ in range(steps):
        name, args = _random_op(model, rng)
        model.apply(name, args)
        logs.append(_log_state(model.mem))
        hss.append(model.mem.hard_state)
        if rng.random() < 0.15:
            disk.arm(rng.randint(1, 4))
        crashed = False
        try:
            getattr(s, name)(*args)
            if name == "save_snapshot":
                s.compact(args[0].index)
        except SimCrash:
            crashed = True
        disk.disarm()
        if not crashed and name in ("sync", "save_snapshot", "install_snapshot"):
            logs, hss = [logs[-1]], [hss[-1]]
        if not crashed and rng.random() < 0.08:
            crashed = True  # power lost between calls
        if not crashed:
            continue
        while True:  # crash, recover (maybe crashing again during the repair)
            disk.crash()
            if rng.random() < 0.3:
                disk.arm(rng.randint(1, 3))
            try:
                s = FileStorage(SIM_DIR, disk, seg_bytes)
            except SimCrash:
                continue
            finally:
                disk.disarm()
            break
        repaired += s.repaired_bytes
        rec = s.load()
        assert _log_state(rec) in logs, f"seed {seed}: recovered log is none of the states since the last sync"
        assert rec.hard_state in hss, f"seed {seed}: recovered hard state {rec.hard_state} not in {hss}"
        model.reset_to(rec)
        logs, hss = [_log_state(rec)], [rec.hard_state]
    return disk.crashes, repaired


def test_crash_consistency_on_simdisk(caplog: pytest.LogCaptureFixture) -> None:
    crashes = repaired = 0
    with caplog.at_level(logging.WARNING, logger="raft_actors.storage.file"):
        for seed in range(1000):
            c, r = _crash_run(seed, steps=80)
            crashes += c
            repaired += r
    assert crashes > 5000  # the test exercised crashes...
    assert repaired > 0  # ...including torn writes that had to be cut off, of every kind
    reasons = {r.getMessage().split("(")[1].split(")")[0] for r in caplog.records if "torn write" in r.getMessage()}
    assert {"record runs past the end of the file", "record header cut short", "record checksum mismatch",
            "record header checksum mismatch", "segment header"} <= reasons


def test_crash_at_every_operation_of_a_snapshot_install() -> None:
    """A crash at each file operation of install_snapshot recovers either the old or the new state."""
    outcomes = set()
    for k in range(1, 20):
        for coin in range(4):
            disk = SimDisk(random.Random(k * 10 + coin))
            s = FileStorage(SIM_DIR, disk, 300)
            for i in range(6):
                s.append(batch(2, 5 * i + 1, 5))
                s.set_hard_state(HardState(2, 1, 5 * i + 1))
                s.sync()
            old = s.load()
            s.set_hard_state(HardState(3, 2, 26))
            disk.arm(k)
            try:
                s.install_snapshot(SnapshotMeta(40, 3, (1, 2)), b"installed")
            except SimCrash:
                pass
            else:
                assert disk.armed  # the install took fewer than k operations
            disk.crash()
            rec = FileStorage(SIM_DIR, disk, 300).load()
            new = Recovered(HardState(3, 2, 26), SnapshotMeta(40, 3, (1, 2)), b"installed", [])
            assert rec in (old, new)
            outcomes.add(rec == new)
    assert outcomes == {False, True}


# -- torn tails and corruption on real files ------------------------------------------------------


def _storage_with_records(d: str, segment_bytes: int = 64 * 2**20, n: int = 6) -> list[int]:
    """A storage with ``n`` synced batches; returns the size of its last segment after each sync."""
    s = FileStorage(d, segment_bytes=segment_bytes)
    sizes = []
    for i in range(n):
        s.append([ent(1, 3 * i + j + 1, b"payload-%d" % (3 * i + j + 1) * 8) for j in range(3)])
        s.set_hard_state(HardState(1, 1, 3 * i))
        s.sync()
        sizes.append(os.path.getsize(os.path.join(d, segments(d)[-1])))
    s.close()
    return sizes


def _reopen_and_keep_working(d: str, expect_last: int) -> FileStorage:
    s = FileStorage(d)
    rec = s.load()
    assert [e.index for e in rec.entries] == list(range(1, expect_last + 1))
    s.append([ent(2, expect_last + 1, b"after repair")])
    s.sync()
    s.close()
    s = FileStorage(d)
    assert s.repaired_bytes == 0
    assert s.load().entries[-1] == ent(2, expect_last + 1, b"after repair")
    return s


def test_torn_tail_cut_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    sizes = _storage_with_records(src)
    seg = segments(src)[-1]
    whole = (Path(src) / seg).read_bytes()
    start, end = sizes[-2], sizes[-1]  # the last sync wrote entries 16..18 and a hard state
    assert end - start > 100
    original = FileStorage(src)
    full = original.load().entries
    original.close()
    boundary = end - 38  # where the hard-state record written by the last sync starts
    assert whole[boundary + 8] == 2  # its type byte
    for cut in range(start + 1, end):
        d = str(tmp_path / f"cut{cut}")
        shutil.copytree(src, d)
        (Path(d) / seg).write_bytes(whole[:cut])
        s = FileStorage(d)
        rec = s.load()
        n = len(rec.entries)
        if cut < boundary:  # inside the entries record: cut off whole
            assert n == 15 and s.repaired_bytes == cut - start
        else:  # inside the hard-state record (or exactly before it: nothing torn)
            assert n == 18 and s.repaired_bytes == cut - boundary
        assert rec.entries == full[:n]
        assert rec.hard_state == HardState(1, 1, 12)  # the hard state written with it is torn
        s.close()
        assert os.path.getsize(os.path.join(d, seg)) < end
        _reopen_and_keep_working(d, n).close()
        shutil.rmtree(d)


def test_torn_fresh_segment_is_rewritten(tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    s = FileStorage(src, segment_bytes=100)
    s.append(batch(1, 1, 10))
    s.set_hard_state(HardState(7, 3, 10))
    s.sync()  # fills segment 1 and starts segment 2 (magic + hard state)
    s.close()
    assert segments(src) == [segment_name(1), segment_name(2)]
    fresh = Path(src) / segment_name(2)
    head = fresh.read_bytes()
    for cut in range(len(head)):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / segment_name(2)).write_bytes(head[:cut])
        s = FileStorage(str(d), segment_bytes=100)
        # cut inside the magic: the whole file is redone; after it: the torn record is cut
        assert s.repaired_bytes == (cut if cut < 8 else cut - 8)
        assert s.load().hard_state == HardState(7, 3, 10)
        s.close()
        assert (d / segment_name(2)).read_bytes()[:8] == b"RAFTWAL1"
        s = FileStorage(str(d), segment_bytes=100)
        s.save_snapshot(SnapshotMeta(10, 1, (1,)), b"ten")
        s.compact(10)  # deletes segment 1: the rewritten segment carries the hard state on its own
        s.close()
        assert segments(d) == [segment_name(2)]
        s = FileStorage(str(d), segment_bytes=100)
        assert s.load() == Recovered(HardState(7, 3, 10), SnapshotMeta(10, 1, (1,)), b"ten", [])
        s.close()
        shutil.rmtree(d)
    for content in (bytes(30), head[:5] + bytes(30)):  # created, then zero-filled by the file system
        d = tmp_path / f"zeros{len(content)}{content[:1]!r}"
        shutil.copytree(src, d)
        (d / segment_name(2)).write_bytes(content)
        s = FileStorage(str(d))
        assert s.repaired_bytes == len(content)
        assert s.load().hard_state == HardState(7, 3, 10)
        s.close()
    d = tmp_path / "garbage"
    shutil.copytree(src, d)
    (d / segment_name(2)).write_bytes(b"RAFTxx" + bytes(30))  # not a magic being written
    with pytest.raises(CorruptStorageError, match="magic"):
        FileStorage(str(d))


def test_zero_filled_tails_are_torn_writes(tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    s = FileStorage(src)
    s.append(batch(1, 1, 3))
    s.sync()
    start = s.size()
    s.append([ent(1, 4, b"\xab" * 3000)])  # spans several sectors
    s.sync()
    end = s.size()
    s.close()
    seg = segments(src)[0]
    whole = (Path(src) / seg).read_bytes()
    assert len(whole) == end

    def variant(name: str, content: bytes) -> FileStorage:
        d = tmp_path / name
        shutil.copytree(src, d)
        (d / seg).write_bytes(content)
        return FileStorage(str(d))

    # the file system extended the file but never wrote the data
    s = variant("extended", whole[:start] + bytes(end - start))
    assert s.repaired_bytes == end - start and [e.index for e in s.load().entries] == [1, 2, 3]
    # zeros from a sector boundary inside the last record to the end of the file
    aligned = (start // 512 + 2) * 512
    s = variant("zero_tail", whole[:aligned] + bytes(end - aligned))
    assert s.repaired_bytes == end - start
    # a hole: one sector of the last record never written, the sectors after it were
    hole = whole[:aligned] + bytes(512) + whole[aligned + 512 :]
    s = variant("hole", hole)
    assert s.repaired_bytes == end - start and len(s.load().entries) == 3
    # zeros after the last whole record
    s = variant("zeros_after", whole + bytes(700))
    assert s.repaired_bytes == 700 and len(s.load().entries) == 4


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _expect_corrupt(d: str, path: Path, offset: int) -> None:
    with pytest.raises(CorruptStorageError) as err:
        FileStorage(d)
    assert err.value.path == str(path) and err.value.offset == offset
    assert str(path) in str(err.value) and f"offset {offset}" in str(err.value)


def test_flipped_byte_in_an_early_record_is_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    sizes = _storage_with_records(d)
    seg = Path(d) / segments(d)[0]
    record = sizes[1]  # the entries record of the third batch, followed by valid ones
    _corrupt(seg, record + 40)
    _expect_corrupt(d, seg, record)


def test_flipped_length_field_is_corruption_not_a_torn_write(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    sizes = _storage_with_records(d)
    seg = Path(d) / segments(d)[0]
    _corrupt(seg, sizes[2] + 2)  # the length would now run past the end of the file
    _expect_corrupt(d, seg, sizes[2])


def test_flipped_byte_in_the_final_record_is_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    sizes = _storage_with_records(d)
    seg = Path(d) / segments(d)[0]
    last_record = sizes[-1] - 8 - 1 - 25 - 4  # the hard-state record closing the last sync
    data = seg.read_bytes()
    assert data[last_record + 8] == 2  # its type byte
    _corrupt(seg, last_record + 9)  # its term
    _expect_corrupt(d, seg, last_record)
    seg.write_bytes(data)
    _corrupt(seg, sizes[-2] + 30)  # inside the last entries record (no zeros anywhere near)
    _expect_corrupt(d, seg, sizes[-2])


def test_damage_in_a_non_last_segment_is_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    _storage_with_records(d, segment_bytes=250)
    names = segments(d)
    assert len(names) >= 3
    seg = Path(d) / names[1]
    size = seg.stat().st_size
    _corrupt(seg, size - 3)  # its final record: a torn write could only be in the last segment
    with pytest.raises(CorruptStorageError) as err:
        FileStorage(d)
    assert err.value.path == str(seg) and str(seg) in str(err.value)
    _corrupt(seg, size - 3)
    FileStorage(d).close()  # undamaged again
    seg.write_bytes(seg.read_bytes()[: size - 10])  # cut short: not the end of the log either
    with pytest.raises(CorruptStorageError):
        FileStorage(d)


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    _storage_with_records(d, segment_bytes=250)
    names = segments(d)
    assert len(names) >= 3
    os.remove(os.path.join(d, names[1]))
    last = Path(d) / names[-1]
    last.write_bytes(last.read_bytes()[:-3])  # a torn tail too: not repaired in a corrupt directory
    before = {n: (Path(d) / n).read_bytes() for n in os.listdir(d)}
    with pytest.raises(CorruptStorageError) as err:
        FileStorage(d)
    assert err.value.path == os.path.join(d, names[1])
    assert {n: (Path(d) / n).read_bytes() for n in os.listdir(d)} == before


def test_damaged_snapshot_is_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    s = FileStorage(d)
    s.append(batch(1, 1, 5))
    s.set_hard_state(HardState(1, 1, 5))
    s.sync()
    s.save_snapshot(SnapshotMeta(5, 1, (1, 2, 3)), b"snapshot data " * 20)
    s.close()
    snap = Path(d) / SNAPSHOT_NAME
    size = snap.stat().st_size
    _corrupt(snap, size - 100)
    with pytest.raises(CorruptStorageError) as err:
        FileStorage(d)
    assert err.value.path == str(snap) and "checksum" in str(err.value)
    _corrupt(snap, size - 100)
    _corrupt(snap, 20)  # in the header
    with pytest.raises(CorruptStorageError, match="header"):
        FileStorage(d)


def test_missing_entries_and_commit_beyond_the_log_are_corruption(tmp_path: Path) -> None:
    d = str(tmp_path / "s")
    _storage_with_records(d, segment_bytes=250)
    names = segments(d)
    os.remove(os.path.join(d, names[0]))  # the front segment, holding entries 1..k
    with pytest.raises(CorruptStorageError, match="missing") as err:
        FileStorage(d)
    assert err.value.path == os.path.join(d, names[1])
    d = str(tmp_path / "t")
    s = FileStorage(d)
    s.append(batch(1, 1, 3))
    s.set_hard_state(HardState(1, 1, 10))  # claims entries that were never stored
    s.sync()
    s.close()
    with pytest.raises(CorruptStorageError, match="commits index 10 but the log ends at 3"):
        FileStorage(d)


# -- SIGKILL of a writing process -----------------------------------------------------------------

CHILD = """
import sys
from raft_actors.core.messages import Entry, HardState
from raft_actors.storage.file import FileStorage
s = FileStorage(sys.argv[1], segment_bytes=20000)
last = s.load().entries[-1].index if s.load().entries else 0
while True:
    s.append([Entry(1, last + i, b"x" * (i * 7 % 50)) for i in range(1, 21)])
    last += 20
    s.set_hard_state(HardState(1, 1, last - 10))
    s.sync()
    print(last, flush=True)
"""


def test_sigkill_loses_nothing_synced(tmp_path: Path) -> None:
    rng = random.Random(7)
    d = str(tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    reported = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, d], stdout=subprocess.PIPE, env=env, text=True)
        assert child.stdout is not None
        lines = rng.randint(5, 200)
        for _ in range(lines):
            line = child.stdout.readline()
            assert line, "the child died"
            reported = int(line)
        time.sleep(rng.random() * 0.01)
        os.kill(child.pid, signal.SIGKILL)
        for line in child.stdout:  # synced before the kill landed
            reported = int(line)
        child.wait()
        s = FileStorage(d)
        rec = s.load()
        indexes = [e.index for e in rec.entries]
        assert indexes == list(range(1, len(indexes) + 1))
        assert len(indexes) >= reported
        assert rec.hard_state.commit >= reported - 10
        s.close()


def test_the_lost_state_mark_survives_a_crash_while_the_first_segment_is_created() -> None:
    """A node that lost its state writes its non-voter mark with its very first segment. A crash
    in the middle (files created, nothing sound in them) must not leave a directory that looks
    like one holding state: reopened, the node must still know it lost its state."""
    mark = HardState(lost_state=True)
    for seed in range(60):
        for n in range(1, 7):
            disk = SimDisk(random.Random(seed))
            disk.arm(n)
            try:
                FileStorage("/d", fs=disk, segment_bytes=4096, initial_hard_state=mark).close()
            except SimCrash:
                pass
            disk.disarm()
            disk.crash()
            lost = not FileStorage.holds_state("/d", disk)  # as the node actor decides
            again = FileStorage("/d", fs=disk, initial_hard_state=mark if lost else None)
            assert again.load().hard_state.lost_state, (seed, n)
            again.close()
