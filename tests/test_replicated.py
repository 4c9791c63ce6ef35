"""Replicated actors (raft_actors.replicated): a class behind a Ray-style handle.

Decoration-time refusals need no Ray; the rest runs on a local Ray: writes and reads at each
consistency, exceptions, refs with ray.get / await / wait / tasks, a leader killed mid-stream
(each call applied once, in order), handles passed to tasks and found by name, snapshots, and
the same class in the simulator and the Jepsen-style suite.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import random
import threading
import time

import pytest
import ray

import raft_actors
from raft_actors import CommandError, RaftConfig, RaftRef
from raft_actors.linearizability import UNKNOWN, Model, check
from raft_actors.replicated import ReplicatedState

from .conftest import wait_until

replicated_module = importlib.import_module("raft_actors.replicated")  # (raft_actors.replicated is the decorator)


@raft_actors.replicated
class Bank:
    def __init__(self, fee: int = 0) -> None:
        self.fee, self.accounts = fee, {}

    def deposit(self, who: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError(f"amount must be positive, got {amount}")
        self.accounts[who] = self.accounts.get(who, 0) + amount - self.fee
        return self.accounts[who]

    def leak(self) -> object:
        return ray.put(1)  # an ObjectRef as a result: refused

    def stop(self) -> None:
        raise StopIteration  # an exception an asyncio future refuses

    @raft_actors.read
    def balance(self, who: str) -> int:
        return self.accounts.get(who, 0)

    @raft_actors.read
    def total(self) -> int:
        return sum(self.accounts.values())

    def _private(self) -> None:
        pass


@raft_actors.replicated(num_replicas=3)
class Tally:
    """A counter with its own snapshot format (counts how often it was restored)."""

    def __init__(self) -> None:
        self.n = 0
        self.restored = 0

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    @raft_actors.read
    def value(self) -> tuple[int, int]:
        return self.n, self.restored

    def __raft_snapshot__(self) -> bytes:
        return str(self.n).encode()

    def __raft_restore__(self, data: bytes) -> None:
        self.n = int(data)
        self.restored = getattr(self, "restored", 0) + 1


# ---------------------------------------------------------------------------- without Ray


def test_what_cannot_be_replicated_is_refused_when_the_class_is_decorated() -> None:
    class Async:
        async def go(self) -> None: ...

    class Gen:
        def items(self):
            yield 1

    class Refs:
        def ref(self) -> ray.ObjectRef: ...

    for cls, word in ((Async, "async"), (Gen, "generator"), (Refs, "ObjectRef")):
        with pytest.raises(TypeError, match=word):
            raft_actors.replicated(cls)
    with pytest.raises(TypeError, match="takes a class"):
        raft_actors.replicated(len)
    with pytest.raises(TypeError, match="unknown option"):
        Bank.options(replicas=3)
    with pytest.raises(ValueError, match="consistency"):
        Bank.options(consistency="eventual")
    with pytest.raises(TypeError, match=r"Bank\.remote"):
        Bank()


def test_the_state_machine_applies_writes_answers_reads_and_keeps_them_apart() -> None:
    sm = Bank.state_machine(fee=1)()
    assert sm.apply(("deposit", ("ann", 10), {})) == 9
    assert sm.query(("balance", ("ann",), {})) == 9
    with pytest.raises(ValueError, match="is a read"):
        sm.validate(("balance", ("ann",), {}))
    with pytest.raises(ValueError, match="is a write"):
        sm.query(("deposit", ("ann", 1), {}))
    with pytest.raises(AttributeError, match="no replicated method '_private'"):
        sm.validate(("_private", (), {}))
    with pytest.raises(ValueError, match=r"\(method, args, kwargs\)"):
        sm.validate(("deposit", "ann"))
    copy = Bank.state_machine()()
    copy.restore(sm.snapshot())
    assert copy.query(("balance", ("ann",), {})) == 9 and copy.obj.fee == 1
    t = Tally.state_machine()()
    t.apply(("incr", (5,), {}))
    t2 = Tally.state_machine()()
    t2.restore(t.snapshot())  # the class's own format, restored on an instance made without __init__
    assert t2.query(("value", (), {})) == (5, 1)


# ---------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def bank(ray_session: None, tmp_path_factory):
    handle = Bank.options(name="test-bank", data_dir=str(tmp_path_factory.mktemp("bank"))).remote(fee=1)
    yield handle
    handle.cluster.shutdown(delete_data=True)


def test_writes_and_reads_at_each_consistency(bank) -> None:
    assert ray.get(bank.deposit.remote("ann", 10)) == 9
    assert ray.get(bank.balance.remote("ann")) == 9  # linearizable: sees the write at once
    assert ray.get(bank.balance.options(consistency="follower").remote("ann")) == 9  # linearizable too
    stale = bank.balance.options(consistency="stale")
    wait_until(lambda: ray.get(stale.remote("ann")) == 9, what="a stale read to catch up")
    with pytest.raises(ValueError, match="write"):
        bank.deposit.options(consistency="stale")
    with pytest.raises(AttributeError, match="no method 'withdraw'"):
        bank.withdraw.remote("ann", 1)
    with pytest.raises(AttributeError, match="_private"):
        bank._private.remote()


def test_one_handles_calls_apply_in_the_order_made_through_ray_get_await_and_futures(bank) -> None:
    refs = [bank.deposit.remote("bob", 2) for _ in range(200)]  # fee 1: +1 each
    assert isinstance(refs[0], RaftRef)
    assert ray.get(refs) == list(range(1, 201))  # a list of refs, as for ObjectRefs

    async def many() -> list[int]:
        return await asyncio.gather(*(bank.deposit.remote("bob", 2) for _ in range(300)))

    assert asyncio.run(many()) == list(range(201, 501))
    assert bank.deposit.remote("bob", 2).future().result(timeout=30) == 501
    assert raft_actors.get(bank.balance.remote("bob"), timeout=30) == 501


def test_a_methods_exception_reaches_the_caller_as_itself_and_the_actor_lives_on(bank) -> None:
    before = ray.get(bank.total.remote())
    ref = bank.deposit.remote("ann", -5)
    with pytest.raises(ValueError, match="must be positive") as info:
        ray.get(ref)
    assert any("raised in the replicated actor" in note for note in info.value.__notes__)
    with pytest.raises(ValueError):  # the same error again, and through await
        asyncio.run(_await(ref))
    with pytest.raises(TypeError, match="returned an ObjectRef"):
        ray.get(bank.leak.remote())
    assert ray.get(bank.total.remote()) == before  # nothing changed
    assert ray.get(bank.deposit.remote("ann", 2)) == ray.get(bank.balance.remote("ann"))


async def _await(ref: RaftRef):
    return await ref


def test_wait_mixes_raft_refs_and_object_refs_and_object_ref_feeds_a_task(bank) -> None:
    @ray.remote
    def double(x: int) -> int:
        return 2 * x

    slow = double.remote(1)
    refs = [bank.deposit.remote("cat", 3) for _ in range(5)] + [slow]
    ready, pending = raft_actors.wait(refs, num_returns=len(refs), timeout=60)
    assert len(ready) == 6 and not pending
    assert raft_actors.get(ready) == [2, 4, 6, 8, 10, 2]
    never = RaftRef()  # a ref no call will ever settle
    assert raft_actors.wait([never], timeout=0.05) == ([], [never])
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(never, timeout=0.05)
    assert ray.get(double.remote(bank.balance.remote("cat").object_ref())) == 20  # Ray resolves it


def test_a_handle_passed_to_a_task_reconnects_by_name_and_refs_reach_tasks(bank) -> None:
    @ray.remote
    def pay(handle, amount, nested) -> int:  # another process: the handle finds the cluster by its name
        (ref,) = nested  # a RaftRef inside a list travels resolved
        return ray.get(handle.deposit.remote("dan", amount + ray.get(ref)))

    before = ray.get(bank.balance.remote("ann"))
    got = ray.get(pay.remote(bank, bank.balance.remote("ann").object_ref(), [bank.balance.remote("ann")]))
    assert got == 2 * before - 1  # fee 1
    with pytest.raises(TypeError):  # Ray itself refuses a RaftRef as a top-level argument
        pay.remote(bank, bank.balance.remote("ann"), [])
    again = raft_actors.get_replicated("test-bank")  # found by name from this driver too
    assert again.cls is Bank.cls and ray.get(again.balance.remote("dan")) == got


def test_calls_made_back_to_back_travel_together_and_a_read_sees_the_writes_made_before_it(bank) -> None:
    ch = bank.cluster.channel
    calls = ch.calls
    refs = [bank.deposit.remote("eve", 2) for _ in range(1000)]  # not waited for
    assert ray.get(bank.balance.remote("eve")) == 1000  # the read waits for the writes before it
    assert ray.get(refs) == list(range(1, 1001))
    assert ch.calls - calls < 50  # runs of up to client_batch (512) calls, not a Ray call each

    async def coroutines() -> int:
        before = ch.calls
        await asyncio.gather(*(bank.deposit.remote("eve", 2) for _ in range(200)))
        return ch.calls - before

    assert asyncio.run(coroutines()) < 20  # one turn of the loop: one run


def test_calls_nobody_waits_for_are_sent_anyway_and_a_bad_argument_fails_alone(bank) -> None:
    for _ in range(3):
        bank.deposit.remote("fay", 2)  # fire and forget
    probe = bank.cluster.client()
    wait_until(lambda: probe.query(("balance", ("fay",))) == 3, timeout=30, what="unawaited calls to be sent")
    refs = [bank.deposit.remote("gus", 2), bank.deposit.remote("gus", threading.Lock()), bank.deposit.remote("gus", 2)]
    assert ray.get(refs[0]) == 1 and ray.get(refs[2]) == 2
    with pytest.raises(raft_actors.CommandRejectedError):  # it could not be pickled: never sent
        ray.get(refs[1])


def test_a_call_made_in_a_coroutine_leaves_when_the_loops_turn_ends(bank, monkeypatch) -> None:
    monkeypatch.setattr(replicated_module, "FLUSH_AFTER", 60.0)  # not the timer: the turn's end

    async def fire_and_forget() -> None:
        bank.deposit.remote("nia", 2)  # never awaited
        await asyncio.sleep(0.05)

    asyncio.run(fire_and_forget())
    probe = bank.cluster.client()
    wait_until(lambda: probe.query(("balance", ("nia",))) == 1, timeout=30, what="the call to be sent")


def test_a_call_made_in_a_loop_whose_turn_does_not_end_is_sent_anyway(bank) -> None:
    probe = bank.cluster.client()

    async def blocking() -> bool:
        bank.deposit.remote("oz", 2)  # never awaited, and the loop is blocked below
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if probe.query(("balance", ("oz",))) == 1:
                return True
            time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop on purpose: this turn does not end
        return False

    assert asyncio.run(blocking())


def test_map_calls_a_method_per_set_of_arguments_in_order_through_one_ref(bank) -> None:
    ch = bank.cluster.channel
    calls = ch.calls
    ref = bank.deposit.map(["hal"] * 1500, itertools.repeat(2))  # as Executor.map: up to the shortest
    assert isinstance(ref, RaftRef)
    assert ray.get(ref) == list(range(1, 1501))  # fee 1: +1 each, applied once, in order
    assert ch.calls - calls < 20  # runs of client_batch (512) calls, as submit_many sends them
    assert ray.get(bank.balance.map(["hal", "nobody"])) == [1500, 0]  # reads too
    refs = [bank.deposit.remote("ivy", 2) for _ in range(3)]  # queued: they leave before the map
    many = bank.deposit.map(["ivy"] * 600, itertools.repeat(2))  # two runs, not waited for
    assert ray.get(bank.balance.remote("ivy")) == 603  # a read made at once sees every write before it
    assert ray.get(refs) == [1, 2, 3]
    assert asyncio.run(_await(many)) == list(range(4, 604))
    assert asyncio.run(_await(bank.deposit.map(["ivy"], [2]))) == [604]  # one call: sent as it is
    assert ray.get(bank.balance.options(consistency="follower").map(["ivy"])) == [604]
    assert ray.get(bank.deposit.map([], [])) == []
    with pytest.raises(TypeError, match="at least one iterable"):
        bank.deposit.map()


def test_a_maps_exceptions_are_raised_first_by_position_or_returned_in_place(bank) -> None:
    with pytest.raises(ValueError, match="got -1"):  # the first that raised, once all have ended
        ray.get(bank.deposit.map(["jo"] * 3, [2, -1, -2]))
    assert ray.get(bank.balance.remote("jo")) == 1  # the others were applied (or refused) as made
    out = ray.get(bank.deposit.map(["jo"] * 3, [2, -1, threading.Lock()], return_exceptions=True))
    assert out[0] == 2
    assert isinstance(out[1], ValueError)  # the method's own exception
    assert isinstance(out[2], raft_actors.CommandRejectedError)  # could not be pickled: never sent
    assert ray.get(bank.balance.remote("jo")) == 2


def test_a_get_with_a_timeout_returns_by_it_while_the_leader_does_not_answer(ray_session, tmp_path) -> None:
    """Regression: a lone call someone waits for is awaited on the caller's own thread; with a
    timeout given to ray.get, that wait ignored it (up to the longest election timeout, 2.4 s
    here) before the timeout was applied."""
    config = RaftConfig(election_ticks=40)  # the longest election timeout: 2.4 s
    tally = Tally.options(data_dir=str(tmp_path), config=config).remote()
    try:
        cluster = tally.cluster
        assert ray.get(tally.incr.remote()) == 1
        leader = cluster.leader()
        cluster.pause(leader)
        try:
            ref = tally.incr.remote()
            t0 = time.monotonic()
            with pytest.raises(ray.exceptions.GetTimeoutError):
                ray.get(ref, timeout=0.3)
            assert time.monotonic() - t0 < 1.8  # by the timeout (0.3 s), not the election timeout (2.4 s)
        finally:
            cluster.resume(leader)
        assert ray.get(ref) == 2  # the call itself went on
    finally:
        tally.cluster.shutdown(delete_data=True)


def test_a_call_another_thread_waits_for_still_applies_before_its_makers_next_call(ray_session, tmp_path,
                                                                                    monkeypatch) -> None:
    """Regression: a thread waiting for a call another thread made sent it itself, outside the
    handle's lock; the maker's next call, waited for at once, could be numbered first in the
    session and applied before it."""
    tally = Tally.options(data_dir=str(tmp_path)).remote()
    try:
        monkeypatch.setattr(replicated_module, "FLUSH_AFTER", 60.0)  # only a wait sends the call, not the timer
        outbox = tally._outbox
        dispatch = type(outbox)._dispatch
        maker_done = threading.Event()

        def held(self, sink, blocking=False):  # a thread sending what it took on its own is slow to
            if blocking and getattr(sink, "ref", None) is first:
                maker_done.wait(5)
            return dispatch(self, sink, blocking)

        monkeypatch.setattr(type(outbox), "_dispatch", held)
        first = tally.incr.remote()
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(ray.get(first)))
        waiter.start()
        wait_until(lambda: not outbox._queued, what="the other thread to take the call")
        second = ray.get(tally.incr.remote())  # this thread's next call
        maker_done.set()
        waiter.join(30)
        assert got == [1] and second == 2  # in the order this thread made them
    finally:
        tally.cluster.shutdown(delete_data=True)


def test_a_read_waits_for_a_write_another_thread_waits_for_on_its_own(ray_session, tmp_path, monkeypatch) -> None:
    """A lone call its maker waits for leaves on the maker's thread, with a sink of its own; a
    read made through the handle meanwhile (here by another thread) still leaves only once that
    write has its result, so it sees it."""
    tally = Tally.options(data_dir=str(tmp_path)).remote()
    try:
        monkeypatch.setattr(replicated_module, "FLUSH_AFTER", 60.0)  # only the writer's wait sends its call
        ch = tally._channel
        write = ch.write
        entered, release = threading.Event(), threading.Event()

        def held(session, commands, sink, timeout, blocking=False, blob=None):  # the write is slow to leave
            if blocking:
                entered.set()
                release.wait(10)
            return write(session, commands, sink, timeout, blocking=blocking, blob=blob)

        monkeypatch.setattr(ch, "write", held)
        got: dict[str, object] = {}
        writer = threading.Thread(target=lambda: got.setdefault("write", ray.get(tally.incr.remote())))
        writer.start()
        assert entered.wait(10)
        reader = threading.Thread(target=lambda: got.setdefault("read", ray.get(tally.value.remote())))
        reader.start()
        reader.join(0.3)
        assert "read" not in got  # it waits for the write made before it
        release.set()
        writer.join(30)
        reader.join(30)
        assert got == {"write": 1, "read": (1, 0)}
    finally:
        tally.cluster.shutdown(delete_data=True)


def test_a_refs_future_cancelled_by_its_caller_does_not_stop_the_handle(bank, monkeypatch) -> None:
    """Regression: a ref's ``future()`` cancelled before the result came made setting the
    result raise on the thread handing results out: the callbacks after it (a read waiting for
    that write) were skipped and the channel's write lane was left in flight for good."""
    ch = bank._channel
    held: list = []
    monkeypatch.setattr(ch, "write", lambda *args, **kwargs: held.append((args, kwargs)))
    fut = bank.deposit.remote("kim", 2).future()  # its call is held until the future is cancelled
    assert fut.cancel()
    monkeypatch.undo()
    [(args, kwargs)] = held
    ch.write(*args, **kwargs)
    assert ray.get(bank.deposit.remote("kim", 2), timeout=30) == 2  # fee 1: the cancelled one was applied
    assert ray.get(bank.balance.remote("kim"), timeout=30) == 2


