"""PySyncObj as a baseline: the same replicated key-value workload as raft_actors' benchmarks, run
on PySyncObj (https://github.com/bakwc/PySyncObj, 0.3.x) in the same run, side by side.

PySyncObj is an optional extra. :func:`available` says whether it can be imported; without it,
``python -m benchmarks.pysyncobj_baseline`` (and :func:`run_baseline`) say the baseline was
skipped and do nothing else.

Setup:

* a ``SyncObj`` subclass with a ``@replicated`` ``put(key, value)`` and a local ``get(key)``;
* ``nodes`` Raft nodes, each a PySyncObj ``SyncObj`` in its own OS process (this file run as a
  script by ``subprocess``), talking TCP on 127.0.0.1 ports chosen free at run time;
* the client, by default, is the calling process: it sends writes over TCP to a small request
  proxy inside the leader's process, which calls ``put(..., callback=...)`` and sends each result
  back once PySyncObj reports the write committed and applied. That is the path raft_actors'
  benchmarks measure (a driver process sending writes to the leader actor, which replies once
  the write is committed and applied). ``client="leader"`` instead issues the writes inside the
  leader's process (a closed loop of callbacks): no client hop at all, which favours PySyncObj;
  it is there to show what the hop costs.

PySyncObj makes you choose between latency and throughput, so there are settings profiles
(:data:`PROFILES`); each run records the exact ``SyncObjConf`` it used:

* ``"latency"`` (the default of :func:`run_latency`): ``appendEntriesUseBatch=False``, every new
  entry goes to the followers at once;
* ``"throughput"`` (the default of :func:`run_throughput`): ``appendEntriesUseBatch=True`` with a
  2 ms tick and a 5 ms append period, the fastest setting found on a 2-core machine;
* ``"stock"``: PySyncObj's own defaults (batching on a 50 ms tick and a 100 ms append period,
  so one write at a time takes about 100 ms; elections after 0.4-1.4 s; log compaction every
  5,000 entries).

``"latency"`` and ``"throughput"`` use raft_actors' election timeout (300-600 ms) and, for
``"latency"``, its 30 ms heartbeat. They do not compact the log during a run: at raft_actors'
100,000 entries, PySyncObj's in-memory compaction (a gzip pickle of the whole state, in the node's
only Raft thread) stalled the leader past the election timeout, a new leader was elected, and
the writes in flight on the old one never got their callback.

Durability differs and is reported, not hidden. By default PySyncObj keeps its log, term and vote
in memory only. ``journal=True`` sets ``journalFile`` (the log, in an mmap'ed file, with the
current term and vote in a ``.meta`` file rewritten on every change) and ``fullDumpFile`` (the
snapshot). PySyncObj 0.3.17 never calls fsync: the journal is written into the page cache (and
msync'ed only when the node is destroyed), so a process crash keeps what it wrote but a power
loss or kernel crash does not. raft_actors fsyncs its write-ahead log before acknowledging.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Self

_COMMON: dict[str, Any] = {
    # raft_actors: randomized election timeout of 300-600 ms (10-20 ticks of 30 ms).
    "raftMinTimeout": 0.3,
    "raftMaxTimeout": 0.6,
    # No log compaction during a benchmark run (see the module docstring).
    "logCompactionMinEntries": 10_000_000,
    # Only shortens start-up (the default waits 5 s before retrying a peer that was not listening yet).
    "connectionRetryTime": 0.5,
}

#: ``SyncObjConf`` keyword arguments of each settings profile (see the module docstring).
PROFILES: dict[str, dict[str, Any]] = {
    "latency": {
        **_COMMON,
        "appendEntriesUseBatch": False,  # send every new entry at once (wakes the Raft thread)
        "appendEntriesPeriod": 0.03,  # heartbeat, as raft_actors' tick
    },
    "throughput": {
        **_COMMON,
        "appendEntriesUseBatch": True,  # new entries wait for the next append period, then go together
        "appendEntriesPeriod": 0.005,
        "autoTickPeriod": 0.002,  # the Raft thread's poll timeout (default 50 ms)
    },
    "stock": {"connectionRetryTime": 0.5},
}

_LEADER_STATE = 2  # PySyncObj's _RAFT_STATE.LEADER, as reported by getStatus()["state"]
_SUCCESS = 0  # pysyncobj.FAIL_REASON.SUCCESS
_HEADER = struct.Struct("<I")
_START_TIMEOUT = 30.0  # seconds to start the nodes and elect a leader
_CALL_TIMEOUT = 30.0  # seconds of slack for any single exchange with a node or the proxy
_STOP_TIMEOUT = 5.0  # seconds a node gets to stop before it is terminated, then killed
_NODE_FLAG = "--pysyncobj-node"  # argv[1] of a node process


def available() -> bool:
    """Whether PySyncObj can be imported (``pip install pysyncobj``)."""
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


def pysyncobj_version() -> str | None:
    """The installed PySyncObj version, or None if it is not installed."""
    try:
        from pysyncobj.version import VERSION
    except ImportError:
        return None
    return str(VERSION)


def pysyncobj_settings(profile: str = "latency", **overrides: Any) -> dict[str, Any]:
    """The ``SyncObjConf`` keyword arguments of settings profile ``profile`` (a key of
    :data:`PROFILES`), updated with ``overrides``."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, not {profile!r}")
    return {**PROFILES[profile], **overrides}


