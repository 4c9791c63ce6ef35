"""Persistence of a node's log and hard state."""

from .base import Recovered, Storage
from .file import CorruptStorageError, FileStorage
from .fs import FileSystem, OsFileSystem
from .memory import MemoryStorage
from .simdisk import SimCrash, SimDisk

__all__ = [
    "CorruptStorageError",
    "FileStorage",
    "FileSystem",
    "MemoryStorage",
    "OsFileSystem",
    "Recovered",
    "SimCrash",
    "SimDisk",
    "Storage",
]