def test_coroutines_awaiting_one_ref_each_get_its_result_or_its_exception(bank) -> None:
    async def run():
        ref, bad = bank.deposit.remote("lu", 3), bank.deposit.remote("lu", -1)
        got = await asyncio.gather(*(_await(r) for r in (ref, ref, ref, bad, bad)), return_exceptions=True)
        return got, await ref  # and once more, after it is in

    got, again = asyncio.run(run())
    assert got[:3] == [2, 2, 2] and again == 2  # fee 1
    assert all(isinstance(e, ValueError) for e in got[3:])


def test_a_method_raising_stop_iteration_fails_its_coroutine_alone(bank) -> None:
    """Regression: an asyncio future refuses StopIteration; setting it raised, and the
    coroutines handed their results after it, in the same hand-over, were never resolved."""
    async def run():
        refs = [bank.deposit.remote("mo", 2), bank.stop.remote(), bank.deposit.remote("mo", 2)]
        return await asyncio.wait_for(asyncio.gather(*(_await(r) for r in refs), return_exceptions=True), 30)

    first, stopped, last = asyncio.run(run())
    assert (first, last) == (1, 2)  # fee 1
    assert isinstance(stopped, RuntimeError) and isinstance(stopped.__cause__, StopIteration)
    with pytest.raises(StopIteration):  # outside a coroutine, as the method raised it
        ray.get(bank.stop.remote())