# --------------------------------------------------------------------------------------------
# The replicated state machine, and one node process


_KV_CLASS: type | None = None


def _kv_class() -> type:
    """The ``SyncObj`` subclass (defined on first use so that this module imports without
    PySyncObj)."""
    global _KV_CLASS
    if _KV_CLASS is None:
        from pysyncobj import SyncObj, SyncObjConf, replicated

        class ReplicatedKV(SyncObj):
            """A replicated dict: ``put`` goes through the Raft log, ``get`` reads the local copy."""

            def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
                super().__init__(self_address, partners, conf)
                # Set after SyncObj.__init__: PySyncObj snapshots the attributes it did not create.
                self._data: dict[str, bytes] = {}

            @replicated
            def put(self, key: str, value: bytes) -> None:
                """Store ``value`` under ``key`` on every replica (applied once committed)."""
                self._data[key] = value

            def get(self, key: str) -> bytes | None:
                """The local replica's value for ``key`` (not linearizable)."""
                return self._data.get(key)

            def digest(self) -> tuple[int, str]:
                """Number of keys and a hash of the local replica's contents, to compare replicas."""
                items = sorted(self._data.items())
                return len(items), hashlib.sha256(pickle.dumps(items, protocol=4)).hexdigest()

        _KV_CLASS = ReplicatedKV
    return _KV_CLASS


