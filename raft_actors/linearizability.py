"""Linearizability checking for concurrent client histories.

This module decides whether a history of client operations (each with an
invocation time, a response time and an observed result) could have been
produced by a single, atomic copy of a sequential object, i.e. whether the
history is *linearizable* (Herlihy & Wing).  It is meant for testing
replicated state machines such as a Raft cluster: record what every client
sent and saw, then ask :func:`check` whether the cluster behaved like one
correct server.

Algorithm
---------
The checker follows Wing & Gong's backtracking search with the refinements
of Lowe ("just-in-time linearization") and Porcupine:

* Every operation becomes a *call* event and (if its outcome is known) a
  *return* event.  The events are sorted by time (calls before returns at
  equal times, so an operation only precedes another when it returned
  strictly before the other was invoked) and threaded on a doubly linked
  list.
* The search walks the list from its head.  Any call event met before the
  first return event belongs to an operation that may be linearized next.
  Linearizing it applies it to the model, unlinks both of its events
  (dancing-links style, so undoing is O(1)) and restarts from the head.
  Reaching a return event means that operation had to be linearized by
  now, so the search backtracks using an explicit stack - no recursion, so
  histories of any length are fine.
* Configurations ``(set of linearized operations, model state)`` already
  explored are memoized (the set is an ``int`` bitset), so each is
  expanded at most once.
* Operations whose outcome is unknown (``ret is None``) never precede
  anything and may be left out entirely.  They live on a separate list and
  are only tried after every known-outcome candidate, which keeps the
  search linear-ish on healthy histories.  The memo table also uses
  *dominance*: a configuration that differs from an explored one only by
  additionally containing unknown-outcome operations (and has the same
  known set and state) cannot succeed where the explored one did not, so it
  is pruned.  This makes e.g. timed-out reads free.  Two more sound
  prunings keep histories with many timed-out writes tractable: among
  invoked unknown-outcome operations with equal inputs only the earliest
  unused one is tried (they are interchangeable), and an unknown-outcome
  operation is not linearized directly after another one whose effect it
  erases (e.g. two writes), since linearizing it alone is at least as
  good.  Refuting a history can still take exponential time in the number
  of unknown-outcome operations (the problem is NP-complete), hence
  ``timeout``.
* The search is done independently for each sub-history returned by the
  model's ``partition`` function (P-compositionality: a history is
  linearizable iff each independent part is), e.g. per key for a key-value
  store.

On failure, the result reports the failing sub-history, the longest
linearizable prefix the search found in it, and which operations could
have come next at that point, which is usually enough to see the bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ABSENT",
    "UNKNOWN",
    "CheckResult",
    "Model",
    "Operation",
    "check",
    "counter_model",
    "kv_model",
    "register_model",
]


class _Sentinel:
    """A named marker object that is hashable, compares by identity and
    survives ``copy``/``pickle`` as the same module-level singleton."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        """Create a sentinel whose ``repr`` (and module attribute name) is ``name``."""
        self._name = name

    def __repr__(self) -> str:
        """Return the sentinel's name."""
        return self._name

    def __reduce__(self) -> str:
        """Pickle/copy as a reference to the module-level global of the same name."""
        return self._name


UNKNOWN: Any = _Sentinel("UNKNOWN")
"""Output passed to :attr:`Model.step` for an operation whose outcome is unknown.

A model must accept any result for such an operation, and return the state
the operation would have produced had it taken effect.
"""

ABSENT: Any = _Sentinel("ABSENT")
"""State used by :func:`kv_model` for a key that holds no value."""


@dataclass(frozen=True)
class Operation:
    """One client operation as observed by the client.

    Attributes:
        client: Identifier of the client that issued the operation.  Purely
            informational; the checker only uses the timestamps.
        input: The operation itself, e.g. ``("put", "x", 3)``.
        call: Invocation time.
        ret: Response time, or ``None`` if the outcome is unknown (the client
            timed out or crashed).  Such an operation may have taken effect at
            any point after ``call``, or never, and precedes no other
            operation.
        output: The observed result; ignored when ``ret`` is ``None``.
    """

    client: Hashable
    input: Any
    call: float
    ret: float | None
    output: Any = None