def test_a_plain_cluster_is_not_taken_for_a_replicated_actor(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=1, name="test-plain-kv")
    with pytest.raises(TypeError, match="does not run a replicated class"):
        raft_actors.get_replicated(cluster.name)


def test_a_leader_killed_mid_stream_loses_no_call_and_applies_each_once_in_order(ray_session, tmp_path) -> None:
    tally = Tally.options(data_dir=str(tmp_path), config=RaftConfig(snapshot_commands=100, keep_bytes=0)).remote()
    try:
        cluster = tally.cluster
        refs = [tally.incr.remote() for _ in range(300)]
        ray.get(refs[:10])
        many = tally.incr.map([1] * 1000)  # in flight when the leader dies too
        cluster.kill(cluster.leader())  # abruptly, with calls in flight and queued
        refs += [tally.incr.remote() for _ in range(300)]
        assert ray.get(many) == list(range(301, 1301))  # each applied once, in the order made
        assert ray.get(refs) == list(range(1, 301)) + list(range(1301, 1601))
        assert ray.get(tally.value.remote())[0] == 1600
        st = cluster.status()
        assert (st["snapshot_index"].dropna() > 0).any()  # snapshots in the class's own format
    finally:
        tally.cluster.shutdown(delete_data=True)


# ---------------------------------------------------------------------------- simulator, Jepsen


