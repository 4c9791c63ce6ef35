"""Client and driver edge cases on a real local Ray: every call ends, with a typed error if need be."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import ray

from raft_actors import (
    ClusterUnavailableError,
    CommandError,
    CommandRejectedError,
    RaftCluster,
    RaftConfig,
    RaftTimeoutError,
)
from raft_actors import channel as channel_module
from raft_actors.state_machines import get, put

from .conftest import wait_until


class Quirky:
    """A state machine whose commands can misbehave in the ways user code does."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command):
        self.n += 1
        if command == "exit":
            sys.exit(3)  # must not take the node down
        if command == "lock":
            return threading.Lock()  # a result that cannot be pickled
        return self.n

    def query(self, q):
        return threading.Lock() if q == "lock" else self.n

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = int(data)


@pytest.fixture(scope="module")
def quirky(ray_session: None, tmp_path_factory):
    cluster = RaftCluster.launch(num_nodes=3, state_machine=Quirky, data_dir=tmp_path_factory.mktemp("quirky"))
    yield cluster
    cluster.shutdown(delete_data=True)


def test_user_code_that_exits_or_returns_unpicklable_values_gets_command_errors(quirky) -> None:
    client = quirky.client()
    pids = set(quirky.status()["pid"])
    with pytest.raises(CommandError) as err:
        client.submit("exit")
    assert err.value.exc_type == "SystemExit"
    start = time.monotonic()
    with pytest.raises(CommandError, match="cannot be sent back"):
        client.submit("lock")
    with pytest.raises(CommandError, match="cannot be sent back"):
        client.query("lock")
    assert time.monotonic() - start < 5  # an answer, not a deadline
    assert isinstance(client.submit("ok"), int)
    assert set(quirky.status()["pid"]) == pids  # no node died or restarted


def test_unpicklable_query_is_rejected_at_once(quirky) -> None:
    client = quirky.client()
    with pytest.raises(CommandRejectedError, match="query cannot be serialized"):
        client.query(threading.Lock(), timeout=2)
    assert isinstance(client.query("n"), int)


def test_timeouts_are_validated_and_each_call_keeps_its_own_deadline(quirky) -> None:
    client = quirky.async_client()
    with pytest.raises(ValueError):
        asyncio.run(client.submit("x", timeout=0))

    async def run():
        # a call with a tiny deadline, batched with normal ones: it ends on its own time (with
        # its answer if that came first, else a timeout; deadlines are kept within 20 ms)
        quick = asyncio.ensure_future(client.query("n", timeout=1e-4))
        normal = [asyncio.ensure_future(client.submit("x")) for _ in range(5)]
        t = time.monotonic()
        try:
            got = await quick
        except RaftTimeoutError as exc:
            got = exc
        took = time.monotonic() - t
        return took, got, await asyncio.gather(*normal)

    took, got, results = asyncio.run(run())
    assert took < 0.5 and isinstance(got, int | RaftTimeoutError)
    assert all(isinstance(r, int) for r in results)


def test_cancelling_one_call_does_not_strand_the_others(quirky) -> None:
    client = quirky.async_client()

    async def run():
        calls = [asyncio.ensure_future(client.submit("x")) for _ in range(20)]
        await asyncio.sleep(0)  # the batch is on its way
        calls[0].cancel()
        return await asyncio.wait_for(asyncio.gather(*calls[1:]), timeout=15)

    results = asyncio.run(run())
    assert len(results) == 19 and all(isinstance(r, int) for r in results)
    assert client._session.ack() == client._session.next_seq  # nothing outstanding: acknowledgements keep advancing


def test_an_asyncio_clients_writes_apply_in_the_order_made_across_deadlines_and_batches(quirky) -> None:
    """Regression: a turn's calls were grouped by deadline (a later call could leave before an
    earlier one with another deadline) and a batch sent at once overtook the calls queued
    before it in the turn; a session applies its writes in the order it made them."""
    client = quirky.async_client()

    async def run():
        a = asyncio.ensure_future(client.submit("x", timeout=5))
        b = asyncio.ensure_future(client.submit("x", timeout=7))
        c = asyncio.ensure_future(client.submit("x", timeout=5))
        await asyncio.sleep(0)  # the three are made, queued to leave at the end of this turn
        many = await client.submit_many(["x", "x"])
        return [await a, await b, await c, *many]

    got = asyncio.run(run())
    assert got == sorted(got) and len(set(got)) == 5  # Quirky counts the commands it applied


def test_asyncio_calls_the_channel_refuses_fail_instead_of_hanging(quirky, monkeypatch) -> None:
    """Regression: a turn's calls are handed to the channel after their coroutines made them;
    an error other than a RaftError doing so went to the event loop's handler, and the calls,
    never made into requests, waited for good (no deadline could end them)."""
    client = quirky.async_client()

    def broken(*args, **kwargs):
        raise RuntimeError("the channel is broken")

    monkeypatch.setattr(client._channel, "send_runs", broken)
    monkeypatch.setattr(client._channel, "write", broken)

    async def run():
        calls = (client.submit("x"), client.submit("x"), client.submit("x", timeout=3))  # a run of 2, then 1
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

    assert all(isinstance(got, RuntimeError) for got in asyncio.run(run()))