def _send_frame(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``sock``, or None if it closed first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> Any:
    """The next pickled frame from ``sock``, or None if it closed."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    data = _recv_exact(sock, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def _record_reply(replies: collections.deque, request_id: int, _result: Any, error: int) -> None:
    replies.append((request_id, error))


class _RequestProxy:
    """Accepts one client connection at a time on 127.0.0.1 and turns each request frame, a list
    of ``(request_id, key, value)``, into ``put`` calls. Results go back as frames of
    ``(request_id, fail_reason)``, sent once per PySyncObj tick (from the tick thread, right after
    the tick applied the committed entries and ran their callbacks)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv
        self._replies: collections.deque = collections.deque()
        self._client: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port: int = self._listener.getsockname()[1]
        kv.addOnTickCallback(self._flush)
        threading.Thread(target=self._serve, name="request-proxy", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._replies.clear()
            self._client = sock
            try:
                self._handle(sock)
            except OSError:
                pass
            finally:
                with self._send_lock:
                    self._client = None
                sock.close()

    def _handle(self, sock: socket.socket) -> None:
        put = self._kv.put
        replies = self._replies
        while (batch := _recv_frame(sock)) is not None:
            for request_id, key, value in batch:
                put(key, value, callback=functools.partial(_record_reply, replies, request_id))

    def _flush(self) -> None:
        if not self._replies:
            return
        out = []
        with contextlib.suppress(IndexError):
            while True:
                out.append(self._replies.popleft())
        with self._send_lock:
            if self._client is not None:
                with contextlib.suppress(OSError):
                    _send_frame(self._client, out)

    def close(self) -> None:
        self._listener.close()
        with self._send_lock:
            if self._client is not None:
                with contextlib.suppress(OSError):
                    self._client.shutdown(socket.SHUT_RDWR)


def _in_process_throughput(kv: Any, seconds: float, warmup: float, in_flight: int, value_size: int) -> dict:
    """Closed loop inside this (the leader's) process: ``in_flight`` writes outstanding, each
    callback issuing the next write, until ``warmup + seconds`` have passed; counts the writes
    committed during the last ``seconds``."""
    value = b"x" * value_size
    lock = threading.Lock()
    done = threading.Event()
    state = {"ok": 0, "errors": 0, "outstanding": in_flight}
    start = time.monotonic()
    measure_from, stop = start + warmup, start + warmup + seconds

    def issue(slot: int, seq: int) -> None:
        kv.put(f"w{slot}-{seq % 100}", value, callback=functools.partial(on_result, slot, seq))

    def on_result(slot: int, seq: int, _result: Any, error: int) -> None:
        now = time.monotonic()
        with lock:
            if error != _SUCCESS:
                state["errors"] += 1
            elif measure_from <= now <= stop:
                state["ok"] += 1
            if now >= stop:
                state["outstanding"] -= 1
                if state["outstanding"] == 0:
                    done.set()
                return
        issue(slot, seq + 1)

    for slot in range(in_flight):
        issue(slot, 0)
    finished = done.wait(warmup + seconds + _CALL_TIMEOUT)
    return {"committed": state["ok"], "errors": state["errors"], "drained": finished}


def _in_process_latencies(kv: Any, n: int, value_size: int, warmup_writes: int) -> list[float]:
    """Seconds per write, one write at a time, issued inside this (the leader's) process."""
    value = b"x" * value_size
    samples = []
    for i in range(warmup_writes + n):
        t = time.perf_counter()
        kv.put(f"k{i % 100}", value, sync=True, timeout=_CALL_TIMEOUT)
        if i >= warmup_writes:
            samples.append(time.perf_counter() - t)
    return samples


def _status(kv: Any) -> dict:
    status = kv.getStatus()
    leader = status.get("leader")
    partners = [k for k in status if k.startswith("partner_node_status_server_")]
    return {
        "state": status.get("state"),
        "leader": None if leader is None else leader.id,
        "self": kv.selfNode.id,
        "ready": kv.isReady(),
        "connected": sum(1 for k in partners if status[k] == 2),
        "partners": len(partners),
        "commit_idx": status.get("commit_idx"),
        "last_applied": status.get("last_applied"),
    }


class _LogCounter(logging.Handler):
    """Counts PySyncObj's log records of level WARNING and above, by level and message pattern,
    instead of printing them (the benchmark reports the counts)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname}: {record.msg}"] += 1


def _node_main(self_address: str, partners: list[str], settings: dict, conn: Connection) -> None:
    """Entry point of one node process: run a ``ReplicatedKV`` node and its request proxy, and
    answer the parent's commands on ``conn`` until told to stop, or until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    from pysyncobj import SyncObjConf

    log_counter = _LogCounter()
    pysyncobj_logger = logging.getLogger("pysyncobj")
    pysyncobj_logger.addHandler(log_counter)
    pysyncobj_logger.propagate = False

    parent = os.getppid()
    kv = _kv_class()(self_address, partners, SyncObjConf(**settings))
    proxy = _RequestProxy(kv)
    try:
        conn.send(("ready", proxy.port, os.getpid()))
        while True:
            if not conn.poll(0.5):
                if os.getppid() != parent:
                    break
                continue
            command, *args = conn.recv()
            if command == "stop":
                break
            try:
                if command == "status":
                    reply: Any = _status(kv)
                elif command == "throughput":
                    reply = _in_process_throughput(kv, *args)
                elif command == "digest":
                    reply = kv.digest()
                elif command == "log_counts":
                    reply = dict(log_counter.counts)
                elif command == "latency":
                    reply = _in_process_latencies(kv, *args)
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send(("ok", reply))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):
        pass
    finally:
        proxy.close()
        kv.destroy()
        deadline = time.monotonic() + 2.0
        while kv.tick_thread_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        _end_forked_children()
        if kv.tick_thread_alive():
            os._exit(0)


def _end_forked_children(timeout: float = 2.0) -> None:
    """Stop and reap what this node forked (PySyncObj's snapshot writers, ``useFork=True``), so
    that none outlives the node as an orphan or a zombie. Only in a node that leads its own
    process group, as the benchmark starts them."""
    if os.getpgrp() != os.getpid():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the forks keep the default: SIGTERM ends them
    os.killpg(os.getpgrp(), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# The cluster, seen from the calling process


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class PySyncObjCluster:
    """``nodes`` PySyncObj nodes, one process each. Use as a context manager: leaving the block
    (normally, by an exception or by KeyboardInterrupt) stops every process it started."""

    def __init__(self, nodes: int = 3, settings: dict[str, Any] | None = None, journal: bool = False) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.nodes = nodes
        self.journal = journal
        self.settings = dict(settings if settings is not None else pysyncobj_settings())
        self.addresses = [f"127.0.0.1:{port}" for port in _free_ports(nodes)]
        self.leader: int | None = None
        self.pids: list[int] = []
        self.proxy_ports: list[int] = []
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _node_settings(self, index: int) -> dict[str, Any]:
        settings = dict(self.settings)
        if self.journal:
            assert self._tmp is not None
            base = os.path.join(self._tmp.name, f"node-{index}")
            settings["journalFile"] = base + ".journal"
            settings["fullDumpFile"] = base + ".dump"
        return settings

    def start(self, timeout: float = _START_TIMEOUT) -> None:
        """Start the node processes and wait until they elected a leader and are all connected."""
        deadline = time.monotonic() + timeout
        if self.journal:
            self._tmp = tempfile.TemporaryDirectory(prefix="pysyncobj-baseline-")
        for i, address in enumerate(self.addresses):
            # A socketpair carries the commands; the child runs this file as a script, so it needs
            # neither an importable module path nor a __main__ guard in the caller (as spawn would).
            parent_sock, child_sock = socket.socketpair()
            spec = {"address": address, "partners": [a for a in self.addresses if a != address],
                    "settings": self._node_settings(i)}
            try:
                proc = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), _NODE_FLAG, str(child_sock.fileno()), json.dumps(spec)],
                    pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches only us; we stop the nodes
                )
            except BaseException:
                parent_sock.close()
                raise
            finally:
                child_sock.close()
            self._procs.append(proc)
            self._conns.append(Connection(parent_sock.detach()))
        for i in range(self.nodes):
            tag, port, pid = self._recv(i, deadline)
            assert tag == "ready"
            self.proxy_ports.append(port)
            self.pids.append(pid)
        self.leader = self.wait_for_leader(deadline - time.monotonic())

    def _recv(self, i: int, deadline: float) -> Any:
        conn = self._conns[i]
        while not conn.poll(min(0.2, max(0.0, deadline - time.monotonic()))):
            if self._procs[i].poll() is not None:
                raise RuntimeError(f"PySyncObj node {i} died (exit code {self._procs[i].returncode})")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"PySyncObj node {i} did not answer in time")
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError(f"PySyncObj node {i} closed its control channel (exit code "
                               f"{self._procs[i].poll()})") from None

    def call(self, i: int, *command: Any, timeout: float = _CALL_TIMEOUT) -> Any:
        """Send ``command`` to node ``i``'s process and return its reply."""
        self._conns[i].send(command)
        tag, reply = self._recv(i, time.monotonic() + timeout)
        if tag != "ok":
            raise RuntimeError(f"PySyncObj node {i}: {reply}")
        return reply

    def wait_for_leader(self, timeout: float = _START_TIMEOUT) -> int:
        """The index of the leader, once every node knows it, is ready and is connected to all."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [self.call(i, "status", timeout=max(1.0, deadline - time.monotonic()))
                        for i in range(self.nodes)]
            leaders = [i for i, s in enumerate(statuses) if s["state"] == _LEADER_STATE]
            if len(leaders) == 1:
                leader_address = self.addresses[leaders[0]]
                if all(s["ready"] and s["connected"] == s["partners"] for s in statuses) and \
                        all(s["leader"] == leader_address for i, s in enumerate(statuses) if i != leaders[0]):
                    return leaders[0]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"PySyncObj elected no leader in {timeout:.0f} s: {statuses}")
            time.sleep(0.05)

    def log_counts(self) -> dict[str, int]:
        """PySyncObj's warnings and worse so far, summed over the nodes: ``{"LEVEL: message
        pattern": count}``."""
        total: collections.Counter[str] = collections.Counter()
        for i in range(self.nodes):
            total.update(self.call(i, "log_counts"))
        return dict(total)

    def replicas_consistent(self, timeout: float = 10.0) -> bool:
        """Whether every node applied the same entries and holds the same data, once they caught
        up with each other (call it when no writes are in flight)."""
        deadline = time.monotonic() + timeout
        while True:
            applied = {self.call(i, "status")["last_applied"] for i in range(self.nodes)}
            if len(applied) == 1 or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return len(applied) == 1 and len({tuple(self.call(i, "digest")) for i in range(self.nodes)}) == 1

    def leaders(self) -> list[int]:
        """The indexes of the nodes that consider themselves leader right now."""
        return [i for i in range(self.nodes) if self.call(i, "status")["state"] == _LEADER_STATE]

    def connect(self, i: int | None = None) -> socket.socket:
        """A client connection to node ``i``'s request proxy (the leader's by default)."""
        i = self.leader if i is None else i
        assert i is not None
        sock = socket.create_connection(("127.0.0.1", self.proxy_ports[i]), timeout=_CALL_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stop(self) -> None:
        """Stop every node process: ask, then terminate, then kill; never waits without end.
        A second Ctrl-C while this runs is ignored, so that it cannot leave processes behind."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
        try:
            self._stop()
        finally:
            if in_main_thread and previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        deadline = time.monotonic() + _STOP_TIMEOUT
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2.0)
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5.0)
            # Each node leads its own process group (start_new_session): this also ends what the
            # node forked and left behind (PySyncObj forks to write a snapshot, useFork=True).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for conn in self._conns:
            conn.close()
        self._procs.clear()
        self._conns.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------------------------
# The benchmarks


def _percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ascending ``sorted_samples``."""
    rank = max(1, math.ceil(q / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def _recv_replies(sock: socket.socket, outstanding: int) -> list[tuple[int, int]]:
    """The next frame of replies from the proxy, with errors that say what went wrong."""
    try:
        replies = _recv_frame(sock)
    except TimeoutError:
        raise TimeoutError(f"no answer from PySyncObj for {_CALL_TIMEOUT:.0f} s with {outstanding} write(s) "
                           "outstanding (PySyncObj drops the callbacks of writes a deposed leader never "
                           "committed)") from None
    if replies is None:
        raise ConnectionError("the PySyncObj leader closed the connection")
    return replies


def _client_throughput(sock: socket.socket, seconds: float, warmup: float, in_flight: int,
                       value_size: int) -> dict:
    """Closed loop from this process through ``sock``: ``in_flight`` writes outstanding (each
    answer sends the next write; the answers of one frame go back as one frame) until
    ``warmup + seconds``; counts the writes committed during the last ``seconds``, then waits
    for the rest."""
    value = b"x" * value_size
    slots: dict[int, tuple[int, int]] = {}  # request id -> (slot, sequence number)
    next_id = 0
    ok = errors = 0

    def request(slot: int, seq: int) -> tuple[int, str, bytes]:
        nonlocal next_id
        next_id += 1
        slots[next_id] = (slot, seq)
        return next_id, f"w{slot}-{seq % 100}", value

    start = time.monotonic()
    measure_from, stop = start + warmup, start + warmup + seconds
    _send_frame(sock, [request(slot, 0) for slot in range(in_flight)])
    while slots:
        replies = _recv_replies(sock, len(slots))
        now = time.monotonic()
        follow_up = []
        for request_id, error in replies:
            slot, seq = slots.pop(request_id)
            if error != _SUCCESS:
                errors += 1
            elif measure_from <= now <= stop:
                ok += 1
            if now < stop:
                follow_up.append(request(slot, seq + 1))
        if follow_up:
            _send_frame(sock, follow_up)
        if now > stop + _CALL_TIMEOUT:
            raise TimeoutError(f"{len(slots)} PySyncObj writes still pending {_CALL_TIMEOUT:.0f} s after the run")
    return {"committed": ok, "errors": errors}


def _client_latencies(sock: socket.socket, n: int, value_size: int, warmup_writes: int) -> list[float]:
    """Seconds per write, one write at a time, from this process through ``sock``."""
    value = b"x" * value_size
    samples = []
    for i in range(warmup_writes + n):
        t = time.perf_counter()
        _send_frame(sock, [(i, f"k{i % 100}", value)])
        replies = _recv_replies(sock, 1)
        elapsed = time.perf_counter() - t
        (request_id, error), = replies
        if request_id != i or error != _SUCCESS:
            raise RuntimeError(f"PySyncObj write {i} failed (request {request_id}, fail reason {error})")
        if i >= warmup_writes:
            samples.append(elapsed)
    return samples


def _check_client(client: str) -> None:
    if client not in ("external", "leader"):
        raise ValueError(f"client must be 'external' or 'leader', not {client!r}")


def _health(cluster: PySyncObjCluster) -> dict[str, Any]:
    """Whether the replicas agree and the leader stayed the same, and what PySyncObj complained
    about during the run."""
    warnings = cluster.log_counts()
    return {
        "replicas_consistent": cluster.replicas_consistent(),
        "leader_unchanged": cluster.leaders() == [cluster.leader],
        "truncations_of_applied_entries": sum(c for k, c in warnings.items() if "truncating already-applied" in k),
        "pysyncobj_warnings": warnings,
    }


def _common(cluster: PySyncObjCluster, profile: str | None, client: str, value_size: int) -> dict[str, Any]:
    return {
        "system": "pysyncobj",
        "pysyncobj_version": pysyncobj_version(),
        "nodes": cluster.nodes,
        "value_size": value_size,
        "journal": cluster.journal,
        "fsync": False,  # PySyncObj 0.3.x never fsyncs, journal or not
        "client": client,
        "profile": profile,
        "settings": dict(cluster.settings),  # plus journalFile/fullDumpFile per node if journal
        "node_pids": list(cluster.pids),
    }


def _resolve(profile: str, settings: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    if settings is not None:
        return None, dict(settings)
    return profile, pysyncobj_settings(profile)


def run_throughput(seconds: float = 5.0, in_flight: int = 1000, value_size: int = 16, nodes: int = 3,
                   journal: bool = False, *, profile: str = "throughput", client: str = "external",
                   warmup: float = 0.5, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Committed writes per second with ``in_flight`` writes outstanding at all times (a closed
    loop: each answer sends the next write), on a fresh cluster.

    ``profile`` names the PySyncObj settings (:data:`PROFILES`); ``settings`` replaces them
    entirely (``SyncObjConf`` keyword arguments). ``client="external"``: this process sends the
    writes over TCP to a proxy in the leader's process (like raft_actors' driver sending to the
    leader actor); ``"leader"``: the writes are issued inside the leader's process (no client hop;
    favours PySyncObj). Keys ``w<slot>-<n % 100>`` and values of ``value_size`` bytes, as in
    raft_actors' benchmark. The first ``warmup`` seconds are not counted."""
    _check_client(client)
    if seconds <= 0 or in_flight < 1:
        raise ValueError("seconds must be positive and in_flight at least 1")
    profile_name, conf = _resolve(profile, settings)
    with PySyncObjCluster(nodes, conf, journal) as cluster:
        assert cluster.leader is not None
        if client == "leader":
            outcome = cluster.call(cluster.leader, "throughput", seconds, warmup, in_flight, value_size,
                                   timeout=warmup + seconds + 2 * _CALL_TIMEOUT)
            if not outcome.pop("drained"):
                raise TimeoutError("PySyncObj writes in the leader's process were still pending after the run")
        else:
            with cluster.connect() as sock:
                outcome = _client_throughput(sock, seconds, warmup, in_flight, value_size)
        health = _health(cluster)
    return {
        **_common(cluster, profile_name, client, value_size),
        **health,
        "ops_per_s": outcome["committed"] / seconds,
        "committed": outcome["committed"],
        "errors": outcome["errors"],
        "seconds": seconds,
        "warmup_s": warmup,
        "in_flight": in_flight,
    }


def run_latency(n: int = 200, value_size: int = 16, nodes: int = 3, journal: bool = False, *,
                profile: str = "latency", client: str = "external", warmup_writes: int = 5,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit latency of one write at a time, on a fresh cluster: ``n`` samples after
    ``warmup_writes``; median, p99 (nearest rank), mean, min and max in milliseconds.
    ``profile``, ``client`` and ``settings`` as for :func:`run_throughput`."""
    _check_client(client)
    if n < 1:
        raise ValueError("n must be at least 1")
    profile_name, conf = _resolve(profile, settings)
    with PySyncObjCluster(nodes, conf, journal) as cluster:
        assert cluster.leader is not None
        if client == "leader":
            samples = cluster.call(cluster.leader, "latency", n, value_size, warmup_writes,
                                   timeout=(n + warmup_writes) * _CALL_TIMEOUT)
        else:
            with cluster.connect() as sock:
                samples = _client_latencies(sock, n, value_size, warmup_writes)
        health = _health(cluster)
    ms = sorted(s * 1000 for s in samples)
    return {
        **_common(cluster, profile_name, client, value_size),
        **health,
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p99_ms": _percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def run_baseline(seconds: float = 5.0, in_flight: int = 1000, latency_n: int = 200, value_size: int = 16,
                 nodes: int = 3, journal_modes: tuple[bool, ...] = (False, True),
                 profiles: tuple[str, ...] = ("latency", "throughput"), client: str = "external") -> dict[str, Any]:
    """The PySyncObj side of a side-by-side run: throughput and latency for each profile and
    journal mode. Returns ``{"available": False, "skipped": reason}`` without PySyncObj, else
    ``{"available": True, "runs": [{"profile", "journal", "throughput": {...}, "latency": {...}}]}``."""
    if not available():
        return {"available": False, "skipped": "pysyncobj is not installed (pip install pysyncobj)"}
    runs = []
    for profile in profiles:
        for journal in journal_modes:
            runs.append({
                "profile": profile,
                "journal": journal,
                "throughput": run_throughput(seconds, in_flight, value_size, nodes, journal, profile=profile,
                                             client=client),
                "latency": run_latency(latency_n, value_size, nodes, journal, profile=profile, client=client),
            })
    return {"available": True, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    """Print PySyncObj's throughput and commit latency per settings profile and journal mode
    (tabulate), or that it was skipped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput measurement per run")
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--latency-n", type=int, default=200)
    parser.add_argument("--value-size", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--profile", choices=(*PROFILES, "all"), default="all", help="PySyncObj settings profile")
    parser.add_argument("--client", choices=("external", "leader", "both"), default="external",
                        help="external: writes from this process through the leader (like raft_actors' driver); "
                             "leader: issued inside the leader's process (favours PySyncObj)")
    parser.add_argument("--journal", choices=("off", "on", "both"), default="both",
                        help="PySyncObj journalFile + fullDumpFile (no fsync either way)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 100 in flight, 30 latency samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.in_flight, args.latency_n = 1.0, 100, 30
    if not available():
        print("PySyncObj baseline skipped: pysyncobj is not installed (pip install pysyncobj)")
        return 0
    from tabulate import tabulate

    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    clients = ["external", "leader"] if args.client == "both" else [args.client]
    journals = {"off": [False], "on": [True], "both": [False, True]}[args.journal]
    repeat = max(1, args.repeat)
    rows = []
    for client in clients:
        for profile in profiles:
            for journal in journals:
                tps, lats = [], []
                for _ in range(repeat):
                    tps.append(run_throughput(args.seconds, args.in_flight, args.value_size, args.nodes, journal,
                                              profile=profile, client=client))
                    lats.append(run_latency(args.latency_n, args.value_size, args.nodes, journal, profile=profile,
                                            client=client))
                    print(f"  {profile} profile, {client} client, journal {'on' if journal else 'off'}: "
                          f"{tps[-1]['ops_per_s']:,.0f} ops/s; one at a time: median {lats[-1]['median_ms']:.2f} ms, "
                          f"p99 {lats[-1]['p99_ms']:.2f} ms", flush=True)
                ops = [t["ops_per_s"] for t in tps]
                rows.append({
                    "profile": profile,
                    "client": client,
                    "journal": journal,
                    "ops/s": round(statistics.median(ops)),
                    "ops/s range": f"{min(ops):,.0f}-{max(ops):,.0f}",
                    "errors": sum(t["errors"] for t in tps),
                    "median ms": round(statistics.median(lat["median_ms"] for lat in lats), 3),
                    "p99 ms": round(statistics.median(lat["p99_ms"] for lat in lats), 3),
                    "replicas agree": all(r["replicas_consistent"] for r in tps + lats),
                    "same leader": all(r["leader_unchanged"] for r in tps + lats),
                    "applied entries truncated": sum(r["truncations_of_applied_entries"] for r in tps + lats),
                })
    print()
    print(f"PySyncObj {pysyncobj_version()}: {args.nodes} nodes, one process each; {args.value_size}-byte values; "
          f"throughput: {args.in_flight} writes in flight for {args.seconds:g} s; latency: one write at a time, "
          f"{args.latency_n} samples; median of {repeat} run(s). PySyncObj never fsyncs.")
    for profile in profiles:
        print(f"  {profile}: {PROFILES[profile]}")
    print(tabulate(rows, headers="keys"))
    return 0


def _node_entry(argv: list[str]) -> None:
    """``python pysyncobj_baseline.py --pysyncobj-node <fd> <json spec>``: one node process,
    commanded through the socket ``fd``."""
    spec = json.loads(argv[1])
    _node_main(spec["address"], spec["partners"], spec["settings"], Connection(int(argv[0])))


if __name__ == "__main__":
    if sys.argv[1:2] == [_NODE_FLAG]:
        _node_entry(sys.argv[2:])
    else:
        sys.exit(main())
