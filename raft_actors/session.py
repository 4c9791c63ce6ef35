"""The client's rules, without I/O: sessions, retries, redirects, leader discovery, outcomes.

Nothing here sends, waits or keeps time: a driver does. The Ray client
(:mod:`raft_actors.channel`) and the deterministic simulator (:mod:`raft_actors.sim`) both
drive these objects, so the seeded runs test the rules users run:

- :class:`Session`: a client session (Raft dissertation §6.3). Writes carry
  ``(session id, sequence number)``; the session opens through the log (its first write waits
  for that); ``ack`` tells replicas which results the client will never ask for again; an
  expired session is opened anew, and only writes never sent before are sent again in it.
- :class:`Request`: one or more commands of one session (or queries), sent together, with a
  deadline; ``maybe_applied`` remembers that an attempt may have reached a leader.
- :func:`settle`: what an answer from a node means for each request of a call: done, failed
  (a result for the caller), or to be retried (where, and whether in a new session).
- :func:`expire`, :func:`unreachable`: a deadline that passed, a node that did not answer.
- :class:`Router`: which node to ask (the leader, a follower, any), learnt from answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .errors import (
    LeadershipLostError,
    NotLeaderError,
    RaftTimeoutError,
    SessionExpiredError,
    UnknownOutcomeError,
)

#: read consistency levels, strongest first (as the replica names them)
LINEARIZABLE, FOLLOWER, STALE = "linearizable", "follower", "stale"
READ_MODES = (LINEARIZABLE, FOLLOWER, STALE)

#: request kinds: a session's commands, a session opening, queries
WRITE, OPEN, READ = "write", "open", "read"

#: seconds a driver waits for one node before trying elsewhere (a dead or cut-off node)
ATTEMPT_TIMEOUT = 2.0
#: retry backoff, seconds: random share of a window that doubles from the first to the last
BACKOFF_START, BACKOFF_MAX = 0.01, 0.1


def backoff(tries: int, rnd: float) -> float:
    """Seconds to wait before retry number ``tries`` (1, 2, ...), ``rnd`` in [0, 1)."""
    return min(BACKOFF_START * 2 ** min(max(0, tries - 1), 16), BACKOFF_MAX) * rnd


class Sink(Protocol):
    """Where a request's results go (a caller's future, a list being filled...)."""

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        """Results ``values`` for the caller's requests at ``positions``."""

    def put_error(self, position: int, exc: BaseException) -> None:
        """The caller's request at ``position`` failed with ``exc``."""


class Request:
    """Commands of one session (``WRITE``), a session opening (``OPEN``) or queries (``READ``)
    that travel together, and what became of them so far.

    ``positions`` map the request's items to the caller's (a request split after a partial
    answer keeps the positions of the items it still carries).
    """

    __slots__ = ("blob", "cid", "deadline", "ended", "in_flight", "items", "kind", "maybe_applied", "mode",
                 "positions", "seqs", "session", "sink", "target", "tries", "waited")

    def __init__(self, kind: str, items: list[Any], sink: Sink, deadline: float, session: Session | None = None,
                 mode: str | None = None, positions: Sequence[int] | None = None, blob: bytes | None = None):
        self.kind = kind
        self.items = items
        self.sink = sink
        self.deadline = deadline
        self.session = session
        self.mode = mode  # a read's consistency
        self.positions: Sequence[int] = range(len(items)) if positions is None else positions
        self.blob = blob  # the items already encoded, if the caller did (a driver's business)
        self.seqs: Sequence[int] = ()  # a write's sequence numbers, given when its session is open
        self.cid: Any = None  # the session id it was last sent in
        self.maybe_applied = False  # an earlier attempt may have reached a leader
        self.in_flight = False
        self.ended = False  # its caller was given its end (a failure, a deadline): never sent again
        self.target = 0
        self.tries = 0
        self.waited = False  # its caller is blocked until it ends (the Ray driver's channel schedules by it)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: Sequence[int]) -> Request:
        """The same request carrying only its items at indexes ``keep``."""
        r = Request(self.kind, [self.items[i] for i in keep], self.sink, self.deadline, self.session, self.mode,
                    [self.positions[i] for i in keep])
        if self.seqs:
            r.seqs = tuple(self.seqs[i] for i in keep)
        r.maybe_applied, r.tries, r.cid, r.target = self.maybe_applied, self.tries, self.cid, self.target
        r.waited = self.waited
        r.ended = self.ended
        return r

    def fail(self, exc: BaseException) -> None:
        for p in self.positions:
            self.sink.put_error(p, exc)


