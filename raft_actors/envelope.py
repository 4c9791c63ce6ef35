"""The wire format between clients and nodes: request envelopes and per-request outcomes."""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

import cloudpickle

from .errors import CommandRejectedError


class Request(NamedTuple):
    """A client command as it sits in the log.

    ``(client_id, seq)`` identifies it for exactly-once application; ``ack`` says the client
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


def encode_request(client_id: Any, seq: int, ack: int, command: Any) -> bytes:
    """Serialize a request; cloudpickle carries classes and functions defined in ``__main__``."""
    try:
        return cloudpickle.dumps(Request(client_id, seq, ack, command), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise CommandRejectedError(f"command cannot be serialized: {type(exc).__name__}: {exc}") from exc


def decode_request(data: bytes) -> Request:
    return Request(*pickle.loads(data))


def dumps(obj: Any) -> bytes:
    """Serialize a batch for a Ray call (one ``bytes`` argument is the cheapest thing to send)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


loads = pickle.loads
