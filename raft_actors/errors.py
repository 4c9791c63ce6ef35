"""Typed errors raised to users of raft_actors."""

from __future__ import annotations

import pickle
import traceback as _tb


class RaftError(Exception):
    """Base class of every error raft_actors raises on purpose."""


class NotLeaderError(RaftError):
    """The node asked is not the leader; ``leader_hint`` is the leader it knows of (0 if none)."""

    def __init__(self, leader_hint: int = 0, message: str | None = None):
        super().__init__(message or f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint

    def __reduce__(self):  # keep the hint across pickling
        return (type(self), (self.leader_hint, str(self)))


class LeadershipLostError(NotLeaderError):
    """The write was proposed, then the node stopped being leader before it committed.

    It may still commit under the next leader. The client retries it in the same session,
    which makes the retry apply at most once.
    """


class RaftTimeoutError(RaftError, TimeoutError):
    """The call's deadline passed before the cluster answered."""


class UnknownOutcomeError(RaftTimeoutError):
    """A write's deadline passed after it may have reached a leader: it may or may not be applied.

    Retrying the same client call is safe only through the same client session (the client
    does this itself within the deadline); a new call is a new write.
    """


class SessionExpiredError(UnknownOutcomeError):
    """The cluster had expired this client's session (it keeps ``RaftConfig.max_sessions``, the
    least recently used go first) when a retried write arrived: it was not applied now, but an
    earlier copy may have been. The client opens a new session by itself; a write that had not
    been sent before is simply sent again in it."""


class ClusterUnavailableError(RaftError):
    """No node of the cluster can be reached (it is shut down, or every node is dead)."""


class NodeStartupError(RaftError):
    """A node could not start; the message carries the cause (a corrupt write-ahead log names
    the file and offset: see the README on recovering such a node)."""


class PlacementError(RaftError):
    """Ray cannot place the node actors as asked (e.g. fewer machines offer a slot than there
    are nodes to place; see :mod:`raft_actors.placement`)."""


class MembershipChangeError(RaftError):
    """A membership change was refused or aborted; the configuration is as it was before it.

    Raised for a change while another is still in progress, a node that is not a learner (or not
    a member), a learner that did not catch up in time (it is removed again), and the like.
    ``retryable`` says whether the same change may succeed if tried again shortly (another
    change was still in progress).
    """

    def __init__(self, message: str = "", retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.retryable)


class CommandRejectedError(RaftError, ValueError):
    """The command was refused before it entered the log: malformed, unknown or not picklable."""


class NodeNotFoundError(RaftError, KeyError):
    """No node with that id in this cluster."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown node"


class CommandError(RaftError):
    """The state machine raised while applying a command or answering a query.

    The command is committed and the error is its result, the same on every replica; the node
    keeps running. ``exc_type``, ``message`` and ``traceback`` describe the original exception,
    ``cause`` is the exception itself when it can be pickled.
    """

    def __init__(self, exc_type: str, message: str, traceback: str = "", cause: BaseException | None = None):
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.cause = cause

    def __reduce__(self):
        return (type(self), (self.exc_type, self.message, self.traceback, self.cause))

    @classmethod
    def from_exception(cls, exc: BaseException) -> CommandError:
        cause: BaseException | None = exc
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - whatever pickling raises, we only keep the text
            cause = None
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc), tb, cause)
