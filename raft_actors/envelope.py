"""The wire format between clients and nodes: request envelopes and per-request outcomes."""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

import cloudpickle

from .errors import CommandError, CommandRejectedError


class Request(NamedTuple):
    """A client command as it sits in the log.

    ``(client_id, seq)`` identifies it for exactly-once application; ``client_id`` is a session
    the cluster opened for the client (see :func:`encode_register`). ``ack`` says the client
    will never retry any of its requests with a lower ``seq``, so their results can be dropped.
    """

    client_id: Any
    seq: int
    ack: int
    command: Any


class Outcome(NamedTuple):
    """The answer to one request: ``ok`` with a ``value``, or not ``ok`` with an exception."""

    ok: bool
    value: Any


_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})
_CONTAINERS = frozenset({tuple, list, frozenset, set})


def _builtin_only(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is made of built-in scalars and containers only (plain pickle carries
    it anywhere, at a fraction of cloudpickle's cost)."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if depth > 8:
        return False
    if t in _CONTAINERS:
        return all(_builtin_only(x, depth + 1) for x in obj)
    if t is dict:
        return all(_builtin_only(k, depth + 1) and _builtin_only(v, depth + 1) for k, v in obj.items())
    return False


def encode_request(client_id: Any, seq: int, ack: int, command: Any) -> bytes:
    """Serialize a request; cloudpickle carries classes and functions defined in ``__main__``
    (commands of built-in types only take plain pickle, which is several times faster)."""
    if _builtin_only(command) and _builtin_only(client_id):
        return pickle.dumps((client_id, seq, ack, command), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return cloudpickle.dumps(Request(client_id, seq, ack, command), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise CommandRejectedError(f"command cannot be serialized: {type(exc).__name__}: {exc}") from exc


def encode_register() -> bytes:
    """The request that opens a client session: committed like a write, its result is the new
    session's id (the index of its log entry, so ids are never reused)."""
    return dumps(Request(None, 0, 0, None))


def encode_query(query: Any) -> bytes:
    """Serialize a query (as commands are)."""
    if _builtin_only(query):
        return pickle.dumps(query, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return cloudpickle.dumps(query, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise CommandRejectedError(f"query cannot be serialized: {type(exc).__name__}: {exc}") from exc


def encode_outcomes(outcomes: list[Outcome]) -> bytes:
    """Serialize a batch of outcomes; one whose value cannot be pickled becomes a CommandError."""
    try:
        return dumps(outcomes)
    except Exception:  # noqa: BLE001 - find which ones, and replace only those
        return dumps([picklable_outcome(o) for o in outcomes])


def picklable_outcome(outcome: Outcome) -> Outcome:
    try:
        dumps(outcome)
        return outcome
    except Exception as exc:  # noqa: BLE001 - user values may fail to pickle in any way
        err = CommandError(type(exc).__name__, f"the result cannot be sent back to the client: {exc}")
        return Outcome(False, err)


def decode_request(data: bytes) -> Request:
    return Request(*pickle.loads(data))


def dumps(obj: Any) -> bytes:
    """Serialize a batch for a Ray call (one ``bytes`` argument is the cheapest thing to send)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


loads = pickle.loads