def _bank_op(rng: random.Random, client: int, n: int) -> tuple[str, tuple]:
    if rng.random() < 0.4:
        return "read", ("total", (), {})
    return "write", ("deposit", (rng.choice("ab"), rng.randint(1, 4)), {})


def _bank_step(total: int, op: tuple, out: object) -> tuple[bool, int]:
    name, args, _ = op
    if name == "deposit":
        new = total + args[1]
        return out is UNKNOWN or isinstance(out, int), new
    return out is UNKNOWN or out == total, total


BANK_MODEL = Model(init=lambda: 0, step=_bank_step)


def test_a_replicated_class_runs_in_the_simulator() -> None:
    from raft_actors.sim import Faults, Simulator

    sm = Bank.state_machine()
    assert isinstance(sm(), ReplicatedState)
    for seed in (1, 2):
        result = Simulator(seed, state_machine=sm, workload=_bank_op, faults=Faults.chaos()).run()
        assert result.ok, result.describe()
        assert check(result.history, BANK_MODEL, timeout=60).ok


def test_a_replicated_class_under_a_jepsen_nemesis_is_linearizable(ray_session) -> None:
    from raft_actors.jepsen import JepsenTest, Workload, run

    wl = Workload("bank", Bank.state_machine(), BANK_MODEL, _bank_op, final_reads=[("total", (), {})])
    result = run(JepsenTest(nodes=3, clients=4, duration=6.0, nemeses=("kill",), workload=wl, seed=2,
                            interval=(0.5, 1.0), op_timeout=3.0))
    assert result.verdict == "linearizable", result.check.describe() if result.check else result.stats
    assert result.counts().set_index("kind").loc["write", "ok"] > 10


def test_command_errors_stay_command_errors_for_plain_clients(bank) -> None:
    """The cluster behind a handle is a Raft cluster like any: its own clients send the calls
    as ``(method, args, kwargs)`` and get the usual CommandError."""
    client = bank.cluster.client()
    with pytest.raises(CommandError) as info:
        client.submit(("deposit", ("eve", 0), {}))
    assert isinstance(info.value.cause, ValueError)
    with pytest.raises(raft_actors.CommandRejectedError):
        client.submit(("balance", ("eve",), {}))  # a read sent as a write: refused before the log