def test_a_sink_that_raises_keeps_neither_its_call_nor_the_lane_from_going_on(quirky) -> None:
    """Regression: a sink raising while its call's answer was handed out (a bug of ours once: a
    cancelled future's) left the rest of that answer undelivered and the lane in flight for
    good; every later write of the process waited out its deadline."""
    client = quirky.client()
    ch = client._channel

    class Raising:
        def put(self, positions, values):
            raise RuntimeError("a sink's bug")

        put_error = put

    ch.write(client._session, ["x"], Raising(), 10.0)
    assert isinstance(client.submit("x", timeout=20), int)


def test_an_asyncio_clients_calls_of_one_turn_leave_together_and_each_ends_on_its_own(quirky, monkeypatch) -> None:
    """The calls an asyncio client's coroutines make in one turn of the loop leave as one
    request per kind (not a request each); each still gets its own result, a command that
    cannot be pickled fails alone, and calls queued when the client is closed fail."""
    client = quirky.async_client()
    ch = client._channel
    start = type(ch)._start
    sizes: list[int] = []

    def counted(req, blocking=False):
        sizes.append(len(req))
        return start(ch, req, blocking)

    monkeypatch.setattr(ch, "_start", counted)

    async def one_turn():
        writes = [asyncio.ensure_future(client.submit("x")) for _ in range(100)]
        bad = asyncio.ensure_future(client.submit(threading.Lock()))
        reads = [asyncio.ensure_future(client.query("n")) for _ in range(30)]
        return (await asyncio.gather(*writes), await asyncio.gather(bad, return_exceptions=True),
                await asyncio.gather(*reads))

    writes, (bad,), reads = asyncio.run(one_turn())
    assert sorted(sizes) == [30, 100]  # one request of the writes, one of the reads
    assert len(set(writes)) == 100 and all(isinstance(r, int) for r in writes + reads)
    assert isinstance(bad, CommandRejectedError)  # never sent; the others went without it

    closing = quirky.async_client()

    async def closed_in_the_turn():
        call = asyncio.ensure_future(closing.submit("x"))
        await asyncio.sleep(0)  # the call is made: queued to leave at the end of the turn
        await closing.aclose()
        return await asyncio.gather(call, return_exceptions=True)

    (got,) = asyncio.run(closed_in_the_turn())
    assert isinstance(got, ClusterUnavailableError)


