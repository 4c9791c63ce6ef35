"""Peer messaging for a node actor: Ray calls, batched per peer, with fault injection.

Messages are encoded here (:func:`encode_messages`): an append's entries are pickled once for
every follower they go to, and the rest of a message is a plain tuple.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import ray

from .core import Entry, Message, MsgType
from .core.messages import SnapshotMeta
from .envelope import dumps, loads
from .raycall import when_done

#: where a node's latest snapshot comes from: ``(meta, size, reader)`` or ``None``
SnapshotSource = Callable[[], "tuple[SnapshotMeta, int, BinaryIO] | None"]
#: told how sending a snapshot to a peer ended: ``(peer, delivered, the peer's reply batch)``
SnapshotDone = Callable[[int, bool, "bytes | None"], None]
#: told a peer's reply batch: ``(peer, encoded messages)``
OnReply = Callable[[int, bytes], None]

log = logging.getLogger(__name__)

#: seconds between look-ups of a peer whose handle is unknown
_RESOLVE_EVERY = 0.5


def encode_messages(messages: list[Message], blobs: dict[tuple[int, int, int], bytes] | None = None) -> bytes:
    """One ``bytes`` for a batch of messages. ``blobs`` caches pickled entry runs by
    ``(first index, last index, last term)``: pass the same dict for every peer's batch of one
    round, and entries sent to several followers are pickled once."""
    out = []
    for m in messages:
        ents: Any = m.entries
        if ents:
            key = (ents[0].index, ents[-1].index, ents[-1].term)
            blob = blobs.get(key) if blobs is not None else None
            if blob is None:
                blob = dumps([tuple(e) for e in ents])
                if blobs is not None:
                    blobs[key] = blob
            ents = blob
        else:
            ents = None
        out.append((int(m.type), m.to, m.frm, m.term, m.log_term, m.index, ents, m.commit, m.reject, m.reject_hint,
                    m.context, m.snapshot))
    return dumps(out)


def decode_messages(data: bytes) -> list[Message]:
    """Inverse of :func:`encode_messages`."""
    msgs = []
    for t, to, frm, term, log_term, index, ents, commit, reject, hint, context, snapshot in loads(data):
        entries = [Entry(*e) for e in loads(ents)] if ents is not None else []
        msgs.append(Message(MsgType(t), to, frm, term, log_term, index, entries, commit, reject, hint, context, snapshot))
    return msgs


class _Call:
    __slots__ = ("peer", "started", "token")

    def __init__(self, peer: int, token: int, started: float):
        self.peer = peer
        self.token = token
        self.started = started


class Transport:
    """Sends core messages to peer node actors as Ray calls, from any thread.

    Messages for one peer queue up while earlier calls to it are in flight and leave together
    in the next call (one ``bytes`` argument). At most ``max_calls`` calls per peer are in flight
    at once (a Ray call costs far more CPU than the messages in it: the fewer and fuller the
    calls, the higher the throughput). Raft tolerates loss, duplication and reordering, so a
    failed call is simply dropped, and one that takes longer than ``call_timeout`` frees its
    slot (its late answer is still taken). The peer answers with its messages for this node as
    the call's return value, delivered to ``on_reply`` from Ray's callback thread: keep that
    cheap (hand it to a worker). A peer without a handle (this actor was restarted, or the peer
    was replaced) is looked up through ``resolve`` (by actor name), at most every half second.

    A ``SNAPSHOT`` message is not queued: the node's latest snapshot (``snapshot_source``) is
    streamed to the peer in chunks of ``chunk_bytes`` by a thread of its own, one chunk at a
    time, each answered before the next goes, so a large state never holds up the heartbeats
    that travel beside it. How it ended goes to ``on_snapshot_done``.

    Fault injection for tests and benchmarks: :meth:`block` cuts this node off from some peers
    (both directions, with :meth:`allows` on the receiving side), ``blocked_out`` only the
    messages it sends them (a one-way cut), ``drop_rate`` loses messages at random (this node's
    requests and its answers alike), ``duplicate_rate`` sends some twice, and ``delay`` holds
    each call back by up to that many seconds (a random share of it, so calls also overtake
    each other); ``long_delay_rate`` of the calls are held back ``long_delay`` seconds
    (``(low, high)``) instead. The node's timer thread sends delayed calls through :meth:`due`.
    """

    def __init__(self, node_id: int, resolve: Callable[[int], Any] | None = None, on_reply: OnReply | None = None,
                 max_calls: int = 1, max_queue: int = 10_000, call_timeout: float = 5.0,
                 snapshot_source: SnapshotSource | None = None, on_snapshot_done: SnapshotDone | None = None,
                 chunk_bytes: int = 2**20, defer: Callable[[Callable[[], None]], None] | None = None):
        self.node_id = node_id
        # runs work that may block (looking a peer up by name) off Ray's callback thread, where
        # a blocking Ray call would wait for the very thread it blocks
        self._defer = defer or (lambda fn: fn())
        self._snapshot_source = snapshot_source
        self._on_snapshot_done = on_snapshot_done
        self.chunk_bytes = chunk_bytes
        self._streaming: set[int] = set()  # peers a snapshot is on its way to
        self.call_timeout = call_timeout
        self._on_reply = on_reply
        self.peers: dict[int, Any] = {}
        self._resolve = resolve
        self._resolved_at: dict[int, float] = {}
        self.blocked: set[int] = set()
        self.blocked_out: set[int] = set()
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.delay = 0.0
        self.long_delay_rate = 0.0
        self.long_delay: tuple[float, float] = (0.0, 0.0)
        self.max_calls = max_calls
        self.max_queue = max_queue
        self._lock = threading.Lock()  # queues, calls in flight, delayed sends
        self._queues: dict[int, list[Message]] = {}
        self._calls: dict[int, list[_Call]] = {}  # peer -> calls in flight
        self._tokens = itertools.count()
        self._delayed: list[tuple[float, int, int, bytes]] = []  # a heap of (when, token, peer, payload)
        self._rng = random.Random()
        self.sent_calls = 0
        self.failed_calls = 0

    def set_peers(self, peers: dict[int, Any]) -> None:
        self.peers = {i: h for i, h in peers.items() if i != self.node_id}

    def block(self, peers: set[int]) -> None:
        self.blocked = set(peers)

    def allows(self, peer: int) -> bool:
        """Whether a message from ``peer`` may be delivered (not cut off by a partition)."""
        return peer not in self.blocked

    def faulty(self, messages: list[Message]) -> list[Message]:
        """``messages`` as the injected faults let them through: cut, dropped or duplicated."""
        if not (self.blocked or self.blocked_out or self.drop_rate or self.duplicate_rate):
            return messages
        out = []
        for m in messages:
            if (m.to in self.blocked or m.to in self.blocked_out
                    or (self.drop_rate and self._rng.random() < self.drop_rate)):
                continue
            out.append(m)
            if self.duplicate_rate and self._rng.random() < self.duplicate_rate:
                out.append(m)
        return out

    def send(self, messages: list[Message]) -> None:
        plain = []
        for m in messages:
            if m.type == MsgType.SNAPSHOT:
                self._start_snapshot(m)  # its chunks meet the injected faults on the way
            else:
                plain.append(m)
        plain = self.faulty(plain)
        if not plain:
            return
        blobs: dict[tuple[int, int, int], bytes] = {}
        with self._lock:
            for m in plain:
                q = self._queues.setdefault(m.to, [])
                if len(q) >= self.max_queue:
                    del q[: len(q) // 2]  # a peer that is gone must not eat all memory
                q.append(m)
            launch = [p for p, q in self._queues.items() if q and len(self._calls.get(p, ())) < self.max_calls]
            batches = [(p, self._take(p)) for p in launch]
        for peer, call in batches:
            if call is not None:
                self._launch(call, blobs)

    def _take(self, peer: int) -> tuple[_Call, list[Message]] | None:
        """Under the lock: the queued messages for ``peer``, as a new call in flight."""
        batch = self._queues[peer]
        self._queues[peer] = []
        if not batch:
            return None
        call = _Call(peer, next(self._tokens), time.monotonic())
        self._calls.setdefault(peer, []).append(call)
        return call, batch  # type: ignore[return-value]

    def _launch(self, call_batch: Any, blobs: dict | None = None) -> None:
        call, batch = call_batch
        handle = self._handle(call.peer)
        if handle is None:
            self._finished(call)
            return
        payload = encode_messages(batch, blobs)
        if self.delay or self.long_delay_rate:
            with self._lock:
                if self.long_delay_rate and self._rng.random() < self.long_delay_rate:
                    wait = self._rng.uniform(*self.long_delay)
                else:
                    wait = self.delay * self._rng.random()
                when = time.monotonic() + wait
                heapq.heappush(self._delayed, (when, call.token, call.peer, payload))
                call.started = when
            return
        self._remote(call, handle, payload)

    def _remote(self, call: _Call, handle: Any, payload: bytes) -> None:
        try:
            self.sent_calls += 1
            ref = handle.receive.remote(self.node_id, payload)
        except Exception:  # e.g. a handle Ray no longer accepts: like a failed call
            self.failed_calls += 1
            log.exception("sending to node %s failed", call.peer)
            self._finished(call)
            return
        when_done(ref, lambda result: self._done(call, handle, result))

    def _done(self, call: _Call, handle: Any, result: Any) -> None:
        """Ray's callback thread: a call ended."""
        reply = result
        if isinstance(result, BaseException):
            self.failed_calls += 1
            reply = None
            if isinstance(result, ray.exceptions.ActorDiedError) and self.peers.get(call.peer) is handle:
                self.peers.pop(call.peer, None)  # replaced by a new actor of the same name? look it up again
        self._finished(call, on_callback_thread=True)
        if reply is not None and self._on_reply is not None:
            self._on_reply(call.peer, reply)

    def _finished(self, call: _Call, on_callback_thread: bool = False) -> None:
        """A call's slot is free: send what queued up for that peer meanwhile."""
        with self._lock:
            calls = self._calls.get(call.peer)
            if calls is None or call not in calls:
                return  # it had timed out: its slot was freed then
            calls.remove(call)
            nxt = self._take(call.peer) if self._queues.get(call.peer) and len(calls) < self.max_calls else None
        if nxt is None:
            return
        if on_callback_thread and call.peer not in self.peers:
            self._defer(lambda: self._launch(nxt))  # the peer must be looked up: not on Ray's thread
        else:
            self._launch(nxt)

    def due(self) -> None:
        """Timer thread: send delayed calls whose time has come; free the slots of calls that
        took longer than ``call_timeout`` (a hung peer must not hold a slot for ever: Raft
        resends what matters)."""
        now = time.monotonic()
        ready = []
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                ready.append(heapq.heappop(self._delayed))
            stuck = [c for calls in self._calls.values() for c in calls if now - c.started > self.call_timeout]
        for _, token, peer, payload in ready:
            call = next((c for c in self._calls.get(peer, ()) if c.token == token), None)
            handle = self._handle(peer)
            if call is None:
                continue
            if handle is None:
                self._finished(call)
            else:
                self._remote(call, handle, payload)
        for c in stuck:
            self.failed_calls += 1
            self._finished(c)

    def _handle(self, peer: int) -> Any:
        handle = self.peers.get(peer)
        if handle is None and self._resolve is not None:
            now = time.monotonic()
            if now - self._resolved_at.get(peer, -1e9) >= _RESOLVE_EVERY:
                self._resolved_at[peer] = now
                handle = self._resolve(peer)
                if handle is not None:
                    self.peers[peer] = handle
        return handle

    def _start_snapshot(self, m: Message) -> None:
        """Stream the snapshot ``m`` asks for; every SNAPSHOT message ends in exactly one report."""
        with self._lock:
            if m.to in self._streaming:
                return  # one at a time per peer: the one under way reports, and the core waits for it
            self._streaming.add(m.to)
        threading.Thread(target=self._stream_snapshot, args=(m,), name=f"snapshot-to-{m.to}", daemon=True).start()

    def _stream_snapshot(self, m: Message) -> None:
        peer, delivered, reply = m.to, False, None
        try:
            found = self._snapshot_source() if self._snapshot_source is not None else None
            handle = self._handle(peer)
            if found is None or handle is None:
                return
            meta, size, reader = found
            with reader:
                offset = 0
                while True:
                    chunk = reader.read(self.chunk_bytes)
                    done = offset + len(chunk) >= size
                    if not chunk and not done:
                        raise OSError(f"snapshot file ended at {offset} of {size} bytes")
                    if peer in self.blocked or (self.drop_rate and self._rng.random() < self.drop_rate):
                        return  # an injected fault: the transfer fails (and is reported)
                    self.sent_calls += 1
                    answer = ray.get(
                        handle.receive_snapshot.remote(self.node_id, m.term, meta, offset, size, chunk, done),
                        timeout=self.call_timeout,
                    )
                    if done:
                        delivered, reply = isinstance(answer, bytes), answer
                        return
                    if answer is not True:
                        return  # the peer lost the earlier chunks (it restarted) or cut us off: later
                    offset += len(chunk)
        except (ray.exceptions.RayError, TimeoutError, OSError):
            self.failed_calls += 1
        except Exception:  # never let a transfer take the node down
            self.failed_calls += 1
            log.exception("sending a snapshot to node %s failed", peer)
        finally:
            with self._lock:
                self._streaming.discard(peer)
            if self._on_snapshot_done is not None:
                self._on_snapshot_done(peer, delivered, reply if isinstance(reply, bytes) else None)
