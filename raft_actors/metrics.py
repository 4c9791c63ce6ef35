"""Raft metrics in Ray's metrics system (``ray.util.metrics``).

Every node exports, tagged ``cluster`` and ``node``, once every ``RaftConfig.metrics_interval``
seconds (1 s by default; 0 turns it off); Ray adds the ``ray_`` prefix and serves them on its
Prometheus endpoint (``ray.init(_metrics_export_port=...)`` or ``ray start
--metrics-export-port``) and in its dashboard. Exporting them needs Ray's metrics agent,
which comes with ``ray[default]``.

The hot path only adds to plain counters and bounded sample buffers, per call or per batch
(never per request); the export reads them on the node's timer thread. Latency histograms
take at most :data:`MAX_SAMPLES` observations per export (the most recent): a sample of a
busy second, not every call.

=========================================  =======================================================
metric (after Ray's ``ray_`` prefix)       meaning
=========================================  =======================================================
``raft_term``                              the node's current term (gauge)
``raft_role``                              1 for the node's role, 0 for the others (gauge, tag ``role``)
``raft_commit_index``                      commit index (gauge)
``raft_applied_index``                     applied index (gauge)
``raft_last_index``                        last index in the log (gauge)
``raft_follower_lag``                      entries a follower's log is behind, as its leader sees it
                                           (gauge, tag ``peer``; leaders only)
``raft_leader_changes``                    times the leader this node knows changed (counter)
``raft_elections_started``                 elections this node started as a candidate (counter)
``raft_proposals``                         write requests by ``outcome`` (counter): ``ok``,
                                           ``command_error``, ``rejected``, ``not_leader``,
                                           ``leadership_lost``, ``session_expired``, ``error``
``raft_reads``                             read requests by ``consistency`` and ``outcome`` (counter)
``raft_client_batch_size``                 requests per client call (histogram, tag ``kind``)
``raft_proposal_commit_seconds``           a leader's proposal to its commit (histogram)
``raft_read_seconds``                      a read call, arrival to answer (histogram)
``raft_fsync_seconds``                     one fsync of the write-ahead log (histogram)
``raft_entries_per_fsync``                 log entries made durable by one fsync (histogram)
``raft_snapshots``                         snapshots taken (counter)
``raft_snapshot_bytes``                    bytes of snapshots taken (counter)
``raft_snapshot_seconds``                  taking and writing one snapshot (histogram)
``raft_wal_bytes``                         bytes of write-ahead log and snapshot on disk (gauge)
``raft_client_retries``                    requests a client process sent again (counter; tag
                                           ``cluster`` only: exported by the client's process)
``raft_client_unknown_outcomes``           writes that ended with an unknown outcome (counter, idem)
=========================================  =======================================================
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

#: most observations one export gives a latency histogram (the most recent ones)
MAX_SAMPLES = 1000
#: buckets (seconds) of the latency histograms
LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
#: buckets of the size histograms (requests per call, entries per fsync)
SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
ROLES = ("leader", "follower", "candidate", "pre_candidate", "learner", "non-voter", "removed", "joining")

#: outcome names of the errors a request can end with (anything else: "error")
_OUTCOMES = {"CommandError": "command_error", "CommandRejectedError": "rejected", "NotLeaderError": "not_leader",
             "LeadershipLostError": "leadership_lost", "SessionExpiredError": "session_expired"}

log = logging.getLogger(__name__)

_made: dict[str, Any] = {}
_made_lock = threading.Lock()


def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...], boundaries: list | None = None) -> Any:
    """The process's one ``ray.util.metrics`` object of that name (made on first use)."""
    with _made_lock:
        m = _made.get(name)
        if m is None:
            from ray.util import metrics as rm

            if kind == "histogram":
                m = rm.Histogram(name, description=description, boundaries=boundaries, tag_keys=tag_keys)
            else:
                m = (rm.Counter if kind == "counter" else rm.Gauge)(name, description=description, tag_keys=tag_keys)
            _made[name] = m
        return m


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` tag of a request that ended with ``exc`` (``None``: ok)."""
    return "ok" if exc is None else _OUTCOMES.get(type(exc).__name__, "error")


class CallCounts:
    """What the hot path adds to, per call: requests by kind and outcome, call sizes and read
    latencies. Thread-safe enough for counters (a lost increment under a race is possible in
    principle, never an exception); drained by :meth:`NodeMetrics.export`."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (kind or consistency, outcome) -> count
        self.sizes: deque[tuple[str, int]] = deque(maxlen=MAX_SAMPLES)
        self.read_seconds: deque[float] = deque(maxlen=MAX_SAMPLES)

    def add(self, kind: str, n: int, errors: Mapping[int, BaseException] | None = None,
            whole: BaseException | None = None) -> None:
        """A call of ``n`` requests of ``kind`` (``"write"`` or a read consistency) ended:
        ``errors`` by position, or ``whole`` the one error of all of them."""
        req = self.requests
        if whole is not None:
            key = (kind, outcome_of(whole))
            req[key] = req.get(key, 0) + n
        else:
            bad = len(errors) if errors else 0
            if n > bad:
                req[(kind, "ok")] = req.get((kind, "ok"), 0) + n - bad
            for exc in (errors or {}).values():
                key = (kind, outcome_of(exc))
                req[key] = req.get(key, 0) + 1
        self.sizes.append(("write" if kind == "write" else "read", n))


class NodeMetrics:
    """A node's metrics: made in the node actor, exported from its timer thread."""

    def __init__(self, cluster: str, node: int):
        self.tags = {"cluster": cluster, "node": str(node)}
        self.counts = CallCounts()
        t = ("cluster", "node")
        self.term = _metric("gauge", "raft_term", "current term", t)
        self.role = _metric("gauge", "raft_role", "1 for the node's role, 0 for the others", (*t, "role"))
        self.commit = _metric("gauge", "raft_commit_index", "commit index", t)
        self.applied = _metric("gauge", "raft_applied_index", "applied index", t)
        self.last = _metric("gauge", "raft_last_index", "last index in the log", t)
        self.lag = _metric("gauge", "raft_follower_lag", "entries a follower is behind its leader (leader's view)",
                           (*t, "peer"))
        self.leader_changes = _metric("counter", "raft_leader_changes", "times the known leader changed", t)
        self.elections = _metric("counter", "raft_elections_started", "elections started as a candidate", t)
        self.proposals = _metric("counter", "raft_proposals", "write requests by outcome", (*t, "outcome"))
        self.reads = _metric("counter", "raft_reads", "read requests by consistency and outcome",
                             (*t, "consistency", "outcome"))
        self.batch = _metric("histogram", "raft_client_batch_size", "requests per client call", (*t, "kind"),
                             SIZE_BUCKETS)
        self.commit_s = _metric("histogram", "raft_proposal_commit_seconds", "a leader's proposal to its commit", t,
                                LATENCY_BUCKETS)
        self.read_s = _metric("histogram", "raft_read_seconds", "a read call, arrival to answer", t, LATENCY_BUCKETS)
        self.fsync_s = _metric("histogram", "raft_fsync_seconds", "one fsync of the write-ahead log", t,
                               LATENCY_BUCKETS)
        self.per_fsync = _metric("histogram", "raft_entries_per_fsync", "log entries made durable by one fsync", t,
                                 SIZE_BUCKETS)
        self.snapshots = _metric("counter", "raft_snapshots", "snapshots taken", t)
        self.snapshot_bytes = _metric("counter", "raft_snapshot_bytes", "bytes of snapshots taken", t)
        self.snapshot_s = _metric("histogram", "raft_snapshot_seconds", "taking and writing one snapshot", t,
                                  LATENCY_BUCKETS)
        self.wal = _metric("gauge", "raft_wal_bytes", "bytes of log and snapshot on disk", t)
        self._seen: dict[str, int] = {}  # cumulative counts already exported
        self._peers: set[int] = set()

    def _delta(self, name: str, total: int) -> int:
        d = total - self._seen.get(name, 0)
        self._seen[name] = total
        return d

    def export(self, snap: Mapping[str, Any], fsyncs: Iterable[tuple[float, int]],
               snapshots: Iterable[tuple[float, int]]) -> None:
        """Export a snapshot of the node (:meth:`Replica.metrics_snapshot
        <raft_actors.replica.Replica.metrics_snapshot>`), the fsyncs since the last export
        ``(seconds, entries)`` and the snapshots taken ``(seconds, bytes)``."""
        tags = self.tags
        self.term.set(snap["term"], tags)
        for r in ROLES:
            self.role.set(1 if snap["role"] == r else 0, {**tags, "role": r})
        self.commit.set(snap["commit_index"], tags)
        self.applied.set(snap["applied_index"], tags)
        self.last.set(snap["last_index"], tags)
        lags = snap.get("follower_lag", {})
        for peer in self._peers - set(lags):
            self.lag.set(0, {**tags, "peer": str(peer)})  # no longer led by this node: no lag to report
        for peer, lag in lags.items():
            self.lag.set(lag, {**tags, "peer": str(peer)})
        self._peers = set(lags)
        for name, metric in (("leader_changes", self.leader_changes), ("elections_started", self.elections)):
            d = self._delta(name, snap[name])
            if d > 0:
                metric.inc(d, tags)
        for s in snap.get("commit_seconds", ()):
            self.commit_s.observe(s, tags)
        self.wal.set(snap["storage_bytes"], tags)
        c = self.counts
        for (kind, outcome), total in list(c.requests.items()):
            d = self._delta(f"{kind}/{outcome}", total)
            if d <= 0:
                continue
            if kind == "write":
                self.proposals.inc(d, {**tags, "outcome": outcome})
            else:
                self.reads.inc(d, {**tags, "consistency": kind, "outcome": outcome})
        for kind, n in drain(c.sizes):
            self.batch.observe(n, {**tags, "kind": kind})
        for seconds in drain(c.read_seconds):
            self.read_s.observe(seconds, tags)
        for seconds, entries in fsyncs:
            self.fsync_s.observe(seconds, tags)
            self.per_fsync.observe(entries, tags)
        for seconds, size in snapshots:
            self.snapshots.inc(1, tags)
            self.snapshot_bytes.inc(size, tags)
            self.snapshot_s.observe(seconds, tags)


class ClientMetrics:
    """A client process's counters for one cluster (its channel adds to them, the channel's
    timer thread exports them)."""

    def __init__(self, cluster: str):
        self.tags = {"cluster": cluster}
        self.retries = 0
        self.unknown = 0
        self._sent = (0, 0)

    def export(self) -> None:
        retries, unknown = self.retries, self.unknown
        dr, du = retries - self._sent[0], unknown - self._sent[1]
        if dr <= 0 and du <= 0:
            return
        self._sent = (retries, unknown)
        try:
            if dr > 0:
                _metric("counter", "raft_client_retries", "requests a client sent again", ("cluster",)).inc(
                    dr, self.tags)
            if du > 0:
                _metric("counter", "raft_client_unknown_outcomes", "writes that ended with an unknown outcome",
                        ("cluster",)).inc(du, self.tags)
        except Exception:  # metrics must never break a client (e.g. Ray not initialized)
            log.debug("could not export client metrics", exc_info=True)


def drain(buffer: deque) -> list:
    """Everything in ``buffer`` now (appenders may go on meanwhile)."""
    return [buffer.popleft() for _ in range(len(buffer))]
