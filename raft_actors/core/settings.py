"""The protocol core's own settings: everything it needs, counted in ticks and messages.

:class:`~raft_actors.config.RaftConfig` (the user-facing settings) extends these with the
shells' settings, so the core never imports from outside its package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoreConfig:
    """Tick-based timing and flow control of one :class:`~raft_actors.core.RaftCore`."""

    #: a follower starts an election after a random number of ticks in
    #: [election_ticks, election_ticks + election_jitter_ticks]
    election_ticks: int = 10
    #: the randomized part of the election timeout, in ticks (``None``: election_ticks - 1, so
    #: timeouts spread over [election_ticks, 2*election_ticks)); 0 turns randomization off
    election_jitter_ticks: int | None = None
    #: a leader sends heartbeats every this many ticks
    heartbeat_ticks: int = 1
    #: ask for pre-votes before bumping the term, so a partitioned node cannot disrupt a leader
    pre_vote: bool = True
    #: a leader that has not heard from a quorum within an election timeout steps down
    check_quorum: bool = True
    #: unacknowledged append messages in flight per follower while pipelining
    max_inflight: int = 32
    #: most entries in one append message
    max_entries_per_message: int = 2048
    #: a learner is promoted once a round of catch-up (replicating what the leader had when the
    #: round began) takes less than an election timeout; the leader gives up after this many rounds
    catchup_rounds: int = 10
    #: ... or when one round takes longer than this many ticks (the learner is down or too slow)
    catchup_round_ticks: int = 1000

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.election_jitter_ticks is not None and self.election_jitter_ticks < 0:
            raise ValueError("election_jitter_ticks must be >= 0")
        if self.max_inflight < 1 or self.max_entries_per_message < 1:
            raise ValueError("max_inflight and max_entries_per_message must be >= 1")
        if self.catchup_rounds < 1 or self.catchup_round_ticks < 1:
            raise ValueError("catchup_rounds and catchup_round_ticks must be >= 1")
