"""Persistence of a node's log and hard state."""

from .base import Storage
from .memory import MemoryStorage

__all__ = ["MemoryStorage", "Storage"]
