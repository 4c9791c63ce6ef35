"""Tunable settings of a Raft cluster."""

from __future__ import annotations

from dataclasses import dataclass

from .core.settings import CoreConfig


@dataclass(frozen=True)
class RaftConfig(CoreConfig):
    """Settings shared by the core, the node actors and the client.

    Time in the core is counted in ticks; ``tick_interval`` (seconds) says how long a tick is
    on a real cluster. The defaults give a 300-600 ms randomized election timeout and a 30 ms
    heartbeat, the ranges the Raft paper (Figure 16) recommends.

    The protocol core's own settings (:class:`~raft_actors.core.settings.CoreConfig`: election
    and heartbeat ticks, pre-vote, check-quorum, flow control, catch-up rounds) are part of
    this config: a ``RaftConfig`` is a ``CoreConfig`` with the settings of the shells added.
    Pass them all by keyword.
    """

    #: seconds per tick on a real cluster (the simulator uses virtual time)
    tick_interval: float = 0.03
    #: default deadline, in seconds, of one client call (retries included)
    request_timeout: float = 10.0
    #: most requests in one Ray call of a client channel (larger loads pipeline in several calls)
    client_batch: int = 512
    #: a node snapshots its state machine and compacts its log once this many client commands
    #: were applied since its last snapshot (however they were batched into log entries; 0:
    #: never by count)
    snapshot_commands: int = 100_000
    #: ... or once the commands applied since its last snapshot add up to this many bytes (0: never by size)
    snapshot_bytes: int = 64 * 2**20
    #: bytes of commands kept in the log before the snapshot when compacting, so a follower only
    #: a little behind catches up from the log rather than by a whole snapshot
    keep_bytes: int = 4 * 2**20
    #: a snapshot travels to a lagging follower in chunks of this many bytes, one at a time
    snapshot_chunk_bytes: int = 2**20
    #: client sessions (the table that applies each write once) kept by every replica; beyond
    #: it the least recently used expire
    max_sessions: int = 10_000
    #: the write-ahead log is cut into files of about this size; compaction deletes whole files
    wal_segment_bytes: int = 16 * 2**20
    #: seconds between two exports of a node's metrics to Ray's metrics system (0: none; see
    #: :mod:`raft_actors.metrics`)
    metrics_interval: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be positive")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if self.metrics_interval < 0:
            raise ValueError("metrics_interval must be >= 0")
        if self.client_batch < 1:
            raise ValueError("client_batch must be >= 1")
        if min(self.snapshot_commands, self.snapshot_bytes, self.keep_bytes) < 0:
            raise ValueError("snapshot_commands, snapshot_bytes and keep_bytes must be >= 0")
        if self.snapshot_chunk_bytes < 1 or self.wal_segment_bytes < 1 or self.max_sessions < 1:
            raise ValueError("snapshot_chunk_bytes, wal_segment_bytes and max_sessions must be >= 1")
