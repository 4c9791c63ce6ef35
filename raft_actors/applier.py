"""Applies committed entries to a state machine, each client request exactly once."""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import cloudpickle

from .core.messages import Entry, EntryKind
from .envelope import Outcome, Part, decode_call, loads, picklable_outcome, seqs_of
from .errors import CommandError, CommandRejectedError, SessionExpiredError, UnknownOutcomeError

_SNAPSHOT_MAGIC = b"RASM0002"  # a raft_actors state machine snapshot, format 2
_SNAPSHOT_HEAD = struct.Struct("<8sQ")
#: session ids are ``entry index << _PART_BITS | position of the opening part in the entry``
_PART_BITS = 16
MAX_PARTS = 1 << _PART_BITS

#: a client request part with its commands decoded: ``(client_id, seq or seqs, ack, commands)``
DecodedPart = tuple[Any, "int | tuple[int, ...]", int, "list[Any] | None"]


def decode_parts(parts: Sequence[Part]) -> list[DecodedPart]:
    """Decode the commands of each part (raises what unpickling raises)."""
    return [(cid, seq, ack, None if blob is None else loads(blob)) for cid, seq, ack, _, blob in parts]


def request_count(parts: Sequence[DecodedPart]) -> int:
    """How many requests (session openings and commands) the parts hold."""
    return sum(1 if cmds is None else len(cmds) for _, _, _, cmds in parts)


class _Session:
    __slots__ = ("floor", "results")

    def __init__(self) -> None:
        self.floor = 0  # the client will never retry a seq below this
        self.results: dict[int, Outcome] = {}


