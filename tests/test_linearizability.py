"""Tests for :mod:`raft_actors.linearizability`.

Hand-written histories pin down the semantics (real-time order, unknown
outcomes, each model's results); hypothesis generates histories by actually
executing operations atomically at random points inside random, overlapping
intervals, which are linearizable by construction, and mutates them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raft_actors.linearizability import (
    ABSENT,
    UNKNOWN,
    CheckResult,
    Model,
    Operation,
    check,
    counter_model,
    kv_model,
    register_model,
)


def op(client: Hashable, inp: Any, call: float, ret: float | None, output: Any = None) -> Operation:
    """Shorthand constructor for an :class:`Operation`."""
    return Operation(client=client, input=inp, call=call, ret=ret, output=output)


# ---------------------------------------------------------------------------
# Reference sequential implementations, independent of the module's models
# ---------------------------------------------------------------------------


def kv_apply(store: dict[Any, Any], inp: Any) -> Any:
    """Execute a key-value operation on ``store`` and return its result."""
    name, key = inp[0], inp[1]
    if name == "put":
        store[key] = inp[2]
        return None
    if name == "get":
        return store.get(key)
    if name == "delete":
        return store.pop(key, None) is not None
    if name == "cas":
        if store.get(key) == inp[2]:
            store[key] = inp[3]
            return True
        return False
    raise AssertionError(inp)


def register_apply(store: dict[Any, Any], inp: Any) -> Any:
    """Execute a register operation on ``store['v']`` and return its result."""
    if inp[0] == "write":
        store["v"] = inp[1]
        return None
    return store.get("v")


def counter_apply(store: dict[Any, Any], inp: Any) -> Any:
    """Execute a counter operation on ``store['v']`` and return its result."""
    if inp[0] == "add":
        store["v"] = store.get("v", 0) + inp[1]
    return store.get("v", 0)


KEYS = ("a", "b", "c")
VALUES = st.integers(1, 4)  # never None, never the "impossible" marker values

kv_inputs = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("get"), st.sampled_from(KEYS)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("cas"), st.sampled_from(KEYS), st.one_of(st.none(), VALUES), VALUES),
)
register_inputs = st.one_of(st.tuples(st.just("write"), st.integers(0, 3)), st.tuples(st.just("read")))
counter_inputs = st.one_of(st.tuples(st.just("add"), st.integers(-2, 3)), st.tuples(st.just("get")))

KINDS: dict[str, tuple[Callable[[], Model], Callable[[dict[Any, Any], Any], Any], Any]] = {
    "kv": (kv_model, kv_apply, kv_inputs),
    "register": (register_model, register_apply, register_inputs),
    "counter": (counter_model, counter_apply, counter_inputs),
}

# (client, input, gap before call, duration, linearization offset,
#  outcome unknown?, took effect if unknown?)
Spec = tuple[int, Any, int, int, int, bool, bool]


def execute(specs: list[Spec], apply: Callable[[dict[Any, Any], Any], Any]) -> list[Operation]:
    """Turn operation specs into a history by running them atomically.

    Each client issues its operations one after another.  An operation with
    a known outcome takes effect at ``call + offset`` (clamped into its
    interval); an unknown-outcome one either never takes effect or does so
    at ``call + offset``, possibly after the client gave up and moved on.
    Applying the effects in order of their points gives the outputs, so the
    history is linearizable by construction.
    """
    clock: dict[int, int] = {}
    timed: list[tuple[float, int, Operation]] = []
    pending: list[tuple[int, Operation]] = []
    for idx, (client, inp, gap, dur, offset, unknown, effect) in enumerate(specs):
        call = clock.get(client, 0) + gap
        ret = call + dur
        clock[client] = ret
        o = op(client, inp, call, None if unknown else ret)
        if unknown and not effect:
            pending.append((idx, o))
            continue
        point = call + (offset if unknown else min(offset, dur))
        timed.append((point, idx, o))
    store: dict[Any, Any] = {}
    history: list[Operation] = [o for _, o in pending]
    for _, _, o in sorted(timed, key=lambda t: (t[0], t[1])):
        out = apply(store, o.input)
        history.append(o if o.ret is None else op(o.client, o.input, o.call, o.ret, out))
    return history


@st.composite
def specs(
    draw: st.DrawFn,
    inputs: st.SearchStrategy[Any],
    max_ops: int = 25,
    unknown_in_ten: int = 1,
) -> list[Spec]:
    """Random operation specs for up to five clients with random overlap.

    About ``unknown_in_ten`` operations in ten have an unknown outcome.
    """
    n_clients = draw(st.integers(1, 5))
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, n_clients - 1),
                inputs,
                st.integers(0, 3),
                st.integers(0, 6),
                st.integers(0, 12),
                st.integers(0, 9).map(lambda x: x < unknown_in_ten),
                st.booleans(),
            ),
            max_size=max_ops,
        )
    )


def random_history(
    rng: random.Random,
    n_ops: int,
    n_clients: int,
    inputs: Callable[[random.Random], Any],
    apply: Callable[[dict[Any, Any], Any], Any],
    unknown_rate: float = 0.02,
) -> list[Operation]:
    """A large linearizable history built with :func:`execute` from ``rng``."""
    spec_list: list[Spec] = []
    for _ in range(n_ops):
        spec_list.append(
            (
                rng.randrange(n_clients),
                inputs(rng),
                rng.randint(0, 3),
                rng.randint(0, 8),
                rng.randint(0, 12),
                rng.random() < unknown_rate,
                rng.random() < 0.5,
            )
        )
    return execute(spec_list, apply)


def random_kv_input(rng: random.Random, keys: int = 10) -> Any:
    """A random key-value operation over ``keys`` keys."""
    key = f"k{rng.randrange(keys)}"
    r = rng.random()
    if r < 0.35:
        return ("put", key, rng.randint(1, 6))
    if r < 0.75:
        return ("get", key)
    if r < 0.85:
        return ("delete", key)
    return ("cas", key, rng.choice([None, 1, 2, 3]), rng.randint(1, 6))


def brute_force_linearizable(history: list[Operation], model: Model) -> bool:
    """Exhaustive reference check, without memoization or pruning.

    Tries every operation that no pending known-outcome operation precedes,
    in every order; unknown-outcome operations may also be skipped forever.
    Only usable for tiny histories.
    """
    outputs = [UNKNOWN if o.ret is None else o.output for o in history]

    def search(state: Any, remaining: frozenset[int]) -> bool:
        if all(history[i].ret is None for i in remaining):
            return True
        for i in remaining:
            blocked = any(
                history[j].ret is not None and history[j].ret < history[i].call  # type: ignore[operator]
                for j in remaining
            )
            if blocked:
                continue
            legal, new_state = model.step(state, history[i].input, outputs[i])
            if legal and search(new_state, remaining - {i}):
                return True
        return False

    return search(model.init(), frozenset(range(len(history))))


def reads_of(history: list[Operation]) -> list[int]:
    """Indices of completed read-only operations (get/read) in ``history``."""
    return [i for i, o in enumerate(history) if o.ret is not None and o.input[0] in ("get", "read")]


def with_output(history: list[Operation], index: int, output: Any) -> list[Operation]:
    """A copy of ``history`` where operation ``index`` observed ``output``."""
    o = history[index]
    changed = op(o.client, o.input, o.call, o.ret, output)
    return [changed if i == index else x for i, x in enumerate(history)]


# ---------------------------------------------------------------------------
# Basic semantics
# ---------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    for model in (kv_model(), register_model(), counter_model()):
        result = check([], model)
        assert result.ok
        assert bool(result)


def test_sentinels() -> None:
    import copy
    import pickle

    assert repr(UNKNOWN) == "UNKNOWN"
    assert copy.deepcopy(UNKNOWN) is UNKNOWN
    assert pickle.loads(pickle.dumps(ABSENT)) is ABSENT
    assert kv_model().init() is ABSENT


def test_return_before_call_is_rejected() -> None:
    with pytest.raises(ValueError):
        check([op(0, ("read",), 5, 4, None)], register_model())


def test_non_operation_is_rejected() -> None:
    with pytest.raises(TypeError):
        check([("read",)], register_model())  # type: ignore[list-item]


def test_unknown_operation_name_raises() -> None:
    with pytest.raises(ValueError):
        check([op(0, ("frobnicate", "x"), 0, 1)], kv_model())


# ---------------------------------------------------------------------------
# Register
# ---------------------------------------------------------------------------


def test_register_sequential_ok() -> None:
    h = [
        op(0, ("read",), 0, 1, None),
        op(0, ("write", 1), 2, 3),
        op(1, ("read",), 4, 5, 1),
        op(1, ("write", 2), 6, 7),
        op(0, ("read",), 8, 9, 2),
    ]
    assert check(h, register_model()).ok


def test_register_stale_read_after_completed_write() -> None:
    h = [
        op(0, ("write", 1), 0, 1),
        op(0, ("write", 2), 2, 3),
        op(1, ("read",), 4, 5, 1),
    ]
    result = check(h, register_model())
    assert not result.ok
    assert result.partition_index == 0
    assert result.partition is not None and len(result.partition) == 3
    # Both writes linearize; the read is the one that cannot follow.
    assert [o.input for o in result.longest_prefix] == [("write", 1), ("write", 2)]
    assert result.prefix_states == [1, 2]
    assert result.next_candidates == [(h[2], False)]
    text = result.describe()
    assert "NOT linearizable" in text
    assert "('read',)" in text
    assert "REJECTED" in text


def test_register_concurrent_read_may_see_old_or_new() -> None:
    write = op(0, ("write", 1), 0, 10)
    assert check([write, op(1, ("read",), 2, 3, None)], register_model()).ok
    assert check([write, op(1, ("read",), 2, 3, 1)], register_model()).ok
    assert not check([write, op(1, ("read",), 2, 3, 7)], register_model()).ok


def test_register_equal_timestamps_are_concurrent() -> None:
    # The write returns exactly when the read is invoked: concurrent, so the
    # read may still see the old value.
    h = [op(0, ("write", 1), 0, 5), op(1, ("read",), 5, 6, None)]
    assert check(h, register_model()).ok
    h = [op(0, ("write", 1), 0, 5), op(1, ("read",), 5.5, 6, None)]
    assert not check(h, register_model()).ok


def test_register_new_old_inversion() -> None:
    # Two reads in sequence see 1 then 0 while a single write 0 -> 1 is in
    # flight: no linearization lets the value go back.
    h = [
        op(0, ("write", 0), 0, 1),
        op(1, ("write", 1), 2, 20),
        op(2, ("read",), 3, 4, 1),
        op(2, ("read",), 5, 6, 0),
    ]
    assert not check(h, register_model()).ok
    # Seen in the other order it is fine.
    h[2], h[3] = op(2, ("read",), 3, 4, 0), op(2, ("read",), 5, 6, 1)
    assert check(h, register_model()).ok


def test_register_two_readers_disagree_on_write_order() -> None:
    # Writes of 1 and 2 are concurrent with everything.  Reader A sees 1
    # then 2, reader B sees 2 then 1, and each reader's second read starts
    # after both first reads ended: A forces 1 before 2, B the opposite.
    h = [
        op("w1", ("write", 1), 0, 100),
        op("w2", ("write", 2), 0, 100),
        op("a", ("read",), 10, 11, 1),
        op("a", ("read",), 20, 21, 2),
        op("b", ("read",), 10, 11, 2),
        op("b", ("read",), 20, 21, 1),
    ]
    assert not check(h, register_model()).ok
    # If both readers see 1 then 2, "write 1, reads, write 2, reads" works.
    ok = [
        op("w1", ("write", 1), 0, 100),
        op("w2", ("write", 2), 0, 100),
        op("a", ("read",), 10, 11, 1),
        op("a", ("read",), 20, 21, 2),
        op("b", ("read",), 12, 13, 1),
        op("b", ("read",), 22, 23, 2),
    ]
    assert check(ok, register_model()).ok


def test_register_unknown_write_explains_read() -> None:
    h = [
        op(0, ("write", 1), 0, 1),
        op(1, ("write", 2), 2, None, "ignored"),
        op(2, ("read",), 5, 6, 2),
    ]
    assert check(h, register_model()).ok


def test_register_unknown_write_cannot_act_before_its_call() -> None:
    h = [
        op(0, ("write", 1), 0, 1),
        op(2, ("read",), 2, 3, 2),
        op(1, ("write", 2), 4, None),
    ]
    assert not check(h, register_model()).ok


def test_register_unknown_write_may_never_happen() -> None:
    h = [
        op(1, ("write", 2), 0, None),
        op(2, ("read",), 5, 6, None),
        op(2, ("read",), 7, 8, None),
    ]
    assert check(h, register_model()).ok


def test_register_unknown_write_may_happen_late() -> None:
    # The client gave up at once, yet the write lands much later.
    h = [
        op(1, ("write", 2), 0, None),
        op(1, ("write", 3), 1, 2),
        op(2, ("read",), 5, 6, 3),
        op(2, ("read",), 100, 101, 2),
    ]
    assert check(h, register_model()).ok


def test_register_unknown_write_observed_then_unobserved() -> None:
    h = [
        op(0, ("write", 0), 0, 1),
        op(1, ("write", 1), 2, None),
        op(2, ("read",), 3, 4, 1),
        op(2, ("read",), 5, 6, 0),
    ]
    result = check(h, register_model())
    assert not result.ok
    assert "?" in result.describe()  # the unknown response time is shown


def test_unhashable_inputs() -> None:
    # Inputs need not be hashable (only states must be).
    h = [
        op(0, ["write", 1], 0, None),
        op(1, ["write", 1], 1, None),
        op(2, ["read"], 2, 3, 1),
        op(2, ["write", 2], 4, 5),
        op(2, ["read"], 6, 7, 1),
    ]
    assert check(h, register_model()).ok
    h.append(op(2, ["read"], 8, 9, 2))
    assert not check(h, register_model()).ok


def test_unknown_output_is_ignored() -> None:
    # Whatever an unknown-outcome read claims to have seen is irrelevant.
    h = [op(0, ("write", 1), 0, 1), op(1, ("read",), 2, None, 999)]
    assert check(h, register_model()).ok


def test_many_unknown_reads_are_cheap() -> None:
    # Timed-out reads never change the state; dominance pruning must make
    # them free even when the history is not linearizable.
    h = [op(0, ("write", 0), 0, 1)]
    h += [op(10 + i, ("read",), 2 + i, None) for i in range(60)]
    h += [op(1, ("read",), 100, 101, 5)]
    assert not check(h, register_model(), timeout=10).ok


# ---------------------------------------------------------------------------
# Key-value store
# ---------------------------------------------------------------------------


def test_kv_basic_ok() -> None:
    h = [
        op(0, ("get", "x"), 0, 1, None),
        op(0, ("put", "x", 1), 2, 3),
        op(1, ("get", "x"), 4, 5, 1),
        op(1, ("cas", "x", 1, 2), 6, 7, True),
        op(0, ("cas", "x", 1, 3), 8, 9, False),
        op(0, ("delete", "x"), 10, 11, True),
        op(1, ("delete", "x"), 12, 13, False),
        op(1, ("cas", "x", None, 5), 14, 15, True),
        op(0, ("get", "x"), 16, 17, 5),
        op(0, ("get", "y"), 0, 17, None),
    ]
    assert check(h, kv_model()).ok
    assert check(h, kv_model(partitioned=False)).ok


def test_kv_stale_read() -> None:
    h = [
        op(0, ("put", "x", 1), 0, 1),
        op(0, ("put", "x", 2), 2, 3),
        op(1, ("get", "x"), 4, 5, 1),
    ]
    assert not check(h, kv_model()).ok


def test_kv_lost_write() -> None:
    # Both writes completed; the later read sees nothing at all.
    h = [
        op(0, ("put", "x", 1), 0, 2),
        op(1, ("put", "x", 2), 1, 3),
        op(2, ("get", "x"), 4, 5, None),
    ]
    assert not check(h, kv_model()).ok


def test_kv_conflicting_cas() -> None:
    base = [op(0, ("put", "x", 0), 0, 1)]
    both_win = base + [
        op(1, ("cas", "x", 0, 1), 2, 5, True),
        op(2, ("cas", "x", 0, 2), 2, 5, True),
    ]
    assert not check(both_win, kv_model()).ok
    one_wins = base + [
        op(1, ("cas", "x", 0, 1), 2, 5, True),
        op(2, ("cas", "x", 0, 2), 2, 5, False),
    ]
    assert check(one_wins + [op(3, ("get", "x"), 6, 7, 1)], kv_model()).ok
    assert not check(one_wins + [op(3, ("get", "x"), 6, 7, 2)], kv_model()).ok
    # A cas expecting absence cannot succeed once the key exists.
    absent = base + [op(1, ("cas", "x", None, 9), 2, 3, True)]
    assert not check(absent, kv_model()).ok


def test_kv_delete_results() -> None:
    assert not check([op(0, ("delete", "x"), 0, 1, True)], kv_model()).ok
    h = [op(0, ("put", "x", 1), 0, 1), op(0, ("delete", "x"), 2, 3, False)]
    assert not check(h, kv_model()).ok


def test_kv_unknown_put_explains_get() -> None:
    h = [
        op(0, ("put", "x", 1), 0, None),
        op(1, ("get", "x"), 3, 4, 1),
        op(1, ("get", "x"), 5, 6, 1),
    ]
    assert check(h, kv_model()).ok


def test_kv_unknown_put_observed_then_unobserved() -> None:
    h = [
        op(0, ("put", "x", 1), 0, None),
        op(1, ("get", "x"), 3, 4, 1),
        op(1, ("get", "x"), 5, 6, None),
    ]
    assert not check(h, kv_model()).ok
    assert not check(h, kv_model(partitioned=False)).ok


def test_kv_unknown_cas_takes_effect() -> None:
    h = [
        op(0, ("put", "x", 1), 0, 1),
        op(1, ("cas", "x", 1, 7), 2, None),
        op(2, ("get", "x"), 10, 11, 7),
    ]
    assert check(h, kv_model()).ok


def test_kv_reports_failing_key_only() -> None:
    h = [
        op(0, ("put", "x", 1), 0, 1),
        op(0, ("get", "x"), 2, 3, 1),
        op(1, ("put", "y", 1), 0, 1),
        op(1, ("get", "y"), 2, 3, 2),
        op(2, ("put", "z", 1), 0, 1),
    ]
    result = check(h, kv_model())
    assert not result.ok
    assert result.partition is not None
    assert {o.input[1] for o in result.partition} == {"y"}
    assert result.partition_index == 1
    assert result.partitions_checked == 2
    assert [o.input for o in result.longest_prefix] == [("put", "y", 1)]


# ---------------------------------------------------------------------------
# Counter
# ---------------------------------------------------------------------------


def test_counter_ok() -> None:
    h = [
        op(0, ("add", 1), 0, 10, 3),
        op(1, ("add", 2), 1, 5, 2),
        op(2, ("get",), 6, 7, 2),
        op(2, ("get",), 11, 12, 3),
    ]
    assert check(h, counter_model()).ok


def test_counter_lost_increment() -> None:
    h = [
        op(0, ("add", 1), 0, 2, 1),
        op(1, ("add", 1), 1, 3, 1),
    ]
    assert not check(h, counter_model()).ok
    h = [
        op(0, ("add", 1), 0, 1, 1),
        op(1, ("add", 1), 2, 3, 2),
        op(2, ("get",), 4, 5, 1),
    ]
    assert not check(h, counter_model()).ok


def test_counter_unknown_add() -> None:
    h = [
        op(0, ("add", 5), 0, None),
        op(1, ("add", 1), 1, 2, 6),
        op(1, ("get",), 3, 4, 6),
    ]
    assert check(h, counter_model()).ok
    h[2] = op(1, ("get",), 3, 4, 1)
    assert not check(h, counter_model()).ok


def test_counter_identical_unknown_ops_may_all_take_effect() -> None:
    # Two identical timed-out additions both happened.
    h = [
        op(0, ("add", 2), 0, None),
        op(1, ("add", 2), 1, None),
        op(2, ("add", 1), 5, 7, 5),
    ]
    assert check(h, counter_model()).ok
    h.append(op(2, ("add", 1), 8, 9, 8))
    assert not check(h, counter_model()).ok
    # The first is needed before the second was even invoked.
    h = [
        op(0, ("add", 2), 0, None),
        op(1, ("get",), 1, 2, 2),
        op(0, ("add", 2), 3, None),
        op(1, ("get",), 5, 6, 4),
    ]
    assert check(h, counter_model()).ok


def test_counter_unknown_subset_choice() -> None:
    # Only some of the timed-out additions may be used, and the search must
    # not confuse "used more of them" with "used fewer": +2 before the first
    # known op, -1 after it, +1 never.
    h = [
        op(3, ("add", 1), 1, None),
        op(1, ("add", 2), 1, None),
        op(0, ("add", 0), 2, 6, 2),
        op(0, ("add", -1), 0, None),
        op(0, ("add", 2), 8, 12, 3),
    ]
    assert check(h, counter_model()).ok


# ---------------------------------------------------------------------------
# Describe and timeouts
# ---------------------------------------------------------------------------


def test_describe_ok_and_truncation() -> None:
    assert "is linearizable" in check([], kv_model()).describe()
    h = [op(0, ("write", i), 2 * i, 2 * i + 1) for i in range(200)]
    h.append(op(1, ("read",), 1000, 1001, -1))
    result = check(h, register_model())
    assert not result.ok
    assert len(result.longest_prefix) == 200
    text = result.describe(max_lines=10)
    assert "more) ..." in text
    assert len(text.splitlines()) < 60


def test_timeout_zero_raises() -> None:
    with pytest.raises(TimeoutError):
        check([op(0, ("read",), 0, 1, None)], register_model(), timeout=0)


def test_timeout_on_hard_history() -> None:
    # Unknown-outcome additions of distinct powers of two, each followed by
    # an impossible read: every subset of them gives a different state, so
    # refuting the read means exploring exponentially many configurations.
    h = [op(i, ("add", 2**i), i, None) for i in range(40)]
    h.append(op("r", ("get",), 50, 51, -1))
    with pytest.raises(TimeoutError):
        check(h, counter_model(), timeout=0.3)


def test_custom_partition_function() -> None:
    # A model whose partition splits registers by name: ("write", name, v).
    def step(state: Any, inp: Any, output: Any) -> tuple[bool, Any]:
        if inp[0] == "write":
            return True, inp[2]
        return output is UNKNOWN or output == state, state

    def partition(history: list[Operation]) -> list[list[Operation]]:
        groups: dict[Any, list[Operation]] = {}
        for o in history:
            groups.setdefault(o.input[1], []).append(o)
        return list(groups.values())

    model = Model(init=lambda: None, step=step, partition=partition)
    h = [
        op(0, ("write", "p", 1), 0, 1),
        op(0, ("write", "q", 2), 2, 3),
        op(1, ("read", "p"), 4, 5, 1),
        op(1, ("read", "q"), 6, 7, 2),
    ]
    assert check(h, model).ok
    unpartitioned = Model(init=model.init, step=step)
    # Without partitioning, "p" and "q" share a register and the read of p fails.
    assert not check(h, unpartitioned).ok


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", sorted(KINDS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_executed_histories_are_linearizable(kind: str, data: st.DataObject) -> None:
    make_model, apply, inputs = KINDS[kind]
    history = execute(data.draw(specs(inputs)), apply)
    result = check(history, make_model(), timeout=30)
    assert result.ok, result.describe()


@pytest.mark.parametrize("kind", sorted(KINDS))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_read_of_never_written_value_is_rejected(kind: str, data: st.DataObject) -> None:
    make_model, apply, inputs = KINDS[kind]
    history = execute(data.draw(specs(inputs)), apply)
    reads = reads_of(history)
    assume(reads)
    index = data.draw(st.sampled_from(reads))
    # Written values are small integers; counter sums stay far below this.
    bad = with_output(history, index, 10**6)
    result = check(bad, make_model(), timeout=30)
    assert not result.ok
    assert result.partition is not None
    assert bad[index] in result.partition


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    mutate=st.booleans(),
    new_output=st.sampled_from([None, True, False, 1, 2, 3, 4]),
)
def test_kv_partitioned_and_unpartitioned_agree(data: st.DataObject, mutate: bool, new_output: Any) -> None:
    history = execute(data.draw(specs(kv_inputs, max_ops=20)), kv_apply)
    known = [i for i, o in enumerate(history) if o.ret is not None]
    if mutate and known:
        history = with_output(history, data.draw(st.sampled_from(known)), new_output)
    partitioned = check(history, kv_model(), timeout=30)
    whole = check(history, kv_model(partitioned=False), timeout=30)
    assert partitioned.ok == whole.ok
    if not mutate:
        assert partitioned.ok


MUTANT_OUTPUTS = st.sampled_from([None, True, False, 0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_agrees_with_brute_force(kind: str, data: st.DataObject) -> None:
    # Small histories with many unknown outcomes and a few corrupted
    # outputs, so both verdicts occur and the pruning rules are exercised.
    make_model, apply, inputs = KINDS[kind]
    history = execute(data.draw(specs(inputs, max_ops=7, unknown_in_ten=4)), apply)
    for _ in range(data.draw(st.integers(0, 2))):
        if history:
            index = data.draw(st.integers(0, len(history) - 1))
            history = with_output(history, index, data.draw(MUTANT_OUTPUTS))
    # The brute force needs an unpartitioned model (the per-key kv state
    # only holds one key).
    reference = kv_model(partitioned=False) if kind == "kv" else make_model()
    expected = brute_force_linearizable(history, reference)
    assert check(history, make_model()).ok == expected


@PROPERTY_SETTINGS
@given(data=st.data())
def test_failure_report_is_consistent(data: st.DataObject) -> None:
    # The reported prefix is a real linearization of part of the history:
    # replaying it through the model accepts every step and yields the
    # reported states, and it respects real-time order.
    history = execute(data.draw(specs(register_inputs)), register_apply)
    reads = reads_of(history)
    assume(reads)
    bad = with_output(history, data.draw(st.sampled_from(reads)), 10**6)
    result = check(bad, register_model())
    assert not result.ok
    model = register_model()
    state = model.init()
    for o, expected in zip(result.longest_prefix, result.prefix_states, strict=True):
        legal, state = model.step(state, o.input, UNKNOWN if o.ret is None else o.output)
        assert legal
        assert state == expected
    assert result.partition is not None
    chosen = {id(o) for o in result.longest_prefix}
    for a in result.partition:
        for b in result.longest_prefix:
            if a.ret is not None and a.ret < b.call:
                assert id(a) in chosen
    assert isinstance(result, CheckResult)
    assert result.describe()


# ---------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------


def test_large_kv_history() -> None:
    rng = random.Random(1234)
    history = random_history(rng, 2000, 5, random_kv_input, kv_apply)
    assert len({o.input[1] for o in history}) == 10
    result = check(history, kv_model(), timeout=60)
    assert result.ok, result.describe()
    assert result.partitions_checked == 10

    index = next(i for i in reversed(reads_of(history)) if history[i].output is not None)
    bad = with_output(history, index, 10**6)
    result = check(bad, kv_model(), timeout=60)
    assert not result.ok
    assert result.partition is not None
    assert {o.input[1] for o in result.partition} == {history[index].input[1]}


def test_large_single_key_history() -> None:
    rng = random.Random(99)
    history = random_history(rng, 300, 5, lambda r: random_kv_input(r, keys=1), kv_apply, unknown_rate=0.05)
    assert check(history, kv_model(), timeout=60).ok
    history = random_history(
        rng,
        300,
        5,
        lambda r: ("write", r.randint(0, 5)) if r.random() < 0.5 else ("read",),
        register_apply,
    )
    assert check(history, register_model(), timeout=60).ok


def test_long_sequential_history_needs_no_recursion() -> None:
    n = sys.getrecursionlimit() * 3
    history = [op(0, ("add", 1), 2 * i, 2 * i + 1, i + 1) for i in range(n)]
    assert check(history, counter_model(), timeout=60).ok
    history.append(op(0, ("get",), 2 * n, 2 * n + 1, n - 1))
    result = check(history, counter_model(), timeout=60)
    assert not result.ok
    assert len(result.longest_prefix) == n
