"""What the clients of a Jepsen-style test do, and the model their history is checked against."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..linearizability import Model, counter_model, kv_model
from ..state_machines import Counter, KVStore

#: an operation: ``("write", command)`` or ``("read", query)``
Op = tuple[str, Any]


@dataclass
class Workload:
    """A workload: the state machine the cluster runs, how a client makes its next operation,
    the sequential model the history must be linearizable against, and the reads that end the
    test (each a read of the whole state the model tracks, so a lost write shows).

    ``make_op(rng, client, n)`` returns ``("write", command)`` or ``("read", query)``; the
    command or query is also the operation's input in the history, so the model's ``step``
    must understand it.
    """

    name: str
    state_machine: Callable[[], Any]
    model: Model
    make_op: Callable[[random.Random, int, int], Op]
    final_reads: list[Any] = field(default_factory=list)


def register(keys: tuple[str, ...] = ("a", "b", "c"), read_share: float = 0.4, cas_share: float = 0.2) -> Workload:
    """Registers on the built-in KV store: ``put`` of values no two writes share, ``cas`` and
    ``get`` over a few keys (few keys: many operations on each, so anomalies have a chance to
    show; the checker checks each key on its own)."""

    def make(rng: random.Random, client: int, n: int) -> Op:
        key = rng.choice(keys)
        r = rng.random()
        if r < read_share:
            return "read", ("get", key)
        value = f"{client}.{n}"
        if r < read_share + cas_share:
            return "write", ("cas", key, rng.choice([None, f"{rng.randrange(8)}.{rng.randrange(max(1, n))}"]), value)
        return "write", ("put", key, value)

    return Workload("register", KVStore, kv_model(), make, [("get", k) for k in keys])


def counter(read_share: float = 0.3) -> Workload:
    """The built-in counter: increments by small amounts and reads. Checked as one history
    (no key to split on): keep such runs short, or the check may take long."""

    def make(rng: random.Random, client: int, n: int) -> Op:
        return ("read", ("get",)) if rng.random() < read_share else ("write", ("add", rng.randint(1, 5)))

    return Workload("counter", Counter, counter_model(), make, [("get",)])


WORKLOADS: dict[str, Callable[[], Workload]] = {"register": register, "counter": counter}
