"""The rule that keeps a wiped node from voting: when a starting node has lost its state.

A Raft node's votes and acknowledgements are promises backed by its disk. A node that comes
back without that disk may have forgotten a vote it cast in the current term, or an entry it
acknowledged (so the entry may be committed on the strength of a copy that no longer exists).
Were it to vote or count in a quorum again, two leaders could be elected in one term, or a
committed entry lost. So such a node rejoins as a *non-voter* for good: it replicates the log
and serves reads, but never votes, campaigns or counts (``RaftCore.mark_lost_state``), until a
membership change replaces it by a new node.

Only the node's history can tell an empty disk that lost something from a new node's empty
disk. This module is the one place that decides it; the node actor and the simulator ask it
when a node starts, and the core owns the mark from then on.
"""

from __future__ import annotations


def has_lost_state(*, holds_state: bool, ran_before: bool, others_hold_state: bool = False) -> bool:
    """Whether a starting node has lost its state (and must rejoin as a non-voter).

    Args:
        holds_state: its storage holds anything (a log, a hard state, a snapshot, or the mark
            of an earlier loss, which keeps it a non-voter).
        ran_before: this node ran before: it is being restarted (by the driver, or by Ray
            after a crash). A node that ran with in-memory storage always loses its state.
        others_hold_state: other nodes of its cluster hold state, so the cluster ran before
            (a relaunch over existing data directories where this node's came back empty).

    A node whose storage holds something recovers from it (a stored mark keeps it a
    non-voter); a node with nothing is new only if neither it nor its cluster ever ran.
    """
    return not holds_state and (ran_before or others_hold_state)
