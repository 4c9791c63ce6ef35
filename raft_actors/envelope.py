"""The wire format between clients and nodes, and what a log entry of client requests holds.

A client call carries *parts*: each part is a run of requests of one client session, sent
together. A part is the tuple ``(client_id, seq, ack, count, blob)``:

- ``client_id``: the session (``None`` with ``blob=None``: the part opens a new session);
- ``seq``: the sequence number of the part's first command (the others follow one by one), or a
  tuple naming each command's sequence number;
- ``ack``: the client will never retry a request of this session with a lower sequence number,
  so replicas may drop those results;
- ``count``: how many requests the part holds (so a part that cannot be decoded can still be
  answered request by request);
- ``blob``: the commands, pickled once by the caller.

A read call carries ``(count, blob)`` parts of queries.

A whole call (a list of parts) is pickled once more around the blobs, which costs a copy of
bytes. The leader puts what it accepts into *one* log entry: the call's own bytes when it
accepts every request, so a batch is encoded once, by the client, for the leader's log, the
followers and every replica's apply. Answers come back as one :func:`encode_results` value for
the whole call, in request order.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, NamedTuple

import cloudpickle

from .errors import CommandError, CommandRejectedError

#: a run of requests of one session: ``(client_id, seq or seqs, ack, count, blob)`` (see the module doc)
Part = tuple[Any, "int | tuple[int, ...]", int, int, "bytes | None"]

#: the part that opens a session; its result is the new session's id
OPEN_SESSION: Part = (None, 0, 0, 1, None)


class Outcome(NamedTuple):
    """The answer to one request: ``ok`` with a ``value``, or not ``ok`` with an exception."""

    ok: bool
    value: Any


def dumps(obj: Any) -> bytes:
    """Serialize a batch for a Ray call (one ``bytes`` argument is the cheapest thing to send)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


loads = pickle.loads

_MAIN = b"__main__"


def encode_values(values: Sequence[Any], what: str = "command") -> bytes:
    """Pickle a run of commands or queries once.

    Plain pickle carries everything importable anywhere; what is defined in the caller's own
    script or notebook (``__main__``) only cloudpickle can carry to another process, so the
    batch is pickled again with cloudpickle exactly when plain pickle names ``__main__``.
    Raises :class:`CommandRejectedError` for a value that cannot be pickled at all.
    """
    try:
        data = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. a lambda or a local class: cloudpickle may manage
        data = _MAIN
    if _MAIN not in data:
        return data
    try:
        return cloudpickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise CommandRejectedError(f"{what} cannot be serialized: {type(exc).__name__}: {exc}") from exc


def decode_call(payload: bytes) -> list[Part]:
    """The parts of a client call (the outer list only: blobs stay encoded)."""
    return loads(payload)


def seqs_of(seq: int | tuple[int, ...], count: int) -> Sequence[int]:
    """The sequence numbers of a part's ``count`` commands (``seq``: the first, or all)."""
    return range(seq, seq + count) if isinstance(seq, int) else seq


class Results:
    """The outcomes of a run of requests, in order, kept as the wire carries them: ``values[i]``
    is request ``i``'s result (``None`` where it failed) and ``errors`` maps the position of
    each failed request to its exception. Cheaper than an :class:`Outcome` per request."""

    __slots__ = ("errors", "values")

    def __init__(self, values: list[Any], errors: dict[int, BaseException] | None = None):
        self.values = values
        self.errors = errors if errors is not None else {}

    @classmethod
    def failed(cls, n: int, exc: BaseException) -> Results:
        return cls([None] * n, dict.fromkeys(range(n), exc))

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Results:
        return cls([o.value if o.ok else None for o in outcomes], {i: o.value for i, o in enumerate(outcomes) if not o.ok})

    def __len__(self) -> int:
        return len(self.values)

    def outcome(self, i: int) -> Outcome:
        exc = self.errors.get(i)
        return Outcome(True, self.values[i]) if exc is None else Outcome(False, exc)

    def outcomes(self) -> list[Outcome]:
        return [self.outcome(i) for i in range(len(self.values))]


def encode_results(results: Results | Sequence[Outcome]) -> bytes:
    """The answers of a call, in request order, as ``(values, errors)`` (see :class:`Results`).
    A value that cannot be pickled becomes a CommandError for its request alone."""
    r = results if isinstance(results, Results) else Results.of(results)
    try:
        return dumps((r.values, r.errors))
    except Exception:  # noqa: BLE001 - find which ones, and replace only those
        return dumps(_picklable(r))


def _picklable(r: Results) -> tuple[list[Any], dict[int, BaseException]]:
    values, errors = list(r.values), {}
    for i in range(len(values)):
        o = picklable_outcome(r.outcome(i))
        values[i] = o.value if o.ok else None
        if not o.ok:
            errors[i] = o.value
    return values, errors


def decode_results(data: bytes) -> tuple[list[Any], dict[int, BaseException]]:
    """Inverse of :func:`encode_results`."""
    return loads(data)


def outcomes_of(data: bytes) -> list[Outcome]:
    """An answer of :func:`encode_results` as one :class:`Outcome` per request (tests, tools)."""
    values, errors = loads(data)
    return [Outcome(False, errors[i]) if i in errors else Outcome(True, v) for i, v in enumerate(values)]


def results_of(outcomes: Sequence[Outcome]) -> tuple[list[Any], dict[int, BaseException]]:
    """The same ``(values, errors)`` value without the round trip through pickle."""
    return [o.value if o.ok else None for o in outcomes], {i: o.value for i, o in enumerate(outcomes) if not o.ok}


def picklable_outcome(outcome: Outcome) -> Outcome:
    try:
        dumps(outcome)
        return outcome
    except Exception as exc:  # noqa: BLE001 - user values may fail to pickle in any way
        err = CommandError(type(exc).__name__, f"the result cannot be sent back to the client: {exc}")
        return Outcome(False, err)


def request_call(client_id: Any, seq: int, ack: int, *commands: Any) -> bytes:
    """A call of one session's requests (tests and tools that talk to a node directly)."""
    return dumps([(client_id, seq, ack, len(commands), encode_values(list(commands)))])


def query_call(*queries: Any) -> bytes:
    """A read call of the given queries (tests and tools that talk to a node directly)."""
    return dumps([(len(queries), encode_values(list(queries)))])


#: a call that opens one session
OPEN_SESSION_CALL = dumps([OPEN_SESSION])
