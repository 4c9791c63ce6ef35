"""Tunable settings of a Raft cluster."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RaftConfig:
    """Settings shared by the core, the node actors and the client.

    Time in the core is counted in ticks; ``tick_interval`` (seconds) says how long a tick is
    on a real cluster. The defaults give a 300-600 ms randomized election timeout and a 30 ms
    heartbeat, the ranges the Raft paper (Figure 16) recommends.
    """

    #: seconds per tick on a real cluster (the simulator uses virtual time)
    tick_interval: float = 0.03
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
    #: default deadline, in seconds, of one client call (retries included)
    request_timeout: float = 10.0
    #: a node snapshots its state machine and compacts its log once this many entries were
    #: applied since its last snapshot (0: never by count)
    snapshot_entries: int = 100_000
    #: ... or once the commands applied since its last snapshot add up to this many bytes (0: never by size)
    snapshot_bytes: int = 64 * 2**20
    #: entries kept before the snapshot when compacting, so a follower only a little behind
    #: catches up from the log rather than by a whole snapshot
    keep_entries: int = 5_000
    #: a snapshot travels to a lagging follower in chunks of this many bytes, one at a time
    snapshot_chunk_bytes: int = 2**20
    #: client sessions (the table that applies each write once) kept by every replica; beyond
    #: it the least recently used expire
    max_sessions: int = 10_000
    #: the write-ahead log is cut into files of about this size; compaction deletes whole files
    wal_segment_bytes: int = 16 * 2**20
    #: a learner is promoted once a round of catch-up (replicating what the leader had when the
    #: round began) takes less than an election timeout; the leader gives up after this many rounds
    catchup_rounds: int = 10
    #: ... or when one round takes longer than this many ticks (the learner is down or too slow)
    catchup_round_ticks: int = 1000

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.election_jitter_ticks is not None and self.election_jitter_ticks < 0:
            raise ValueError("election_jitter_ticks must be >= 0")
        if self.max_inflight < 1 or self.max_entries_per_message < 1:
            raise ValueError("max_inflight and max_entries_per_message must be >= 1")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if min(self.snapshot_entries, self.snapshot_bytes, self.keep_entries) < 0:
            raise ValueError("snapshot_entries, snapshot_bytes and keep_entries must be >= 0")
        if self.snapshot_chunk_bytes < 1 or self.wal_segment_bytes < 1 or self.max_sessions < 1:
            raise ValueError("snapshot_chunk_bytes, wal_segment_bytes and max_sessions must be >= 1")
        if self.catchup_rounds < 1 or self.catchup_round_ticks < 1:
            raise ValueError("catchup_rounds and catchup_round_ticks must be >= 1")
