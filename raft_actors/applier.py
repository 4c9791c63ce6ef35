"""Applies committed entries to a state machine, each client request exactly once."""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import cloudpickle

from .core.messages import Entry, EntryKind
from .envelope import Outcome, Part, Results, decode_call, loads, picklable_outcome, seqs_of
from .errors import CommandError, CommandRejectedError, SessionExpiredError, UnknownOutcomeError

_SNAPSHOT_MAGIC = b"RASM0003"  # a raft_actors state machine snapshot, format 2
_SNAPSHOT_HEAD = struct.Struct("<8sQ")
#: session ids are ``entry index << _PART_BITS | position of the opening part in the entry``
_PART_BITS = 16
MAX_PARTS = 1 << _PART_BITS

#: a client request part with its commands decoded: ``(client_id, seq or seqs, ack, commands)``
DecodedPart = tuple[Any, "int | tuple[int, ...]", int, "list[Any] | None"]


def decode_parts(parts: Sequence[Part]) -> list[DecodedPart]:
    """Decode the commands of each part (raises what unpickling raises)."""
    return [(cid, seq, ack, None if blob is None else loads(blob)) for cid, seq, ack, _, blob in parts]


class _Session:
    """What a replica keeps of one client session: the results the client may still ask for.

    Results are kept in *runs*, one per part of contiguous sequence numbers, as the part came:
    recording and dropping them costs per part, not per request. A request retried in a part
    of its own (a subset, named seq by seq) has its result kept by itself in ``loose``.
    """

    __slots__ = ("floor", "loose", "runs", "top")

    def __init__(self) -> None:
        self.floor = 0  # the client will never retry a seq below this
        self.top = 0  # the highest seq scheduled or applied: a part beyond it is all new
        self.runs: deque[tuple[int, list[Any], dict[int, BaseException]]] = deque()  # (first seq, values, errors)
        self.loose: dict[int, Outcome] = {}

    def result(self, seq: int) -> Outcome | None:
        """The recorded result of request ``seq``, if any."""
        got = self.loose.get(seq)
        if got is not None:
            return got
        for first, values, errors in reversed(self.runs):
            if first <= seq < first + len(values):
                k = seq - first
                exc = errors.get(k)
                return Outcome(True, values[k]) if exc is None else Outcome(False, exc)
            if first + len(values) <= seq:
                break
        return None

    def acknowledge(self, ack: int) -> None:
        """The client will never retry below ``ack``: drop what it will never ask for."""
        if ack <= self.floor:
            return
        self.floor = ack
        runs = self.runs
        while runs and runs[0][0] + len(runs[0][1]) <= ack:
            runs.popleft()
        if self.loose:
            self.loose = {q: o for q, o in self.loose.items() if q >= ack}

    def as_dict(self) -> dict[int, Outcome]:
        out = {first + k: (Outcome(True, v) if k not in errors else Outcome(False, errors[k]))
               for first, values, errors in self.runs for k, v in enumerate(values)}
        out.update(self.loose)
        return out


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
        self._validate = getattr(state_machine, "validate", None)

    def apply(self, entry: Entry, decoded: list[DecodedPart] | None = None) -> Results | None:
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
                return Results.failed(1, CommandError.from_exception(exc))
        return self._apply_parts(entry.index, decoded)

    def _apply_parts(self, index: int, parts: list[DecodedPart]) -> Results:
        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        batch = _Batch()
        sessions = self.sessions
        for pos, (cid, seq, ack, commands) in enumerate(parts):
            if commands is None:  # a client opens a session
                if pos >= MAX_PARTS:
                    raise AssertionError(f"entry {index} has more than {MAX_PARTS} parts")
                sid = index << _PART_BITS | pos
                sessions[sid] = _Session()
                if len(sessions) > self.max_sessions:
                    sessions.popitem(last=False)
                values.append(sid)
                continue
            session = sessions.get(cid)
            n = len(commands)
            if session is None:
                err = SessionExpiredError(
                    f"session {cid} is unknown or expired (more than {self.max_sessions} sessions since it was used); "
                    "its request was not applied now, an earlier copy may have been")
                errors.update(dict.fromkeys(range(len(values), len(values) + n), err))
                values.extend([None] * n)
                continue
            sessions.move_to_end(cid)
            if isinstance(seq, int) and seq > session.top and seq >= session.floor:
                # all new (the common case): the whole part goes to the state machine as a run
                batch.add_run(session, seq, len(values), commands)
                values.extend([None] * n)
                session.top = seq + n - 1
            else:
                self._one_by_one(batch, session, seqs_of(seq, n), commands, values, errors)
            if ack > session.floor:
                batch.ack(session, ack)
        self._run(batch, values, errors)
        return Results(values, errors)

    def _one_by_one(self, batch: _Batch, session: _Session, seqs: Any, commands: list[Any], values: list[Any],
                    errors: dict[int, BaseException]) -> None:
        """The slow path: some requests may have been applied before (retries)."""
        for s, command in zip(seqs, commands):
            slot = len(values)
            values.append(None)
            if s < session.floor:
                errors[slot] = UnknownOutcomeError(f"request {s} was already given up by its client")
                continue
            done = session.result(s)
            if done is None and s <= session.top and batch.pending(session, s):
                self._run(batch, values, errors)  # the same request twice in one entry: the first goes first
                done = session.result(s)
            if done is not None:
                if done.ok:
                    values[slot] = done.value
                else:
                    errors[slot] = done.value
                continue
            batch.add_one(session, s, slot, command)
            session.top = max(session.top, s)

    def _run(self, batch: _Batch, values: list[Any], errors: dict[int, BaseException]) -> None:
        """Apply the commands waiting in ``batch`` (in order) and record their results."""
        if batch.commands:
            out_values, out_errors = self._execute(batch.commands)
            for kind, session, seq, slot, lo, hi in batch.items:
                if kind == _RUN:
                    vals = out_values[lo:hi]
                    errs = {k - lo: out_errors[k] for k in out_errors if lo <= k < hi} if out_errors else {}
                    session.runs.append((seq, vals, errs))
                    values[slot:slot + hi - lo] = vals
                    for k, e in errs.items():
                        errors[slot + k] = e
                elif kind == _ONE:
                    exc = out_errors.get(lo)
                    session.loose[seq] = Outcome(True, out_values[lo]) if exc is None else Outcome(False, exc)
                    if exc is None:
                        values[slot] = out_values[lo]
                    else:
                        errors[slot] = exc
                else:  # an acknowledgement, once the part's own commands ran
                    session.acknowledge(seq)
            self.applied_commands += len(batch.commands)
        else:
            for kind, session, seq, *_ in batch.items:
                if kind == _ACK:
                    session.acknowledge(seq)
        batch.clear()

    def _execute(self, commands: list[Any]) -> tuple[list[Any], dict[int, BaseException]]:
        batch = self._apply_batch
        if batch is not None:
            try:
                values = list(batch(commands))
                if len(values) != len(commands):
                    raise TypeError(f"apply_batch returned {len(values)} results for {len(commands)} commands")
            except BaseException as exc:  # noqa: BLE001 - user code: a result for every command of the batch
                err = CommandError.from_exception(exc)
                return [None] * len(commands), dict.fromkeys(range(len(commands)), err)
            return values, {}
        return _each(self.sm.apply, commands)

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
        sessions = {cid: (s.floor, {seq: picklable_outcome(o) for seq, o in s.as_dict().items()})
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
            s.floor, s.loose, s.top = floor, dict(results), max(results, default=floor - 1)
        self.applied_index = applied
        self.applied_commands = commands

    def query(self, query: Any) -> Outcome:
        try:
            return Outcome(True, self.sm.query(query))
        except BaseException as exc:  # noqa: BLE001 - user code (even sys.exit): a result, not a dead node
            return Outcome(False, CommandError.from_exception(exc))

    def query_all(self, queries: Sequence[Any]) -> Results:
        """Answer ``queries`` in order; a query that raises gets its CommandError."""
        return Results(*_each(self.sm.query, queries))

    def validate(self, command: Any) -> None:
        """Raise :class:`CommandRejectedError` if the state machine refuses ``command``."""
        check = self._validate
        if check is None:
            return
        try:
            check(command)
        except BaseException as exc:
            raise CommandRejectedError(f"{type(exc).__name__}: {exc}") from exc

    def validate_all(self, parts: list[DecodedPart]) -> bool:
        """Whether the state machine's ``validate`` accepts every command of ``parts`` (the
        fast path: one loop, no exception object unless one is refused)."""
        check = self._validate
        if check is None:
            return True
        try:
            for _, _, _, cmds in parts:
                if cmds is not None:
                    for c in cmds:
                        check(c)
        except BaseException:  # noqa: BLE001 - the caller finds which, and why
            return False
        return True


def _each(fn: Any, items: Sequence[Any]) -> tuple[list[Any], dict[int, BaseException]]:
    """``fn`` (user code) on each item in order: the values, and a CommandError by position
    for each item it raised on (even ``sys.exit``: a result, never a dead node)."""
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for item in items:
        try:
            values.append(fn(item))
        except BaseException as exc:  # noqa: BLE001 - user code: its exception is the result
            errors[len(values)] = CommandError.from_exception(exc)
            values.append(None)
    return values, errors


_RUN, _ONE, _ACK = 0, 1, 2


class _Batch:
    """The new commands of an entry, waiting to go to the state machine together, and what to
    do with each result: ``items`` are ``(kind, session, seq, slot, lo, hi)``: a run of a part
    (commands ``lo:hi``, results from ``slot`` on), one request, or an acknowledgement."""

    __slots__ = ("commands", "items", "keys")

    def __init__(self) -> None:
        self.commands: list[Any] = []
        self.items: list[tuple] = []
        self.keys: set[tuple[int, int]] | None = None  # (session, seq) pending, built on demand

    def add_run(self, session: _Session, seq: int, slot: int, commands: list[Any]) -> None:
        lo = len(self.commands)
        self.commands.extend(commands)
        self.items.append((_RUN, session, seq, slot, lo, len(self.commands)))

    def add_one(self, session: _Session, seq: int, slot: int, command: Any) -> None:
        self.items.append((_ONE, session, seq, slot, len(self.commands), len(self.commands) + 1))
        self.commands.append(command)
        if self.keys is not None:
            self.keys.add((id(session), seq))

    def ack(self, session: _Session, ack: int) -> None:
        self.items.append((_ACK, session, ack, 0, 0, 0))

    def pending(self, session: _Session, seq: int) -> bool:
        """Whether request ``seq`` of ``session`` waits here, not yet applied."""
        if self.keys is None:
            self.keys = set()
            for kind, s, first, _, lo, hi in self.items:
                if kind != _ACK:
                    self.keys.update((id(s), first + k) for k in range(hi - lo))
        return (id(session), seq) in self.keys

    def clear(self) -> None:
        self.commands = []
        self.items = []
        self.keys = None
