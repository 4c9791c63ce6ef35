"""The few file-system operations durable storage needs, and their implementation on real files.

:class:`~raft_actors.storage.file.FileStorage` does all its I/O through a :class:`FileSystem`,
so the deterministic simulator can run it on an in-memory disk that loses unsynced data when it
"crashes" (:class:`~raft_actors.storage.simdisk.SimDisk`), while a real node uses
:class:`OsFileSystem`.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol

Buffer = bytes | bytearray | memoryview


class AppendFile(Protocol):
    """A file open for appending: writes go to its end; :meth:`sync` makes them durable."""

    def write(self, data: Buffer) -> None:
        """Append all of ``data`` (not durable until :meth:`sync`)."""
        ...

    def sync(self) -> None:
        """Make every byte written so far durable (``fdatasync``)."""
        ...

    def tell(self) -> int:
        """The size of the file, i.e. where the next write goes."""
        ...

    def close(self) -> None:
        """Release the file (without syncing it)."""
        ...


class FileSystem(Protocol):
    """The file operations :class:`~raft_actors.storage.file.FileStorage` uses.

    Creating, renaming and removing a file are durable only after :meth:`sync_dir` of its
    directory; the bytes of a file only after :meth:`AppendFile.sync` (or :meth:`truncate`).
    """

    def makedirs(self, path: str) -> None:
        """Create directory ``path`` (and its parents) if it does not exist."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names of the entries of directory ``path``, sorted."""
        ...

    def exists(self, path: str) -> bool:
        """Whether a file or directory ``path`` exists."""
        ...

    def size(self, path: str) -> int:
        """Size in bytes of file ``path``."""
        ...

    def read(self, path: str) -> bytes:
        """The whole content of file ``path``."""
        ...

    def open_read(self, path: str) -> BinaryIO:
        """File ``path`` open for binary reading, positioned at its start.

        The handle keeps reading the file it opened even if the name is later renamed over or
        removed.
        """
        ...

    def open_append(self, path: str) -> AppendFile:
        """File ``path`` open for appending, created (empty) if missing."""
        ...

    def truncate(self, path: str, size: int) -> None:
        """Cut file ``path`` to ``size`` bytes, durably (the file is synced)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, atomically replacing ``dst`` if it exists."""
        ...

    def remove(self, path: str) -> None:
        """Delete file ``path``."""
        ...

    def sync_dir(self, path: str) -> None:
        """Make the creations, renames and removals done in directory ``path`` durable."""
        ...


def _datasync(fd: int) -> None:
    """Flush a file's data and the metadata needed to read it back."""
    fdatasync = getattr(os, "fdatasync", None)
    if fdatasync is not None:
        fdatasync(fd)
    else:  # macOS, Windows
        os.fsync(fd)


class OsAppendFile:
    """An :class:`AppendFile` on a real file (``O_APPEND``, ``os.write``, ``fdatasync``)."""

    def __init__(self, path: str):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        self.path = path
        self._fd = os.open(path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def sync(self) -> None:
        _datasync(self._fd)

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class OsFileSystem:
    """A :class:`FileSystem` on the real file system of this machine."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")  # the caller closes it

    def open_append(self, path: str) -> OsAppendFile:
        return OsAppendFile(path)

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        if os.name == "nt":  # directories cannot be opened (nor need syncing) there
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
