"""The fast paths on a real Ray, for behaviour (never timing): a slow state machine causes no
election, calls from many threads coalesce into few Ray calls in order (threads in lock-step
into one call a round), batches keep their order and their errors apart, and exactly-once
holds across a leader kill with the shared channel."""

from __future__ import annotations

import threading
import time

import pytest

from raft_actors import CommandError, CommandRejectedError, Counter, RaftConfig, RaftError, UnknownOutcomeError
from raft_actors.state_machines import PickleSnapshotMixin

from .conftest import wait_until


class Slow(PickleSnapshotMixin):
    """A state machine whose ``("spin", s)`` command keeps the CPU busy for ``s`` seconds."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command):
        if command[0] == "spin":
            end = time.perf_counter() + command[1]
            while time.perf_counter() < end:  # holds the GIL, as pure Python does
                pass
        self.n += 1
        return self.n

    def query(self, q):
        return self.n


def test_a_command_that_takes_two_seconds_causes_no_election(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Slow)
    client = cluster.client()
    client.submit(("tick",))
    before = cluster.status()[["term", "leader"]]
    leader = cluster.leader()
    assert client.submit(("spin", 2.0), timeout=30) == 2  # every replica applies it, for 2 s each
    assert client.submit(("tick",)) == 3
    after = cluster.status()[["term", "leader"]]
    assert (after["term"] == before["term"]).all(), "an election happened while the state machine was busy"
    assert (after["leader"] == leader).all()


class Tokens(PickleSnapshotMixin):
    """Remembers every token it was given, in order: a write applied twice shows up twice."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def apply(self, command):
        self.seen.append(command)
        return len(self.seen)

    def query(self, q):
        return list(self.seen)


def test_calls_from_many_threads_coalesce_and_each_session_keeps_its_order(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Tokens)
    shared = cluster.client()
    shared.submit("warm")
    calls_before = cluster.channel.calls
    results: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        own = cluster.client()
        results[w] = [own.submit(f"{w}:{i}") for i in range(20)]

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = cluster.channel.calls - calls_before
    sessions_opened = 32
    # 640 writes (and 32 session openings) went in far fewer Ray calls than writes
    assert calls < (640 + sessions_opened) / 3, calls
    seen = shared.query(("all",))
    for w in range(32):
        mine = [s for s in seen if s.startswith(f"{w}:")]
        assert mine == [f"{w}:{i}" for i in range(20)]  # in order, each once
        assert results[w] == sorted(results[w])


def test_threads_in_lock_step_travel_in_one_call_a_round(cluster_factory, monkeypatch) -> None:
    """Blocking threads that write one at a time come back together after each answer: the
    next call waits for all of them (the lane's hold) instead of the first leaving alone and
    the rest a round later (two calls a round, each half full). The hold ends when they are
    all back, or after a gap between two of them (made long here, so that a slow machine
    cannot split a round: the count is what is tested)."""
    from raft_actors import channel

    monkeypatch.setattr(channel, "HOLD_GAP", 0.5)
    monkeypatch.setattr(channel, "HOLD_MAX", 5.0)  # the call's own duration (about 50 ms) still bounds it
    cluster = cluster_factory(num_nodes=3, state_machine=Slow)
    client = cluster.client()
    client.submit(("tick",))
    threads, rounds = 12, 25
    got: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        got[w] = [client.submit(("spin", 0.004)) for _ in range(rounds)]

    before = cluster.channel.calls
    workers = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    calls = cluster.channel.calls - before
    assert len(got) == threads and all(got[w] == sorted(got[w]) and len(set(got[w])) == rounds for w in got)
    # about one call a round (two more while the threads fall into step); without the hold, two
    assert calls <= rounds + 8, calls


def test_a_lane_waiting_for_threads_that_are_gone_still_sends_what_else_comes(cluster_factory, monkeypatch) -> None:
    """Threads whose last writes went in one call do not come back: the lane expects them, and a
    future, a lone blocking call and a follower read made afterwards still leave, by the end of
    the hold (at most the last call's duration), not by their deadline."""
    from raft_actors import channel

    monkeypatch.setattr(channel, "HOLD_GAP", 0.5)
    cluster = cluster_factory(num_nodes=3, state_machine=Slow)
    client = cluster.client()
    client.submit(("tick",))
    for _ in range(3):  # each time, the last call answers several threads at once
        start = threading.Barrier(6)

        def one(start: threading.Barrier = start) -> None:
            start.wait()
            client.submit(("spin", 0.01))

        workers = [threading.Thread(target=one) for _ in range(6)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert client.submit_async(("tick",), timeout=30).result(timeout=20) > 0
        assert client.submit(("tick",), timeout=30) > 0
        assert client.query(("n",), consistency="follower", timeout=30) > 0


def test_batches_keep_their_order_and_their_errors_apart(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Counter, config=RaftConfig(client_batch=64))
    client = cluster.client()
    out = client.submit_many([("add", 1)] * 1000)
    assert out == list(range(1, 1001))  # in order, across 16 calls of 64
    # one command the state machine refuses, one it fails on, one that cannot be pickled
    mixed = [("add", 1), ("mul", 2), ("add", "x"), ("add", threading.Lock()), ("add", 1)]
    got = client.submit_many(mixed, return_exceptions=True)
    assert got[0] == 1001 and got[4] == 1002
    assert isinstance(got[1], CommandRejectedError) and isinstance(got[2], CommandRejectedError)
    assert isinstance(got[3], CommandRejectedError) and "cannot be serialized" in str(got[3])
    with pytest.raises(CommandRejectedError):
        client.submit_many(mixed)
    assert client.query_many([("get",)] * 3) == [1004] * 3
    assert client.query(("get",), consistency="follower") == 1004


def test_a_state_machine_error_is_a_result_inside_a_batch(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Slow)
    client = cluster.client()
    got = client.submit_many([("tick",), ("spin", "not a number"), ("tick",)], return_exceptions=True)
    assert got[0] == 1 and isinstance(got[1], CommandError) and got[2] == 2  # it failed before counting


def test_exactly_once_across_a_leader_kill_with_the_shared_channel(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Tokens, config=RaftConfig(request_timeout=20))
    acked: list[str] = []
    unknown: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        c = cluster.client()  # every writer shares the process's channel
        i = 0
        while not stop.is_set():
            token = f"{w}:{i}"
            try:
                c.submit(token)
                with lock:
                    acked.append(token)
            except UnknownOutcomeError:
                with lock:
                    unknown.append(token)
            except RaftError:
                pass  # never reached a leader: not applied
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) > 200, what="load")
    old = cluster.leader()
    cluster.kill(old)
    wait_until(lambda: cluster.leader() != old, what="a new leader")
    n = len(acked)
    wait_until(lambda: len(acked) > n + 200, what="writes under the new leader")
    stop.set()
    for t in threads:
        t.join()
    seen = cluster.client().query(("all",))
    assert len(seen) == len(set(seen)), "a write was applied twice"
    assert set(acked) <= set(seen), "an acknowledged write is missing"
    assert set(seen) <= set(acked) | set(unknown), "a write was applied that nobody sent"