class Session:
    """A client session: its id (once opened through the log), the next sequence number, and
    the writes still outstanding (for ``ack``)."""

    __slots__ = ("_in_order", "_outstanding", "client_id", "next_seq", "opening", "waiting")

    def __init__(self) -> None:
        self.client_id: Any = None
        self.next_seq = 1
        self.opening = False  # an OPEN request is under way
        self.waiting: list[Request] = []  # writes held until the session is open
        # first seq of each outstanding write request, in the order they were numbered (so the
        # first key is the lowest) unless a part was tracked again out of order
        self._outstanding: dict[int, None] = {}
        self._in_order = True

    @property
    def is_open(self) -> bool:
        return self.client_id is not None

    def number(self, req: Request) -> None:
        """Give a write request its sequence numbers (when it is first sent)."""
        first = self.next_seq
        self.next_seq = first + len(req.items)
        req.seqs = range(first, self.next_seq)
        self._outstanding[first] = None

    def ack(self) -> int:
        """The lowest sequence number still outstanding: the client never retries below it."""
        out = self._outstanding
        if not out:
            return self.next_seq
        if self._in_order:
            return next(iter(out))
        return min(out)

    def finished(self, req: Request) -> None:
        """A write request has ended (every item done or failed), or goes on as a part of it
        (:meth:`Request.subset`: see :meth:`track`), or will be renumbered in a new session."""
        if req.seqs:
            self._outstanding.pop(req.seqs[0], None)
            if not self._outstanding:
                self._in_order = True

    def track(self, req: Request) -> None:
        """``req`` (a part of a request that had its numbers) is outstanding."""
        if req.seqs:
            first = req.seqs[0]
            if self._outstanding and first < next(reversed(self._outstanding)):
                self._in_order = False
            self._outstanding[first] = None

    def lost(self, req: Request) -> None:
        """The cluster expired the session ``req`` was sent in, and ``req`` was never sent
        before: it goes again in a new session, with new numbers."""
        self.finished(req)
        req.seqs = ()
        self.forget(req.cid)

    def forget(self, cid: Any) -> None:
        """The cluster expired session ``cid``: unless this session was opened anew since, the
        next write opens a new one."""
        if self.client_id is not None and self.client_id == cid:
            self.client_id = None

    def opened(self, client_id: Any) -> list[Request]:
        """The cluster opened this session: the writes that waited for it, to be sent now."""
        self.client_id, self.opening = client_id, False
        waiting, self.waiting = self.waiting, []
        return waiting



class Settled:
    """What an answer meant for one request: items done, items to try again (and whether in a
    new session), and the leader hint it carried."""

    __slots__ = ("again", "expired", "hint", "reopen")

    def __init__(self) -> None:
        self.again: Request | None = None  # to be retried as it is
        self.reopen: Request | None = None  # to be sent again in a new session (never sent before)
        self.hint = 0
        self.expired = False  # the session it was sent in is gone (see Session.forget)


def settle(req: Request, values: Sequence[Any], errors: dict[int, BaseException]) -> Settled:
    """Apply a node's answer (``values``, ``errors`` by item index) to ``req``: results go to
    its sink; what must be retried comes back in the :class:`Settled`.

    - a value, or any error the state machine or the leader gave as the result (a
      :class:`~raft_actors.errors.CommandError`, a refused command...): done;
    - not the leader (a plain :class:`~raft_actors.errors.NotLeaderError`): it was never
      proposed, retry elsewhere;
    - :class:`~raft_actors.errors.LeadershipLostError` or a node-side timeout: the write may
      have been applied; retry in the same session, which makes the retry harmless;
    - :class:`~raft_actors.errors.SessionExpiredError`: a write never sent before is sent again
      in a new session; one that may have been applied fails (outcome unknown).
    """
    out = Settled()
    req.in_flight = False
    if not errors:
        req.sink.put(req.positions, values)
        return out
    sink, positions = req.sink, req.positions
    again: list[int] = []
    reopen: list[int] = []
    done_idx: list[int] = []
    done_val: list[Any] = []
    for i, p in enumerate(positions):
        exc = errors.get(i)
        if exc is None:
            done_idx.append(p)
            done_val.append(values[i])
        elif isinstance(exc, SessionExpiredError):
            out.expired = True
            if req.maybe_applied or req.kind != WRITE:
                sink.put_error(p, exc)  # an earlier copy may have been applied: unknown
            else:
                reopen.append(i)  # never sent before, so not applied: send it afresh
        elif isinstance(exc, NotLeaderError | RaftTimeoutError) and not isinstance(exc, UnknownOutcomeError):
            again.append(i)
            out.hint = getattr(exc, "leader_hint", 0) or out.hint
            if isinstance(exc, LeadershipLostError | RaftTimeoutError) and req.kind == WRITE:
                req.maybe_applied = True
        else:
            sink.put_error(p, exc)
    if done_idx:
        sink.put(done_idx, done_val)
    if again:
        out.again = req if len(again) == len(req.items) else req.subset(again)
    if reopen:
        out.reopen = req if len(reopen) == len(req.items) else req.subset(reopen)
    return out


