"""Cluster configurations and single-server membership changes (Raft dissertation, chapter 4).

A configuration (:class:`ConfState`) names the voters, who elect leaders and form quorums, and
the learners, who receive the log but never vote nor count toward a quorum. It changes one
server at a time (:class:`ConfChange`): add a learner, promote a learner to voter, remove a
member. Any two configurations one such change apart have overlapping majorities, so no two
leaders can be elected, and no two quorums can commit, without hearing of each other.

A change travels in the log as a ``CONFIG`` entry that carries the whole resulting
configuration (so a node learns it from that entry alone, also one that joined late), and takes
effect on each node as soon as the entry is in its log, committed or not; a node whose log loses
the entry (a new leader overwrites it) goes back to the configuration before it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class ConfChangeError(ValueError):
    """A membership change that cannot be made (the reason is in the message)."""


class ConfChangeType(IntEnum):
    ADD_LEARNER = 1  #: a new node joins: it receives the log, does not vote, does not count
    PROMOTE = 2  #: a learner becomes a voter
    REMOVE = 3  #: a voter or learner leaves the cluster


class ConfChange(NamedTuple):
    """One single-server membership change."""

    type: ConfChangeType
    node: int


class ConfState(NamedTuple):
    """A cluster configuration.

    ``max_id`` is the highest node id that was ever a member: ids are never reused, so a new
    node can never be mistaken for one that left (with its votes and acknowledgements).
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    max_id: int = 0

    @classmethod
    def initial(cls, voters: tuple[int, ...] | list[int]) -> ConfState:
        vs = tuple(sorted(set(voters)))
        return cls(vs, (), max(vs, default=0))

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def role_of(self, node: int) -> str | None:
        """``"voter"``, ``"learner"`` or ``None`` (not a member)."""
        return "voter" if node in self.voters else "learner" if node in self.learners else None

    def apply(self, cc: ConfChange) -> ConfState:
        """The configuration after ``cc``; :class:`ConfChangeError` if ``cc`` does not apply."""
        t, n = ConfChangeType(cc.type), cc.node
        if n <= 0:
            raise ConfChangeError(f"node ids are positive integers, not {n}")
        if t == ConfChangeType.ADD_LEARNER:
            if n <= self.max_id:
                raise ConfChangeError(
                    f"node id {n} is or was a member already; a new node takes a new id (> {self.max_id})"
                )
            return ConfState(self.voters, tuple(sorted(self.learners + (n,))), n)
        if t == ConfChangeType.PROMOTE:
            if n not in self.learners:
                raise ConfChangeError(f"node {n} is not a learner (voters {self.voters}, learners {self.learners})")
            return ConfState(tuple(sorted(self.voters + (n,))), tuple(x for x in self.learners if x != n), self.max_id)
        if n in self.voters:
            if len(self.voters) == 1:
                raise ConfChangeError(f"node {n} is the last voter: a cluster cannot remove all its voters")
            return ConfState(tuple(x for x in self.voters if x != n), self.learners, self.max_id)
        if n in self.learners:
            return ConfState(self.voters, tuple(x for x in self.learners if x != n), self.max_id)
        raise ConfChangeError(f"node {n} is not a member (voters {self.voters}, learners {self.learners})")


def encode_conf_entry(cc: ConfChange, conf: ConfState) -> bytes:
    """The command of a ``CONFIG`` entry: the change and the configuration it leads to."""
    ids = ",".join
    return (
        f"{int(cc.type)} {cc.node}|{ids(map(str, conf.voters))}|{ids(map(str, conf.learners))}|{conf.max_id}"
    ).encode()


def decode_conf_entry(command: bytes) -> tuple[ConfChange, ConfState]:
    """Inverse of :func:`encode_conf_entry`."""
    change, voters, learners, max_id = command.decode().split("|")
    t, n = change.split()

    def ids(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s.split(",")) if s else ()

    return ConfChange(ConfChangeType(int(t)), int(n)), ConfState(ids(voters), ids(learners), int(max_id))