@dataclass(frozen=True)
class Model:
    """A sequential specification of the object under test.

    Attributes:
        init: Returns the initial state.  States must be hashable (they are
            memoized) and must not be mutated by ``step``.
        step: ``step(state, input, output) -> (legal, new_state)``: whether a
            sequential object in ``state`` may answer ``input`` with
            ``output``, and the state afterwards.  For an operation with
            unknown outcome ``output`` is :data:`UNKNOWN` and the model must
            accept it.
        partition: Optional function splitting a history into independent
            sub-histories, each checked on its own starting from ``init()``.
    """

    init: Callable[[], Any]
    step: Callable[[Any, Any, Any], tuple[bool, Any]]
    partition: Callable[[list[Operation]], list[list[Operation]]] | None = None


def _format_time(t: float | None) -> str:
    """Render a timestamp, with ``?`` for an unknown response time."""
    if t is None:
        return "?"
    return f"{t:g}" if isinstance(t, float) else str(t)


def _format_op(op: Operation) -> str:
    """Render an operation on one line for :meth:`CheckResult.describe`."""
    result = "?" if op.ret is None else repr(op.output)
    return f"[{_format_time(op.call)}, {_format_time(op.ret)}] client={op.client!r} {op.input!r} -> {result}"


@dataclass
class CheckResult:
    """Outcome of :func:`check`.

    Attributes:
        ok: True iff the whole history is linearizable.
        partitions_checked: Number of sub-histories examined (on failure, up
            to and including the failing one).
        partition: On failure, the sub-history that has no linearization
            (as returned by the model's ``partition`` function).
        partition_index: On failure, the index of that sub-history.
        longest_prefix: On failure, the longest sequence of operations of the
            failing sub-history that the search managed to linearize, in
            linearization order.  It respects real-time order, so every
            operation that returned before the next candidate was invoked is
            in it.
        prefix_states: The model state after each operation of
            ``longest_prefix``.
        next_candidates: The operations that could have been linearized right
            after ``longest_prefix`` (all invoked before the earliest
            response among the remaining operations), each paired with
            whether the model accepts its output in the state reached.
            Accepted ones lead only to dead ends.
        initial_state: The model's initial state (for the report).
        linearizations: When ``ok``, the order found for each sub-history (the operations
            with an unknown outcome that took effect are in it; the others are not).
    """

    ok: bool
    partitions_checked: int = 0
    partition: list[Operation] | None = None
    partition_index: int | None = None
    longest_prefix: list[Operation] = field(default_factory=list)
    prefix_states: list[Any] = field(default_factory=list)
    next_candidates: list[tuple[Operation, bool]] = field(default_factory=list)
    initial_state: Any = None
    linearizations: list[list[Operation]] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Truthiness mirrors :attr:`ok`."""
        return self.ok

    def to_html(self, history: Sequence[Operation], title: str = "history") -> str:
        """A self-contained HTML page of ``history`` and this result: one lane per client,
        operations as bars over time, the linearization found (or, on failure, the longest
        linearizable prefix and the operations that could not come next), details on hover.
        No network needed (see :mod:`raft_actors.history_view`)."""
        from .history_view import render

        return render(history, self, title)

    def describe(self, max_lines: int = 60) -> str:
        """Return a human-readable, multi-line explanation of the result.

        Args:
            max_lines: Maximum number of operations listed per section; longer
                sections are elided in the middle.
        """
        if self.ok:
            return f"History is linearizable ({self.partitions_checked} sub-histories checked)."
        part = self.partition or []
        lines = [
            (
                "History is NOT linearizable: sub-history "
                f"#{self.partition_index} ({len(part)} operations) has no valid "
                "linearization."
            ),
            f"Initial state: {self.initial_state!r}",
            (f"Longest linearizable prefix found ({len(self.longest_prefix)} operations; op -> state after):"),
        ]
        prefix_lines = [
            f"  {n + 1:4d}. {_format_op(op)}  => {state!r}"
            for n, (op, state) in enumerate(zip(self.longest_prefix, self.prefix_states, strict=True))
        ]
        lines.extend(_elide(prefix_lines, max_lines, keep_tail=True))
        state = self.prefix_states[-1] if self.prefix_states else self.initial_state
        lines.append(f"State after prefix: {state!r}")
        if self.next_candidates:
            lines.append("Operations that could come next (none leads to a full linearization):")
            cand_lines = [
                f"        {_format_op(op)}  "
                + ("(accepted here, but only dead ends follow)" if legal else "(REJECTED by the model here)")
                for op, legal in self.next_candidates
            ]
            lines.extend(_elide(cand_lines, max_lines, keep_tail=False))
        in_prefix = {id(op) for op in self.longest_prefix}
        rest = sorted((op for op in part if id(op) not in in_prefix), key=lambda o: o.call)
        lines.append(f"Operations not linearized ({len(rest)}, by invocation time):")
        lines.extend(_elide([f"        {_format_op(op)}" for op in rest], max_lines, keep_tail=False))
        lines.append(f"Failing sub-history ({len(part)} operations, by invocation time):")
        lines.extend(
            _elide(
                [f"        {_format_op(op)}" for op in sorted(part, key=lambda o: o.call)],
                max_lines,
                keep_tail=False,
            )
        )
        return "\n".join(lines)


def _elide(lines: list[str], max_lines: int, *, keep_tail: bool) -> list[str]:
    """Shorten ``lines`` to about ``max_lines`` entries with an ellipsis marker.

    With ``keep_tail`` the end of the list is kept (useful for a prefix whose
    last entries matter most); otherwise the start is kept.
    """
    if len(lines) <= max_lines:
        return lines
    omitted = len(lines) - max_lines
    marker = f"        ... ({omitted} more) ..."
    if keep_tail:
        return [marker, *lines[-max_lines:]]
    return [*lines[:max_lines], marker]


# Node kinds of the event lists used by the search.
_KNOWN_CALL = 0
_KNOWN_RET = 1
_UNKNOWN_CALL = 2
_END = 3

# Fixed node indices: heads and tails of the two event lists.
_MAIN_HEAD = 0
_UNK_HEAD = 1
_MAIN_TAIL = 2
_UNK_TAIL = 3
_FIRST_EVENT = 4

# How many search iterations between two looks at the clock.
_CLOCK_EVERY = 0x3FF


@dataclass
class _SearchOutcome:
    """Result of searching one sub-history (indices into that sub-history)."""

    ok: bool
    prefix: list[int]
    states: list[Any]


def _search(ops: Sequence[Operation], model: Model, deadline: float | None) -> _SearchOutcome:
    """Search for a linearization of ``ops`` (one independent sub-history).

    Implements just-in-time linearization with an explicit stack over two
    doubly linked event lists (see the module docstring).  Raises
    :class:`TimeoutError` if ``deadline`` (a :func:`time.monotonic` value)
    passes first.
    """
    n = len(ops)
    step = model.step
    init_state = model.init()
    known = [op.ret is not None for op in ops]
    inputs = [op.input for op in ops]
    outputs = [op.output if k else UNKNOWN for op, k in zip(ops, known, strict=True)]

    # Separate bit numbering for known and unknown-outcome operations, so
    # that dominance between configurations can be tested on the unknown
    # bits alone.
    bit = [0] * n
    next_known = next_unknown = 0
    for i in range(n):
        if known[i]:
            bit[i] = 1 << next_known
            next_known += 1
        else:
            bit[i] = 1 << next_unknown
            next_unknown += 1
    known_left = next_known

    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()

    size = _FIRST_EVENT + len(events)
    nxt = [0] * size
    prv = [0] * size
    kind = [_END] * size
    rank = [len(events)] * size  # tails rank after every event
    node_op = [-1] * size
    ret_node = [-1] * n
    kind[_MAIN_TAIL] = _KNOWN_RET  # acts as a barrier; unreachable in practice
    main_last, unk_last = _MAIN_HEAD, _UNK_HEAD
    for r, (_, is_ret, i) in enumerate(events):
        node = _FIRST_EVENT + r
        rank[node] = r
        node_op[node] = i
        if is_ret:
            ret_node[i] = node
            kind[node] = _KNOWN_RET
        else:
            kind[node] = _KNOWN_CALL if known[i] else _UNKNOWN_CALL
        if kind[node] == _UNKNOWN_CALL:
            nxt[unk_last], prv[node], unk_last = node, unk_last, node
        else:
            nxt[main_last], prv[node], main_last = node, main_last, node
    nxt[main_last], prv[_MAIN_TAIL] = _MAIN_TAIL, main_last
    nxt[unk_last], prv[_UNK_TAIL] = _UNK_TAIL, unk_last

    # Unknown-outcome operations with equal inputs are interchangeable once
    # both have been invoked, so only the earliest one still unlinearized is
    # ever tried: earlier_same[i] holds the bits of the earlier ones.
    unknown_in_order: list[int] = []
    node = nxt[_UNK_HEAD]
    while node != _UNK_TAIL:
        unknown_in_order.append(node_op[node])
        node = nxt[node]
    earlier_same = _earlier_equal_masks(unknown_in_order, inputs, bit, n)

    state = init_state
    kbits = 0  # linearized known-outcome operations
    ubits = 0  # linearized unknown-outcome operations
    # (kbits, state) -> minimal ubits masks already explored with that key.
    cache: dict[tuple[int, Any], list[int]] = {(0, init_state): [0]}
    # Entries: (call node linearized, state before it, barrier rank then).
    stack: list[tuple[int, Any, int]] = []
    best_prefix: list[int] = []
    best_states: list[Any] = []
    barrier = 0  # rank of the first return event while scanning unknown calls
    entry = nxt[_MAIN_HEAD]
    iterations = 0
    monotonic = time.monotonic

    while known_left:
        iterations += 1
        if deadline is not None and not iterations & _CLOCK_EVERY and monotonic() >= deadline:
            raise TimeoutError(
                f"linearizability check timed out after {iterations} steps "
                f"({len(best_prefix)} of {n} operations linearized at best)"
            )
        k = kind[entry]
        if k == _KNOWN_RET:
            # Every known-outcome candidate has been tried; now try the
            # unknown-outcome operations invoked before this response.
            barrier = rank[entry]
            entry = nxt[_UNK_HEAD]
            continue
        if k == _END or (k == _UNKNOWN_CALL and rank[entry] > barrier):
            # No candidate left at this level: backtrack.
            if len(stack) > len(best_prefix):
                best_prefix = [node_op[e] for e, _, _ in stack]
                best_states = [s for _, s, _ in stack[1:]]
                best_states.append(state)
            if not stack:
                return _SearchOutcome(False, best_prefix, best_states)
            node, state, barrier = stack.pop()
            i = node_op[node]
            if known[i]:
                kbits ^= bit[i]
                known_left += 1
                r = ret_node[i]
                nxt[prv[r]] = r
                prv[nxt[r]] = r
            else:
                ubits ^= bit[i]
            nxt[prv[node]] = node
            prv[nxt[node]] = node
            entry = nxt[node]
            continue

        # A call event: try to linearize this operation now.
        i = node_op[entry]
        if earlier_same[i] & ~ubits:
            # An equivalent unknown-outcome operation is still available.
            entry = nxt[entry]
            continue
        legal, new_state = step(state, inputs[i], outputs[i])
        if legal:
            if k == _KNOWN_CALL:
                new_k, new_u = kbits | bit[i], ubits
            else:
                new_k, new_u = kbits, ubits | bit[i]
            key = (new_k, new_state)
            masks = cache.get(key)
            fresh = True
            if masks is not None:
                for m in masks:
                    if m | new_u == new_u:  # an explored subset dominates
                        fresh = False
                        break
            if fresh and k == _UNKNOWN_CALL and stack:
                top, before_top, _ = stack[-1]
                if kind[top] == _UNKNOWN_CALL:
                    # Two unknown-outcome operations in a row, the second
                    # erasing the effect of the first (e.g. two writes):
                    # linearizing only the second, from the parent
                    # configuration, is at least as good and is (or will
                    # be) explored there, so skip this one.
                    alt_legal, alt_state = step(before_top, inputs[i], UNKNOWN)
                    if alt_legal and alt_state == new_state:
                        fresh = False
            if fresh:
                if masks is None:
                    cache[key] = [new_u]
                else:
                    # Explored supersets are now dominated by the new mask.
                    masks[:] = [m for m in masks if m | new_u != m]
                    masks.append(new_u)
                stack.append((entry, state, barrier))
                state, kbits, ubits = new_state, new_k, new_u
                p, q = prv[entry], nxt[entry]
                nxt[p] = q
                prv[q] = p
                if k == _KNOWN_CALL:
                    known_left -= 1
                    r = ret_node[i]
                    p, q = prv[r], nxt[r]
                    nxt[p] = q
                    prv[q] = p
                entry = nxt[_MAIN_HEAD]
                continue
        entry = nxt[entry]

    # every known-outcome operation is linearized: the stack is the linearization found
    return _SearchOutcome(True, [node_op[e] for e, _, _ in stack], [s for _, s, _ in stack[1:]] + [state])


def _earlier_equal_masks(order: list[int], inputs: list[Any], bit: list[int], n: int) -> list[int]:
    """For each operation in ``order``, OR the bits of earlier ones with an equal input.

    Returns a list indexed by operation (zero for operations not in
    ``order``).  Uses a dict when the inputs are hashable, and pairwise
    comparison otherwise.
    """
    masks = [0] * n
    try:
        by_input: dict[Any, int] = {}
        for i in order:
            acc = by_input.get(inputs[i], 0)
            masks[i] = acc
            by_input[inputs[i]] = acc | bit[i]
        return masks
    except TypeError:  # unhashable inputs
        pass
    masks = [0] * n
    groups: list[tuple[Any, int]] = []
    for i in order:
        for idx, (inp, acc) in enumerate(groups):
            if inp == inputs[i]:
                masks[i] = acc
                groups[idx] = (inp, acc | bit[i])
                break
        else:
            groups.append((inputs[i], bit[i]))
    return masks


def _validate(history: Sequence[Operation]) -> list[Operation]:
    """Return the history as a list, rejecting malformed operations."""
    ops = list(history)
    for op in ops:
        if not isinstance(op, Operation):
            raise TypeError(f"expected Operation, got {type(op).__name__}: {op!r}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before it is invoked: {op!r}")
    return ops


def _next_candidates(
    ops: Sequence[Operation], model: Model, prefix: list[int], state: Any
) -> list[tuple[Operation, bool]]:
    """The operations that could follow ``prefix`` and whether ``model`` accepts them."""
    done = set(prefix)
    remaining = [i for i in range(len(ops)) if i not in done]
    pending_rets = [ops[i].ret for i in remaining if ops[i].ret is not None]
    if not pending_rets:
        return []
    barrier = min(r for r in pending_rets if r is not None)
    out: list[tuple[Operation, bool]] = []
    for i in sorted((i for i in remaining if ops[i].call <= barrier), key=lambda j: ops[j].call):
        op = ops[i]
        legal, _ = model.step(state, op.input, UNKNOWN if op.ret is None else op.output)
        out.append((op, bool(legal)))
    return out


def check(history: Sequence[Operation], model: Model, *, timeout: float | None = None) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    Operation ``a`` precedes ``b`` iff ``a.ret is not None and a.ret <
    b.call``.  The history is linearizable iff some total order of all
    operations with a known outcome, plus any subset of the unknown-outcome
    operations, respects that precedence and is accepted by ``model`` step by
    step from ``model.init()``.

    Args:
        history: The operations, in any order.
        model: The sequential specification; if it has a ``partition``
            function, each sub-history is checked independently.
        timeout: Seconds after which to give up by raising
            :class:`TimeoutError`.  ``None`` means no limit.

    Returns:
        A :class:`CheckResult`; ``ok`` is True only if a linearization of
        every sub-history was actually found.

    Raises:
        TimeoutError: If ``timeout`` elapsed before the answer was known.
        ValueError: If an operation returns before it was invoked.
        TypeError: If an element of ``history`` is not an :class:`Operation`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    ops = _validate(history)
    parts = model.partition(ops) if model.partition is not None else [ops]
    found: list[list[Operation]] = []
    for index, part in enumerate(parts):
        if not part:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"linearizability check timed out after {index} of {len(parts)} sub-histories")
        outcome = _search(part, model, deadline)
        if not outcome.ok:
            init_state = model.init()
            state = outcome.states[-1] if outcome.states else init_state
            return CheckResult(
                ok=False,
                partitions_checked=index + 1,
                partition=list(part),
                partition_index=index,
                longest_prefix=[part[i] for i in outcome.prefix],
                prefix_states=outcome.states,
                next_candidates=_next_candidates(part, model, outcome.prefix, state),
                initial_state=init_state,
            )
        found.append([part[i] for i in outcome.prefix])
    return CheckResult(ok=True, partitions_checked=len(parts), linearizations=found)


# ---------------------------------------------------------------------------
# Ready-made models
# ---------------------------------------------------------------------------


def _kv_apply(current: Any, inp: Any, output: Any) -> tuple[bool, Any]:
    """Apply one key-value operation to a single key's value.

    ``current`` is the key's value or :data:`ABSENT`.  Returns whether
    ``output`` is a legal result and the key's new value.
    """
    kind = inp[0]
    unknown = output is UNKNOWN
    if kind == "put":
        return unknown or output is None, inp[2]
    if kind == "get":
        expected = None if current is ABSENT else current
        return unknown or output == expected, current
    if kind == "delete":
        existed = current is not ABSENT
        return unknown or output == existed, ABSENT
    if kind == "cas":
        expected, new = inp[2], inp[3]
        if expected is None:
            matches = current is ABSENT
        else:
            matches = current is not ABSENT and current == expected
        return unknown or output == matches, new if matches else current
    raise ValueError(f"unknown key-value operation: {inp!r}")


def _partition_by_key(history: list[Operation]) -> list[list[Operation]]:
    """Split a key-value history into one sub-history per key (``input[1]``)."""
    by_key: dict[Any, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.input[1], []).append(op)
    return list(by_key.values())


def _kv_step_single(state: Any, inp: Any, output: Any) -> tuple[bool, Any]:
    """Step function of the partitioned key-value model (state = one key's value)."""
    return _kv_apply(state, inp, output)


def _kv_step_map(state: frozenset[tuple[Any, Any]], inp: Any, output: Any) -> tuple[bool, Any]:
    """Step function of the unpartitioned key-value model.

    The state is a frozenset of ``(key, value)`` pairs for the present keys.
    """
    key = inp[1]
    current = ABSENT
    for k, v in state:
        if k == key:
            current = v
            break
    legal, new = _kv_apply(current, inp, output)
    if not legal or new is current:
        return legal, state
    rest = {(k, v) for k, v in state if k != key}
    if new is not ABSENT:
        rest.add((key, new))
    return True, frozenset(rest)


def kv_model(*, partitioned: bool = True) -> Model:
    """A key-value store model.

    Inputs and outputs:

    * ``("put", key, value)`` -> ``None``
    * ``("get", key)`` -> the value, or ``None`` if the key is absent
    * ``("delete", key)`` -> ``True`` if the key existed, else ``False``
    * ``("cas", key, expected, new)`` -> ``True`` if the current value equals
      ``expected`` (``None`` meaning "absent"), in which case the value
      becomes ``new``; ``False`` otherwise.

    Values should not be ``None`` (a read could not tell them from absence)
    and must be hashable.

    Args:
        partitioned: If true (the default) the history is checked per key and
            the state is just that key's value (:data:`ABSENT` if none).  If
            false, the whole history is checked at once with a frozenset of
            ``(key, value)`` pairs as state - much slower, mainly useful to
            cross-check the partitioned model.
    """
    if partitioned:
        return Model(init=lambda: ABSENT, step=_kv_step_single, partition=_partition_by_key)
    return Model(init=frozenset, step=_kv_step_map)


def _register_step(state: Any, inp: Any, output: Any) -> tuple[bool, Any]:
    """Step function of :func:`register_model`."""
    if inp[0] == "write":
        return output is UNKNOWN or output is None, inp[1]
    if inp[0] == "read":
        return output is UNKNOWN or output == state, state
    raise ValueError(f"unknown register operation: {inp!r}")


def register_model() -> Model:
    """A single read/write register, initially ``None``.

    Inputs: ``("write", v)`` -> ``None``; ``("read",)`` -> the current value.
    """
    return Model(init=lambda: None, step=_register_step)


def _counter_step(state: int, inp: Any, output: Any) -> tuple[bool, Any]:
    """Step function of :func:`counter_model`."""
    if inp[0] == "add":
        new = state + inp[1]
        return output is UNKNOWN or output == new, new
    if inp[0] == "get":
        return output is UNKNOWN or output == state, state
    raise ValueError(f"unknown counter operation: {inp!r}")


def counter_model() -> Model:
    """A counter, initially 0 (not partitioned).

    Inputs: ``("add", n)`` -> the new value; ``("get",)`` -> the current value.
    """
    return Model(init=lambda: 0, step=_counter_step)
