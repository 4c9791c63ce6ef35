"""Client sessions: each write applied once, a bounded session table, and sessions in snapshots."""

from __future__ import annotations

from raft_actors import Counter, RaftConfig, SessionExpiredError
from raft_actors.applier import Applier
from raft_actors.core import Entry
from raft_actors.envelope import OPEN_SESSION_CALL, dumps, encode_values, request_call


class Log:
    """Feeds an applier entries with consecutive indexes, one client call each."""

    def __init__(self, applier: Applier):
        self.applier = applier

    def _next(self, data: bytes):
        return self.applier.apply(Entry(1, self.applier.applied_index + 1, data)).outcomes()

    def open(self) -> int:
        (out,) = self._next(OPEN_SESSION_CALL)
        assert out.ok
        return out.value

    def apply(self, session: int, seq: int, command: tuple):
        (out,) = self._next(request_call(session, seq, seq, command))
        return out


def test_a_session_is_opened_through_the_log_and_its_id_names_its_entry() -> None:
    log = Log(Applier(Counter()))
    a = log.open()
    log.apply(a, 1, ("add", 1))
    b = log.open()
    assert (a >> 16, b >> 16) == (1, 3) and list(log.applier.sessions) == [a, b]


def test_one_entry_carries_a_whole_call_of_several_sessions_in_order() -> None:
    log = Log(Applier(Counter()))
    a, b = log.open(), log.open()
    call = dumps([(a, 1, 1, 2, encode_values([("add", 1), ("add", 2)])), (b, 1, 1, 1, encode_values([("add", 10)])),
                  (a, 3, 1, 1, encode_values([("set", 0)]))])
    outs = log._next(call)
    assert [o.value for o in outs] == [1, 3, 13, 0]
    assert [o.value for o in log._next(call)] == [1, 3, 13, 0]  # the whole call again: each applied once
    assert log.applier.sm.value == 0 and log.applier.applied_commands == 4


def test_a_retried_write_returns_the_first_result_without_running_again() -> None:
    log = Log(Applier(Counter()))
    s = log.open()
    assert log.apply(s, 1, ("add", 5)).value == 5
    assert log.apply(s, 1, ("add", 5)).value == 5
    assert log.applier.sm.value == 5


def test_a_write_in_an_unknown_session_is_refused_not_applied() -> None:
    log = Log(Applier(Counter()))
    out = log.apply(42, 1, ("add", 5))
    assert not out.ok and isinstance(out.value, SessionExpiredError)
    assert log.applier.sm.value == 0


def test_least_recently_used_session_expires_and_its_retry_is_refused() -> None:
    log = Log(Applier(Counter(), max_sessions=2))
    s1, s2 = log.open(), log.open()
    log.apply(s1, 1, ("add", 1))
    log.apply(s2, 1, ("add", 10))
    log.apply(s1, 2, ("add", 1))  # session 1 used again: session 2 is now the oldest
    s3 = log.open()  # a third session: session 2 expires
    assert list(log.applier.sessions) == [s1, s3]
    out = log.apply(s2, 1, ("add", 10))  # a retry of a write whose result is forgotten
    assert not out.ok and isinstance(out.value, SessionExpiredError)
    assert log.applier.sm.value == 12  # not applied a second time


def test_sessions_travel_in_snapshots_in_their_order() -> None:
    a = Applier(Counter(), max_sessions=3)
    log = Log(a)
    s = [log.open() for _ in range(3)]
    for k, sid in enumerate(s):
        log.apply(sid, 1, ("add", k + 1))
    log.apply(s[0], 2, ("add", 1))
    b = Applier(Counter(), max_sessions=3)
    b.restore(b"".join(a.snapshot()), a.applied_index)
    assert list(b.sessions) == list(a.sessions) == [s[1], s[2], s[0]]
    assert b.sm.value == a.sm.value == 7
    # both expire the same session next, and both refuse the same duplicate
    for applier in (a, b):
        lg = Log(applier)
        lg.open()
        assert s[1] not in applier.sessions
        assert lg.apply(s[0], 2, ("add", 1)).value == 7  # remembered result
        assert isinstance(lg.apply(s[1], 1, ("add", 2)).value, SessionExpiredError)


def test_clients_whose_sessions_expire_open_new_ones_and_nothing_is_applied_twice(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, state_machine=Counter, config=RaftConfig(max_sessions=2))
    clients = [cluster.client() for _ in range(4)]  # more clients than sessions kept
    first_ids = []
    for rnd in range(5):
        for c in clients:
            c.submit(("add", 1))
            if rnd == 0:
                first_ids.append(c.client_id)
    assert clients[0].query(("get",)) == 20  # every write applied exactly once
    assert [c.client_id for c in clients] != first_ids  # some had to open new sessions


def test_retries_of_parts_of_a_part_and_twins_in_one_entry_are_applied_once() -> None:
    log = Log(Applier(Counter()))
    s = log.open()
    # a part of seqs 1..4, then a retry of seqs 2 and 4 alone (named one by one), then 5
    assert [o.value for o in log._next(dumps([(s, 1, 1, 4, encode_values([("add", 1)] * 4))]))] == [1, 2, 3, 4]
    assert [o.value for o in log._next(dumps([(s, (2, 4), 1, 2, encode_values([("add", 1)] * 2))]))] == [2, 4]
    # the same part twice in one entry (a retry that caught up with its first copy): once
    twice = (s, 5, 1, 2, encode_values([("add", 10), ("add", 10)]))
    assert [o.value for o in log._next(dumps([twice, twice]))] == [14, 24, 14, 24]
    assert log.applier.sm.value == 24 and log.applier.applied_commands == 6
    # acknowledged results go, whole runs at a time; a retry below the acknowledgement is refused
    log._next(dumps([(s, 7, 7, 1, encode_values([("add", 1)]))]))
    session = log.applier.sessions[s]
    assert session.floor == 7 and [first for first, _, _ in session.runs] == [7]
    (out,) = log._next(request_call(s, 3, 3, ("add", 1)))
    assert not out.ok and type(out.value).__name__ == "UnknownOutcomeError"
    # the same in a copy restored from a snapshot
    copy = Applier(Counter())
    copy.restore(b"".join(log.applier.snapshot()), log.applier.applied_index)
    assert [o.value for o in Log(copy)._next(request_call(s, 7, 7, ("add", 1)))] == [25]  # its result, not applied
    assert [o.value for o in Log(copy)._next(request_call(s, 8, 8, ("add", 1)))] == [26]  # new: applied
