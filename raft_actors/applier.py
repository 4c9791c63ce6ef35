"""Applies committed entries to a state machine, each client request exactly once."""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from typing import Any

import cloudpickle

from .core.messages import Entry, EntryKind
from .envelope import Outcome, decode_request, picklable_outcome
from .errors import CommandError, CommandRejectedError, SessionExpiredError, UnknownOutcomeError

_SNAPSHOT_MAGIC = b"RASM0001"  # a raft_actors state machine snapshot, format 1
_SNAPSHOT_HEAD = struct.Struct("<8sQ")


class _Session:
    __slots__ = ("floor", "results")

    def __init__(self) -> None:
        self.floor = 0  # the client will never retry a seq below this
        self.results: dict[int, Outcome] = {}


class Applier:
    """Wraps a user state machine with client sessions (Raft dissertation §6.3).

    A request retried after a timeout or a leader change can sit in the log twice; the second
    copy returns the first one's result instead of running again. Everything here depends only
    on the log, so every replica reaches the same sessions and the same state.

    A client opens its session with a request of its own (``client_id`` ``None``, see
    :func:`~raft_actors.envelope.encode_register`); the session's id is the index of that entry,
    never reused. At most ``max_sessions`` sessions are kept, the least recently used expire
    first; a request of a session that is not here (expired) gets
    :class:`~raft_actors.errors.SessionExpiredError` instead of being applied, since it may be a
    retry of a write whose result was forgotten with the session.
    """

    def __init__(self, state_machine: Any, max_sessions: int = 10_000):
        self.sm = state_machine
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[Any, _Session] = OrderedDict()  # least recently used first
        self.applied_index = 0

    def apply(self, entry: Entry) -> Outcome | None:
        """Apply one committed entry; ``None`` for an entry that carries no client request."""
        if entry.index != self.applied_index + 1:
            raise AssertionError(f"applying {entry.index} after {self.applied_index}: out of order")
        self.applied_index = entry.index
        if entry.kind != EntryKind.NORMAL:
            return None
        try:
            req = decode_request(entry.command)
        except BaseException as exc:  # noqa: BLE001 - an undecodable command is its own result
            return Outcome(False, CommandError.from_exception(exc))
        if req.client_id is None:  # a client opens a session
            self.sessions[entry.index] = _Session()
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            return Outcome(True, entry.index)
        session = self.sessions.get(req.client_id)
        if session is None:
            return Outcome(False, SessionExpiredError(
                f"session {req.client_id} is unknown or expired (more than {self.max_sessions} sessions since it was "
                f"used); request {req.seq} was not applied now, an earlier copy may have been"))
        self.sessions.move_to_end(req.client_id)
        if req.seq < session.floor:
            return Outcome(False, UnknownOutcomeError(f"request {req.seq} was already given up by its client"))
        done = session.results.get(req.seq)
        if done is not None:
            return done
        try:
            out = Outcome(True, self.sm.apply(req.command))
        except BaseException as exc:  # noqa: BLE001 - user code (even sys.exit): a result, not a dead node
            out = Outcome(False, CommandError.from_exception(exc))
        session.results[req.seq] = out
        if req.ack > session.floor:
            results = session.results
            if req.ack - session.floor <= len(results):  # drop what the client acknowledged
                for s in range(session.floor, req.ack):
                    results.pop(s, None)
            else:
                session.results = {s: o for s, o in results.items() if s >= req.ack}
            session.floor = req.ack
        return out

    def snapshot(self) -> list[bytes]:
        """The state machine's state and the session table, as of :attr:`applied_index`, as
        two pieces to be stored one after the other (the state is not copied again): a header
        (format, index, sessions) and the state machine's own snapshot.

        Raises whatever the state machine's ``snapshot`` raises (the caller skips compaction).
        """
        state = self.sm.snapshot()
        if not isinstance(state, bytes | bytearray | memoryview):
            raise TypeError(f"{type(self.sm).__name__}.snapshot() must return bytes, not {type(state).__name__}")
        # a result nobody could be sent (unpicklable) is kept as the error its client would get
        sessions = {cid: (s.floor, {seq: picklable_outcome(o) for seq, o in s.results.items()})
                    for cid, s in self.sessions.items()}
        header = cloudpickle.dumps((self.applied_index, sessions), protocol=pickle.HIGHEST_PROTOCOL)
        return [_SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, len(header)) + header, bytes(state)]

    def restore(self, data: bytes, index: int) -> None:
        """Replace the state machine's state and the sessions by a snapshot taken at ``index``."""
        magic, n = _SNAPSHOT_HEAD.unpack_from(data)
        if magic != _SNAPSHOT_MAGIC:
            raise ValueError(f"not a raft_actors state machine snapshot (magic {magic!r})")
        start = _SNAPSHOT_HEAD.size
        applied, sessions = pickle.loads(memoryview(data)[start : start + n])
        if applied != index:
            raise ValueError(f"the snapshot was taken at {applied}, not at {index}")
        self.sm.restore(data[start + n :])
        self.sessions = OrderedDict()
        for cid, (floor, results) in sessions.items():
            s = self.sessions[cid] = _Session()
            s.floor, s.results = floor, results
        self.applied_index = applied

    def query(self, query: Any) -> Outcome:
        try:
            return Outcome(True, self.sm.query(query))
        except BaseException as exc:  # noqa: BLE001 - user code (even sys.exit): a result, not a dead node
            return Outcome(False, CommandError.from_exception(exc))

    def validate(self, command: Any) -> None:
        """Raise :class:`CommandRejectedError` if the state machine refuses ``command``."""
        check = getattr(self.sm, "validate", None)
        if check is None:
            return
        try:
            check(command)
        except BaseException as exc:
            raise CommandRejectedError(f"{type(exc).__name__}: {exc}") from exc
