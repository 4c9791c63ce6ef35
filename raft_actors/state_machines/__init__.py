"""Replicated state machines: the protocol and the built-ins."""

from .base import PickleSnapshotMixin, StateMachine
from .counter import Counter
from .kv import KVStore, cas, delete, get, put

__all__ = ["Counter", "KVStore", "PickleSnapshotMixin", "StateMachine", "cas", "delete", "get", "put"]
