"""An in-memory disk for the deterministic simulator: it loses what was not synced when it crashes.

Each file has the bytes written to it and a durable length (what the last sync covered). Each
directory has its current map of names, a durable map (as of its last ``sync_dir``) and the
journal of the creations, renames and removals done since. :meth:`SimDisk.crash` reverts every
directory to its durable map plus a random prefix of its journal (a journaling file system
commits metadata changes on its own, in order), and every file to its durable bytes plus a
random prefix of the unsynced bytes (a torn write), sometimes with the end of that prefix
zero-filled from a sector boundary, as a file system that extended a file without writing its
blocks does. :meth:`SimDisk.arm` makes a chosen later operation raise :class:`SimCrash`.
Everything random comes from the ``rng`` given, so a run is reproducible from its seed.
"""

from __future__ import annotations

import errno
import io
import os
import random
from collections import Counter

from .fs import Buffer

#: the granularity at which a crashed disk zero-fills the unwritten end of a file
SECTOR = 512


class SimCrash(Exception):
    """The simulated machine crashed during a file operation; call :meth:`SimDisk.crash` next."""


class _File:
    __slots__ = ("data", "synced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.synced = 0  # data[:synced] is durable


def _stale() -> OSError:
    return OSError(errno.ESTALE, "file handle from before a simulated crash")


class _SimAppendFile:
    """An :class:`~raft_actors.storage.fs.AppendFile` on a :class:`SimDisk` file."""

    def __init__(self, disk: SimDisk, file: _File, path: str):
        self._disk = disk
        self._file = file
        self._epoch = disk._epoch
        self.path = path
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: file is closed")
        if self._epoch != self._disk._epoch:
            raise _stale()

    def write(self, data: Buffer) -> None:
        self._check()
        after = self._disk._tick("write")
        self._file.data += data
        if after:
            raise SimCrash(f"after write to {self.path}")

    def sync(self) -> None:
        self._check()
        after = self._disk._tick("sync")
        self._file.synced = len(self._file.data)
        if after:
            raise SimCrash(f"after sync of {self.path}")

    def tell(self) -> int:
        self._check()
        return len(self._file.data)

    def close(self) -> None:
        self._closed = True


class _SimReader(io.BytesIO):
    """A reader of a :class:`SimDisk` file, as it was when opened; unusable after a crash."""

    def __init__(self, data: bytes, disk: SimDisk):
        super().__init__(data)
        self._disk = disk
        self._epoch = disk._epoch

    def read(self, size: int | None = -1, /) -> bytes:
        if self._epoch != self._disk._epoch:
            raise _stale()
        return super().read(size)

    def readinto(self, buffer: Buffer, /) -> int:  # type: ignore[override]
        if self._epoch != self._disk._epoch:
            raise _stale()
        return super().readinto(buffer)


class SimDisk:
    """A :class:`~raft_actors.storage.fs.FileSystem` in memory, with crashes.

    Creating directories is durable at once (a simplification); everything else follows the
    rules of :class:`~raft_actors.storage.fs.FileSystem`. ``ops`` counts the mutating operations
    done so far and ``counts`` counts them by kind (``write``, ``sync``, ``create``, ``rename``,
    ``remove``, ``truncate``, ``sync_dir``, ``mkdir``).
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._cur: dict[str, dict[str, _File]] = {}
        self._dur: dict[str, dict[str, _File]] = {}
        self._journal: dict[str, list[tuple[str, str, str, _File | None]]] = {}
        self._epoch = 0
        self._armed = 0
        self.ops = 0
        self.counts: Counter[str] = Counter()
        self.crashes = 0
        self._armed_kinds: frozenset[str] | None = None

    # -- crash control -------------------------------------------------------------------

    def arm(self, ops: int, kinds: frozenset[str] | None = None) -> None:
        """Crash at the ``ops``-th next mutating operation (1 = the very next one), counting only
        operations of ``kinds`` if given (e.g. ``{"rename", "remove", "sync_dir"}`` to strike
        while snapshots are saved or installed and segments deleted): it raises
        :class:`SimCrash`, either before doing the operation or just after (chosen with the rng)."""
        if ops < 1:
            raise ValueError("ops must be >= 1")
        self._armed = ops
        self._armed_kinds = kinds

    def disarm(self) -> None:
        """Cancel :meth:`arm`."""
        self._armed = 0

    @property
    def armed(self) -> bool:
        """Whether a crash is still pending."""
        return self._armed > 0

    def _tick(self, kind: str) -> bool:
        """Count one mutating operation; raise :class:`SimCrash` before it, or return True if the
        caller must raise it right after doing the operation."""
        self.ops += 1
        self.counts[kind] += 1
        if self._armed and (self._armed_kinds is None or kind in self._armed_kinds):
            self._armed -= 1
            if self._armed == 0:
                if self.rng.random() < 0.5:
                    raise SimCrash(f"before {kind}")
                return True
        return False

    def crash(self) -> None:
        """The machine lost power: unsynced changes are lost, partially or wholly.

        Every directory reverts to its durable map plus a random prefix of the changes made to it
        since (possibly none, possibly all); every file keeps its durable bytes plus a
        random-length prefix of the bytes written after its last sync, the end of which is
        sometimes zero-filled from a sector boundary (or from the durable end). Open handles
        become unusable.
        """
        self._armed = 0
        self._epoch += 1
        self.crashes += 1
        rng = self.rng
        for d, names in self._dur.items():
            journal = self._journal.pop(d, [])
            k = 0 if rng.random() < 0.5 else rng.randint(0, len(journal))
            for op, a, b, f in journal[:k]:
                if op == "set":
                    assert f is not None
                    names[a] = f
                elif op == "del":
                    del names[a]
                else:  # an atomic rename
                    assert f is not None
                    del names[a]
                    names[b] = f
        self._cur = {d: dict(names) for d, names in self._dur.items()}
        seen: set[int] = set()
        for names in self._cur.values():
            for f in names.values():
                if id(f) in seen:
                    continue
                seen.add(id(f))
                extra = len(f.data) - f.synced
                if extra <= 0:
                    continue
                r = rng.random()
                keep = 0 if r < 0.25 else extra if r < 0.45 else rng.randint(0, extra)
                end = f.synced + keep
                del f.data[end:]
                if keep and rng.random() < 0.25:
                    first_sector = (f.synced // SECTOR + 1) * SECTOR
                    starts = range(first_sector, end, SECTOR)
                    start = f.synced if not starts or rng.random() < 0.3 else rng.choice(starts)
                    f.data[start:end] = bytes(end - start)
                f.synced = len(f.data)

    def wipe(self) -> None:
        """The disk is lost: every file and directory is gone."""
        self._armed = 0
        self._epoch += 1
        self._cur = {}
        self._dur = {}
        self._journal = {}

    # -- FileSystem ----------------------------------------------------------------------

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        return os.path.split(os.path.normpath(path))

    def _dir(self, path: str) -> dict[str, _File]:
        try:
            return self._cur[os.path.normpath(path)]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path) from None

    def _get(self, path: str) -> _File:
        d, name = self._split(path)
        f = self._dir(d).get(name)
        if f is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return f

    def makedirs(self, path: str) -> None:
        path = os.path.normpath(path)
        if path not in self._cur:
            after = self._tick("mkdir")
            self._cur[path] = {}
            self._dur[path] = {}
            if after:
                raise SimCrash(f"after mkdir {path}")

    def listdir(self, path: str) -> list[str]:
        return sorted(self._dir(path))

    def exists(self, path: str) -> bool:
        path = os.path.normpath(path)
        if path in self._cur:
            return True
        d, name = os.path.split(path)
        return name in self._cur.get(d, {})

    def size(self, path: str) -> int:
        return len(self._get(path).data)

    def read(self, path: str) -> bytes:
        return bytes(self._get(path).data)

    def open_read(self, path: str) -> _SimReader:
        return _SimReader(bytes(self._get(path).data), self)

    def open_append(self, path: str) -> _SimAppendFile:
        d, name = self._split(path)
        names = self._dir(d)
        f = names.get(name)
        if f is None:
            after = self._tick("create")
            f = names[name] = _File()
            self._journal.setdefault(os.path.normpath(d), []).append(("set", name, "", f))
            if after:
                raise SimCrash(f"after creating {path}")
        return _SimAppendFile(self, f, path)

    def truncate(self, path: str, size: int) -> None:
        f = self._get(path)
        after = self._tick("truncate")
        del f.data[size:]
        f.synced = len(f.data)
        if after:
            raise SimCrash(f"after truncating {path}")

    def rename(self, src: str, dst: str) -> None:
        sd, sn = self._split(src)
        dd, dn = self._split(dst)
        f = self._get(src)
        target = self._dir(dd)
        after = self._tick("rename")
        del self._cur[sd][sn]
        target[dn] = f
        if sd == dd:
            self._journal.setdefault(sd, []).append(("mv", sn, dn, f))
        else:
            self._journal.setdefault(sd, []).append(("del", sn, "", None))
            self._journal.setdefault(dd, []).append(("set", dn, "", f))
        if after:
            raise SimCrash(f"after renaming {src}")

    def remove(self, path: str) -> None:
        d, name = self._split(path)
        self._get(path)
        after = self._tick("remove")
        del self._cur[d][name]
        self._journal.setdefault(d, []).append(("del", name, "", None))
        if after:
            raise SimCrash(f"after removing {path}")

    def sync_dir(self, path: str) -> None:
        names = self._dir(path)
        after = self._tick("sync_dir")
        self._dur[os.path.normpath(path)] = dict(names)
        self._journal.pop(os.path.normpath(path), None)
        if after:
            raise SimCrash(f"after syncing directory {path}")