class Applier:
    """Wraps a user state machine with client sessions (Raft dissertation §6.3).

    A log entry of client requests holds a whole client call: parts of requests of several
    sessions (:mod:`raft_actors.envelope`). A request retried after a timeout or a leader change
    can sit in the log twice; the second copy returns the first one's result instead of running
    again. Everything here depends only on the log, so every replica reaches the same sessions
    and the same state.

    The new commands of an entry go to the state machine's ``apply_batch(commands)`` if it has
    one (it returns one result per command; an exception it raises is the result of every
    command of that batch), else to ``apply(command)`` one by one (an exception is that
    command's result).

    A client opens its session with a request of its own (a part with ``client_id`` ``None``);
    the session's id is made of the index of that entry and the part's position, never reused.
    At most ``max_sessions`` sessions are kept, the least recently used expire first; a request
    of a session that is not here (expired) gets :class:`~raft_actors.errors.SessionExpiredError`
    instead of being applied, since it may be a retry of a write whose result was forgotten
    with the session.
    """

    def __init__(self, state_machine: Any, max_sessions: int = 10_000):
        self.sm = state_machine
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[Any, _Session] = OrderedDict()  # least recently used first
        self.applied_index = 0
        #: client commands applied so far (a snapshot threshold counts these)
        self.applied_commands = 0
        self._apply_batch = getattr(state_machine, "apply_batch", None)

    def apply(self, entry: Entry, decoded: list[DecodedPart] | None = None) -> list[Outcome] | None:
        """Apply one committed entry; returns the outcome of each of its requests, in order
        (``None`` for an entry that carries no client requests). ``decoded`` is the entry's
        parts already decoded (the leader decoded them when it proposed the entry)."""
        if entry.index != self.applied_index + 1:
            raise AssertionError(f"applying {entry.index} after {self.applied_index}: out of order")
        self.applied_index = entry.index
        if entry.kind != EntryKind.NORMAL:
            return None
        if decoded is None:
            try:
                decoded = decode_parts(decode_call(entry.command))
            except BaseException as exc:  # noqa: BLE001 - an undecodable entry is its own result
                return [Outcome(False, CommandError.from_exception(exc))]
        return self._apply_parts(entry.index, decoded)

    def _apply_parts(self, index: int, parts: list[DecodedPart]) -> list[Outcome]:
        out: list[Outcome | None] = []
        # new commands wait here to go to the state machine together: (slot in out, session, seq, command)
        pending: list[tuple[int, _Session, int, Any]] = []
        keys: set[tuple[Any, int]] = set()
        for pos, (cid, seq, ack, commands) in enumerate(parts):
            if commands is None:  # a client opens a session
                if pos >= MAX_PARTS:
                    raise AssertionError(f"entry {index} has more than {MAX_PARTS} parts")
                sid = index << _PART_BITS | pos
                self.sessions[sid] = _Session()
                if len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)
                out.append(Outcome(True, sid))
                continue
            session = self.sessions.get(cid)
            if session is None:
                err = Outcome(False, SessionExpiredError(
                    f"session {cid} is unknown or expired (more than {self.max_sessions} sessions since it was used); "
                    "its request was not applied now, an earlier copy may have been"))
                out.extend([err] * len(commands))
                continue
            self.sessions.move_to_end(cid)
            for s, command in zip(seqs_of(seq, len(commands)), commands):
                if (cid, s) in keys:  # the same request twice in one entry: apply the first first
                    self._run(pending, out)
                    pending, keys = [], set()
                if s < session.floor:
                    out.append(Outcome(False, UnknownOutcomeError(f"request {s} was already given up by its client")))
                    continue
                done = session.results.get(s)
                if done is not None:
                    out.append(done)
                    continue
                pending.append((len(out), session, s, command))
                keys.add((cid, s))
                out.append(None)
            if ack > session.floor:  # results below ack go once this part's new commands ran (see _run)
                pending.append((-1, session, ack, None))
        self._run(pending, out)
        return out  # type: ignore[return-value]

    def _run(self, pending: list[tuple[int, _Session, int, Any]], out: list[Outcome | None]) -> None:
        """Apply the new commands in ``pending`` (in order) and record their results."""
        commands = [c for slot, _, _, c in pending if slot >= 0]
        results = self._execute(commands) if commands else []
        k = 0
        for slot, session, s, _ in pending:
            if slot < 0:  # an acknowledgement: drop the results the client will never ask for again
                ack = s
                if ack > session.floor:
                    res = session.results
                    if ack - session.floor <= len(res):
                        for old in range(session.floor, ack):
                            res.pop(old, None)
                    else:
                        session.results = {q: o for q, o in res.items() if q >= ack}
                    session.floor = ack
                continue
            o = results[k]
            k += 1
            session.results[s] = o
            out[slot] = o
        self.applied_commands += len(commands)

    def _execute(self, commands: list[Any]) -> list[Outcome]:
        batch = self._apply_batch
        if batch is not None:
            try:
                values = batch(commands)
                if len(values) != len(commands):
                    raise TypeError(f"apply_batch returned {len(values)} results for {len(commands)} commands")
            except BaseException as exc:  # noqa: BLE001 - user code: a result for every command of the batch
                err = Outcome(False, CommandError.from_exception(exc))
                return [err] * len(commands)
            return [Outcome(True, v) for v in values]
        apply = self.sm.apply
        results = []
        for command in commands:
            try:
                results.append(Outcome(True, apply(command)))
            except BaseException as exc:  # noqa: BLE001 - user code (even sys.exit): a result, not a dead node
                results.append(Outcome(False, CommandError.from_exception(exc)))
        return results

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
        header = cloudpickle.dumps((self.applied_index, self.applied_commands, sessions),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        return [_SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, len(header)) + header, bytes(state)]

    def restore(self, data: bytes, index: int) -> None:
        """Replace the state machine's state and the sessions by a snapshot taken at ``index``."""
        magic, n = _SNAPSHOT_HEAD.unpack_from(data)
        if magic != _SNAPSHOT_MAGIC:
            raise ValueError(f"not a raft_actors state machine snapshot (magic {magic!r})")
        start = _SNAPSHOT_HEAD.size
        applied, commands, sessions = pickle.loads(memoryview(data)[start : start + n])
        if applied != index:
            raise ValueError(f"the snapshot was taken at {applied}, not at {index}")
        self.sm.restore(data[start + n :])
        self.sessions = OrderedDict()
        for cid, (floor, results) in sessions.items():
            s = self.sessions[cid] = _Session()
            s.floor, s.results = floor, results
        self.applied_index = applied
        self.applied_commands = commands

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
