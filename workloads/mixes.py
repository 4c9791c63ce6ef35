"""Operation mixes: what a load generator sends.

A mix turns a numpy random generator into a batch of operations, each a ``(kind, payload)``
pair where ``kind`` is ``"write"`` (``payload`` is a command for ``client.submit``) or ``"read"``
(``payload`` is a query for ``client.query``, at the mix's ``read_consistency``). Batches keep
the per-operation cost of generating load to a few hundred nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from raft_actors.state_machines import Counter, KVStore, get, put

from .keys import KeyChooser, uniform

#: an operation: ``("write", command)`` or ``("read", query)``
Op = tuple[str, Any]
ReadConsistency = Literal["linearizable", "follower", "stale"]
WRITE, READ = "write", "read"
_CONSISTENCIES = ("linearizable", "follower", "stale")


@runtime_checkable
class Mix(Protocol):
    """What the load generator needs of a mix."""

    name: str
    read_fraction: float
    read_consistency: str

    @property
    def state_machine(self) -> type:
        """The state machine class a cluster must run for this mix."""
        ...

    def ops(self, rng: np.random.Generator, n: int) -> list[Op]:
        """The next ``n`` operations."""
        ...

    def describe(self) -> str:
        """A one-line description for reports."""
        ...


def _check(read_fraction: float, read_consistency: str) -> None:
    if not 0.0 <= read_fraction <= 1.0:
        raise ValueError(f"read_fraction must be within [0, 1], got {read_fraction!r}")
    if read_consistency not in _CONSISTENCIES:
        raise ValueError(f"read_consistency must be one of {_CONSISTENCIES}, got {read_consistency!r}")


def _is_read(rng: np.random.Generator, n: int, read_fraction: float) -> list[bool]:
    if read_fraction <= 0.0:
        return [False] * n
    if read_fraction >= 1.0:
        return [True] * n
    return (rng.random(n) < read_fraction).tolist()


@dataclass(frozen=True)
class KVMix:
    """Puts and gets on a :class:`~raft_actors.KVStore`.

    Each operation reads with probability ``read_fraction`` (a ``get`` query at
    ``read_consistency``), else writes (a ``put`` of a ``value_size``-byte value); its key comes
    from ``keys``. The value is random bytes drawn once per batch of operations, so a value
    costs nothing per operation while successive batches still write different bytes.
    """

    name: str
    read_fraction: float
    keys: KeyChooser = field(default_factory=uniform)
    value_size: int = 16
    read_consistency: ReadConsistency = "linearizable"

    def __post_init__(self) -> None:
        _check(self.read_fraction, self.read_consistency)
        if not isinstance(self.value_size, int) or self.value_size < 0:
            raise ValueError(f"value_size must be a non-negative integer, got {self.value_size!r}")
        if not isinstance(self.keys, KeyChooser):
            raise TypeError(f"keys must be a key chooser (workloads.keys), got {self.keys!r}")

    @property
    def state_machine(self) -> type:
        """:class:`~raft_actors.KVStore`."""
        return KVStore

    def ops(self, rng: np.random.Generator, n: int) -> list[Op]:
        """The next ``n`` operations: ``("read", get(key))`` or ``("write", put(key, value))``."""
        reads = _is_read(rng, n, self.read_fraction)
        keys = self.keys.sample(rng, n)
        value = rng.bytes(self.value_size) if self.read_fraction < 1.0 else b""
        return [(READ, get(k)) if r else (WRITE, put(k, value)) for r, k in zip(reads, keys)]

    def describe(self) -> str:
        """E.g. ``"50/50: 50% reads (linearizable), keys uniform(n=1000), 16 B values"``."""
        return (f"{self.name}: {self.read_fraction:.0%} reads ({self.read_consistency}), "
                f"keys {self.keys.describe()}, {self.value_size} B values")


@dataclass(frozen=True)
class CounterMix:
    """Increments and reads of a :class:`~raft_actors.Counter`: ``("add", increment)`` writes,
    ``("get",)`` reads with probability ``read_fraction``.

    Every acknowledged increment must show in the final value exactly once, which makes this
    mix a strong end-to-end check: after a run, the counter equals ``increment`` times the
    number of ``"ok"`` writes (plus those whose outcome is unknown and were applied).
    """

    name: str = "counter"
    read_fraction: float = 0.0
    increment: int = 1
    read_consistency: ReadConsistency = "linearizable"

    def __post_init__(self) -> None:
        _check(self.read_fraction, self.read_consistency)
        if not isinstance(self.increment, int) or isinstance(self.increment, bool):
            raise TypeError(f"increment must be an int, got {self.increment!r}")

    @property
    def state_machine(self) -> type:
        """:class:`~raft_actors.Counter`."""
        return Counter

    def ops(self, rng: np.random.Generator, n: int) -> list[Op]:
        """The next ``n`` operations: ``("read", ("get",))`` or ``("write", ("add", increment))``."""
        read: Op = (READ, ("get",))
        write: Op = (WRITE, ("add", self.increment))
        return [read if r else write for r in _is_read(rng, n, self.read_fraction)]

    def describe(self) -> str:
        """E.g. ``"counter: 0% reads (linearizable), add 1"``."""
        return f"{self.name}: {self.read_fraction:.0%} reads ({self.read_consistency}), add {self.increment}"


def write_only(keys: KeyChooser | None = None, value_size: int = 16,
               read_consistency: ReadConsistency = "linearizable") -> KVMix:
    """Puts only. ``keys`` defaults to :func:`~workloads.keys.uniform` over 1000 keys."""
    return KVMix("write-only", 0.0, keys or uniform(), value_size, read_consistency)


def half(keys: KeyChooser | None = None, value_size: int = 16,
         read_consistency: ReadConsistency = "linearizable") -> KVMix:
    """50% gets, 50% puts (YCSB workload A's mix)."""
    return KVMix("50/50", 0.5, keys or uniform(), value_size, read_consistency)


def read_mostly(keys: KeyChooser | None = None, value_size: int = 16,
                read_consistency: ReadConsistency = "linearizable") -> KVMix:
    """95% gets, 5% puts (YCSB workload B's mix)."""
    return KVMix("95% reads", 0.95, keys or uniform(), value_size, read_consistency)


def read_only(keys: KeyChooser | None = None, value_size: int = 16,
              read_consistency: ReadConsistency = "linearizable") -> KVMix:
    """Gets only (YCSB workload C's mix). Keys never written read as ``None``: preload the
    store first (e.g. a short :func:`write_only` run) to read real values."""
    return KVMix("read-only", 1.0, keys or uniform(), value_size, read_consistency)