def unreachable(req: Request) -> None:
    """An attempt got no answer (timeout, a dead or restarting node): a write may have reached
    a leader, so from now on its outcome is unknown unless an answer says otherwise."""
    req.in_flight = False
    if req.kind == WRITE:
        req.maybe_applied = True


def expire(req: Request) -> bool:
    """The request's deadline passed: a write that may have been applied ends with
    :class:`~raft_actors.errors.UnknownOutcomeError`, anything else with
    :class:`~raft_actors.errors.RaftTimeoutError`. Returns whether the outcome is unknown."""
    if req.kind == WRITE and (req.maybe_applied or req.in_flight):
        req.fail(UnknownOutcomeError("deadline passed; the write may or may not have been applied"))
        return True
    req.fail(RaftTimeoutError("deadline passed before the cluster answered"))
    return False


def new_leader(asked: int, hints: Sequence[tuple[int, int]]) -> int:
    """A call to ``asked`` (as the leader) has gone unanswered for a while, and the other nodes
    answered ``(term, leader)`` hints: the leader to ask instead, or 0 to keep waiting.

    The hint of the highest term wins, and only when it names another node: a leader that is
    merely slow is still named by the others, while a paused or cut-off one has been replaced
    (its requests then go to the new leader; sessions apply a write sent twice once)."""
    best = max(hints, default=(0, 0))
    return best[1] if best[1] not in (0, asked) else 0


class Router:
    """Which node to ask: the leader for writes and linearizable reads (learnt from answers
    and redirect hints), a follower for follower reads, any node for stale reads; nodes that
    are dead are avoided, and so are nodes that went silent (no answer in time: paused, cut
    off, overloaded) while others answer, until one of them answers or is named leader."""

    def __init__(self, choose: Callable[[Sequence[int]], int] | None = None) -> None:
        self.leader = 0
        self.dead: set[int] = set()
        self.silent: set[int] = set()
        self._redirected_from = 0  # the node whose hint we followed last
        rr = itertools.count()
        #: picks one of several equally good nodes (round robin unless told otherwise)
        self.choose = choose or (lambda nodes: nodes[next(rr) % len(nodes)])

    def pick(self, nodes: Sequence[int], mode: str | None) -> int:
        """A node for a write (``mode`` ``None``) or a read at ``mode``; 0 if none is known."""
        alive = [i for i in nodes if i not in self.dead] or list(nodes)
        if not alive:
            return 0
        if mode is None or mode == LINEARIZABLE:
            if self.leader in alive:
                return self.leader
            return self.choose([i for i in alive if i not in self.silent] or alive)
        if mode == FOLLOWER:
            others = [i for i in alive if i != self.leader] or alive
            return self.choose([i for i in others if i not in self.silent] or others)
        return self.choose([i for i in alive if i not in self.silent] or alive)

    def answered(self, target: int, mode: str | None) -> None:
        """``target`` answered a call for real: for writes and linearizable reads, it leads."""
        self.dead.discard(target)
        self.silent.discard(target)
        if mode is None or mode == LINEARIZABLE:
            self.leader = target
            self._redirected_from = 0

    def redirected(self, target: int, hint: int, nodes: Sequence[int], mode: str | None) -> bool:
        """``target`` was not the node to ask; ``hint`` names the leader it knows (0: none).
        Returns whether to wait a little (backoff) before the retry: no better node is known."""
        self.dead.discard(target)
        self.silent.discard(target)
        if mode is None or mode == LINEARIZABLE:
            # a hint straight back to a node that just sent us here: both are out of date
            bounced = hint == self._redirected_from
            self._redirected_from = target
            self.follow(hint if hint != target else 0, nodes)
            return not self.leader or bounced
        return True

    def follow(self, hint: int, nodes: Sequence[int]) -> None:
        """Ask ``hint`` next: a node names it as the leader (0 or an unknown node: none known)."""
        self.leader = hint if hint in nodes else 0
        self.silent.discard(hint)

    def lost(self, target: int, died: bool) -> None:
        """``target`` did not answer; ``died``: its actor is gone for good."""
        if died:
            self.dead.add(target)
        else:
            self.silent.add(target)
        if target == self.leader:
            self.leader = 0

    def all_dead(self, nodes: Sequence[int]) -> bool:
        return bool(nodes) and self.dead.issuperset(nodes)