def test_closing_or_shutting_down_fails_calls_instead_of_hanging(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    leader = cluster.leader()
    cluster.partition([leader])  # the next writes hang at the old leader for a while
    pending = client.submit_async(put("y", 2), timeout=30)
    time.sleep(0.2)
    start = time.monotonic()
    cluster.shutdown()
    with pytest.raises(ClusterUnavailableError):
        pending.result(timeout=10)
    assert time.monotonic() - start < 10
    with pytest.raises(ClusterUnavailableError):
        client.submit(put("z", 3))


@pytest.mark.timeout(90)
def test_a_done_callback_may_call_the_client_when_every_node_is_dead(cluster_factory) -> None:
    """A future's done callback is user code, and may call into the client (a retry on
    failure). When the channel gave up on a request (every node dead, a client closed, a
    shutdown) it failed the request's future under its own lock: such a callback deadlocked
    there, and with it the channel's timer thread."""
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    for node in cluster.node_ids:
        cluster.kill(node)
    retried = []
    returned = threading.Event()

    def retry(_: object) -> None:
        try:
            retried.append(client.submit_async(put("y", 2), timeout=10))
        finally:
            returned.set()

    first = client.submit_async(put("y", 1), timeout=30)
    first.add_done_callback(retry)
    with pytest.raises(ClusterUnavailableError):
        first.result(timeout=30)
    assert returned.wait(15), "the done callback never returned: it waits for the channel's lock"
    with pytest.raises(ClusterUnavailableError):
        retried[0].result(timeout=15)


def test_a_write_in_flight_when_its_client_is_closed_is_not_sent_again(cluster_factory) -> None:
    """Closing a client fails its pending calls at once. A write then in flight at a leader
    that cannot commit it was still sent again when that leader gave up on it (as a retry is),
    and applied by the next leader after its caller was told it failed."""
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    leader = cluster.leader()
    cluster.partition([leader])  # the write reaches the old leader, which cannot commit it
    pending = client.submit_async(put("y", 2), timeout=30)
    channel = cluster.channel
    wait_until(lambda: channel._out, what="the write in flight")
    client.close()
    with pytest.raises(ClusterUnavailableError):
        pending.result(timeout=10)
    # the old leader's answer (or the channel giving up waiting for one) comes, and nothing follows it
    wait_until(lambda: not channel._out and not channel._pending, timeout=20, what="the channel idle")
    other = cluster.client()
    other.submit(put("z", 3))  # a new leader serves: anything sent for the closed client was sent by now
    assert other.query(get("y")) is None


def test_closed_client_fails_fast(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=1)
    client = cluster.client()
    client.submit(put("a", 1))
    client.close()
    with pytest.raises(ClusterUnavailableError):
        client.submit(put("a", 2))
    with pytest.raises(ClusterUnavailableError):
        client.query(get("a"))
    assert cluster.client().query(get("a")) == 1


def test_leader_is_found_while_an_isolated_node_inflates_its_term(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, config=RaftConfig(pre_vote=False))
    client = cluster.client()
    leader = cluster.leader()
    loner = next(i for i in cluster.node_ids if i != leader)
    cluster.partition([loner])
    wait_until(lambda: cluster.status().loc[loner, "term"] > cluster.status().loc[leader, "term"] + 1,
               what="the isolated node to run elections")
    client.submit(put("x", 1))
    assert cluster.leader(timeout=5) == leader


def test_a_paused_leader_is_left_for_the_new_one_while_it_still_sleeps(cluster_factory, monkeypatch) -> None:
    """SIGSTOP the leader (a long GC pause, a stalled VM): calls to it neither fail nor answer.
    Clients ask the other nodes who leads and go there while it sleeps; the per-attempt
    timeout is made far longer than the test here, so it cannot be what moves them."""
    monkeypatch.setattr(channel_module, "ATTEMPT_TIMEOUT", 300.0)
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("a", 0))
    old = cluster.leader()
    others = [i for i in cluster.node_ids if i != old]
    done = threading.Event()
    seen: list = []

    def writes() -> None:  # a script's thread, one blocking write after another
        for i in range(1, 11):
            seen.append(client.submit(put("a", i), timeout=120))
        seen.append(asyncio.run(read_async()))
        done.set()

    async def read_async() -> int:
        aclient = cluster.async_client()
        try:
            return await aclient.query(get("a"), timeout=120)
        finally:
            await aclient.aclose()

    cluster.pause(old)
    try:
        threading.Thread(target=writes, daemon=True).start()
        assert done.wait(60), f"the clients waited for the paused leader ({len(seen)} calls answered)"
        assert seen[-1] == 10
    finally:
        cluster.resume(old)
    wait_until(lambda: cluster.leader() in others and cluster.client().query(get("a")) == 10,
               what="the woken node to follow the new leader")


def test_driver_survives_a_node_that_died_on_its_own(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, actor_options={"max_restarts": 0})
    client = cluster.client()
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(cluster.handle(victim).crash.remote())
    cluster.heal()  # no error: the dead node is noticed and skipped
    cluster.partition([victim])
    assert cluster.status().loc[victim, "role"] == "dead"
    cluster.restart(victim)  # a node that died on its own is recreated
    cluster.heal()
    client.submit(put("after", 1))
    wait_until(lambda: cluster.status()["applied_index"].nunique() == 1, what="convergence")


class _Ref:
    """What a Ray call returns, as far as the client channel uses it: ``future()``."""

    def __init__(self, value: bytes | None):
        from concurrent.futures import Future

        self._future: Future = Future()
        if value is not None:
            self._future.set_result(value)

    def future(self):
        return self._future


class _SilentLeader:
    """A stand-in node handle: it opens sessions, then takes writes and never answers them (a
    leader that appended them and went quiet), like a Ray actor handle (``submit.remote``)."""

    def __init__(self) -> None:
        self.submit = self
        self.calls = 0

    def remote(self, payload: bytes) -> _Ref:
        from raft_actors.envelope import Outcome, decode_call, encode_results

        self.calls += 1
        parts = decode_call(payload)
        if all(p[0] is None for p in parts):  # session openings are answered
            return _Ref(encode_results([Outcome(True, 7)] * len(parts)))
        return _Ref(None)


def test_a_blocking_write_that_may_have_been_applied_raises_unknown_outcome() -> None:
    """The blocking client once turned every deadline error into a plain RaftTimeoutError,
    hiding that a write sent to a leader may have been applied."""
    from raft_actors import RaftClient, UnknownOutcomeError

    node = _SilentLeader()
    client = RaftClient(lambda: {1: node}, RaftConfig(request_timeout=0.3))
    try:
        with pytest.raises(UnknownOutcomeError):
            client.submit(put("x", 1))
        assert node.calls >= 2  # the session opening, then the write (maybe more attempts)
    finally:
        client.close()
    other = RaftClient(lambda: {1: _SilentLeader()}, RaftConfig(request_timeout=0.3))  # a channel of its own
    try:
        with pytest.raises(UnknownOutcomeError):
            other.submit_async(put("y", 2)).result(timeout=5)
    finally:
        other.close()
