"""What a leader knows of each follower's log, and how much it may send it (flow control)."""

from __future__ import annotations

from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0  #: one append at a time until the follower's match index is found
    REPLICATE = 1  #: optimistic pipelining: next index moves ahead of acknowledgements
    SNAPSHOT = 2  #: the follower needs compacted entries: a snapshot is on its way, send nothing else


class Progress:
    """A leader's view of one follower (etcd-io/raft's ``tracker.Progress``).

    In ``PROBE`` the leader sends one append per heartbeat interval and waits for the answer;
    in ``REPLICATE`` it streams appends, at most ``max_inflight`` unacknowledged messages at a time;
    in ``SNAPSHOT`` it waits until the snapshot ``pending_snapshot`` has been delivered (or failed).
    """

    __slots__ = ("heard_at", "inflight", "lost", "match", "max_inflight", "next", "pending_snapshot", "probe_sent",
                 "recent_active", "state")

    def __init__(self, next_index: int, max_inflight: int):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: list[int] = []  # last index of each unacknowledged append, ascending
        self.max_inflight = max_inflight
        self.recent_active = False
        self.heard_at: int | None = None  # the leader's tick count when the follower last answered
        self.lost = False  # the follower lost its storage once: never counted in a quorum
        self.pending_snapshot = 0

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflight.clear()

    def forget_match(self) -> None:
        """The follower lost its log: nothing it acknowledged holds; replicate from the start."""
        self.match = 0
        self.become_probe()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= self.max_inflight

    def sent_entries(self, last_index: int) -> None:
        """Record an append whose last entry is ``last_index`` (0 entries: a bare probe)."""
        if self.state == ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower matches up to ``index``. Returns whether that is news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        if self.inflight and self.inflight[0] <= index:
            self.inflight = [i for i in self.inflight if i > index]
        return updated

    def maybe_decrease_to(self, rejected: int, next_probe: int) -> bool:
        """The follower rejected an append at ``rejected``; retry from ``next_probe + 1``.

        Returns ``False`` for a stale rejection (one that no longer says anything new).
        """
        if self.state == ProgressState.SNAPSHOT:
            return False  # answers to appends sent before the snapshot: the snapshot decides
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(rejected, next_probe + 1))
            return True
        if self.next - 1 != rejected or rejected <= self.match:
            return False  # stale (a follower that lost its log says so: see RaftCore._step_leader)
        self.next = max(self.match + 1, min(rejected, next_probe + 1))
        self.probe_sent = False
        return True
