"""The client's rules without I/O (raft_actors.session): what an answer means for each request,
sessions and acknowledgements, deadlines, and which node to ask. The Ray client and the
simulator both run these rules; here they are checked one by one."""

from __future__ import annotations

from raft_actors import (
    CommandError,
    LeadershipLostError,
    NotLeaderError,
    RaftTimeoutError,
    SessionExpiredError,
    UnknownOutcomeError,
)
from raft_actors.session import (
    FOLLOWER,
    LINEARIZABLE,
    READ,
    STALE,
    WRITE,
    Request,
    Router,
    Session,
    backoff,
    expire,
    new_leader,
    settle,
    unreachable,
)


class Sink:
    def __init__(self) -> None:
        self.values: dict[int, object] = {}
        self.errors: dict[int, BaseException] = {}

    def put(self, positions, values) -> None:
        for p, v in zip(positions, values):
            self.values[p] = v

    def put_error(self, position, exc) -> None:
        self.errors[position] = exc


def write(n: int = 3, session: Session | None = None) -> tuple[Request, Sink, Session]:
    s = session or Session()
    s.client_id = 7
    sink = Sink()
    r = Request(WRITE, [f"c{i}" for i in range(n)], sink, deadline=100.0, session=s)
    s.number(r)
    r.cid = 7
    return r, sink, s


def test_an_answer_with_every_value_ends_the_request() -> None:
    r, sink, _ = write()
    st = settle(r, ["a", "b", "c"], {})
    assert sink.values == {0: "a", 1: "b", 2: "c"} and st.again is None and st.reopen is None


def test_not_the_leader_is_retried_and_says_nothing_about_the_outcome() -> None:
    r, sink, _ = write()
    st = settle(r, [None] * 3, dict.fromkeys(range(3), NotLeaderError(2)))
    assert st.again is r and st.hint == 2 and not r.maybe_applied and not sink.errors


def test_leadership_lost_or_a_node_timeout_means_the_write_may_have_been_applied() -> None:
    for exc in (LeadershipLostError(0), RaftTimeoutError("no read index")):
        r, _, _ = write(1)
        st = settle(r, [None], {0: exc})
        assert st.again is r and r.maybe_applied
    r, _, _ = write(1)
    unreachable(r)
    assert r.maybe_applied


def test_a_partial_answer_ends_what_it_can_and_retries_the_rest_with_their_own_numbers() -> None:
    r, sink, _ = write(4)
    boom = CommandError("ValueError", "no")
    st = settle(r, [1, None, None, 4], {1: boom, 2: NotLeaderError(3)})
    assert sink.values == {0: 1, 3: 4} and sink.errors == {1: boom}
    rest = st.again
    assert rest is not None and rest is not r
    assert rest.items == ["c2"] and list(rest.positions) == [2] and list(rest.seqs) == [r.seqs[2]]
    assert rest.sink is sink and rest.deadline == r.deadline


def test_an_expired_session_is_reopened_only_for_writes_never_sent_before() -> None:
    r, sink, s = write(2)
    st = settle(r, [None] * 2, dict.fromkeys(range(2), SessionExpiredError("gone")))
    assert st.reopen is r and st.expired and not sink.errors
    s.lost(r)
    assert not s.is_open and r.seqs == ()  # renumbered in the new session
    # a write that may have been applied cannot be sent again in a new session: unknown
    r2, sink2, s2 = write(1)
    r2.maybe_applied = True
    st2 = settle(r2, [None], {0: SessionExpiredError("gone")})
    assert st2.reopen is None and isinstance(sink2.errors[0], SessionExpiredError)
    s2.forget(999)
    assert s2.is_open  # another session id expired: not this one
    s2.forget(7)
    assert not s2.is_open


def test_a_deadline_gives_unknown_only_when_the_write_may_have_been_applied() -> None:
    r, sink, _ = write(1)
    expire(r)
    assert isinstance(sink.errors[0], RaftTimeoutError) and not isinstance(sink.errors[0], UnknownOutcomeError)
    for flag in ("in_flight", "maybe_applied"):
        r, sink, _ = write(1)
        setattr(r, flag, True)
        expire(r)
        assert isinstance(sink.errors[0], UnknownOutcomeError)
    q = Request(READ, ["q"], Sink(), 1.0, mode=LINEARIZABLE)
    q.in_flight = True
    expire(q)
    assert not isinstance(q.sink.errors[0], UnknownOutcomeError)


def test_sequence_numbers_and_acknowledgements() -> None:
    s = Session()
    s.client_id = 1
    a, b, c = (Request(WRITE, ["x"] * n, Sink(), 9.0, s) for n in (2, 3, 1))
    for r in (a, b, c):
        s.number(r)
    assert (list(a.seqs), list(b.seqs), list(c.seqs)) == ([1, 2], [3, 4, 5], [6])
    assert s.ack() == 1
    s.finished(b)
    assert s.ack() == 1  # a is still outstanding
    s.finished(a)
    assert s.ack() == 6
    part = b.subset([2])
    s.track(part)  # a part of b goes on by itself
    assert s.ack() == 5
    s.finished(part)
    s.finished(c)
    assert s.ack() == s.next_seq == 7


def test_the_router_learns_the_leader_follows_hints_and_backs_off_when_they_bounce() -> None:
    r = Router(lambda nodes: nodes[0])
    nodes = [1, 2, 3]
    assert r.pick(nodes, None) == 1  # nobody known: any
    assert not r.redirected(1, 3, nodes, None) and r.leader == 3  # a hint: no wait
    assert r.pick(nodes, LINEARIZABLE) == 3
    assert r.redirected(3, 1, nodes, None)  # sent straight back: both are out of date, wait a little
    assert r.redirected(1, 0, nodes, None) and r.leader == 0  # no hint: wait
    r.answered(2, None)
    assert r.pick(nodes, None) == 2 and r.pick(nodes, FOLLOWER) in (1, 3) and r.pick(nodes, STALE) == 1
    r.lost(2, died=True)
    assert r.leader == 0 and r.pick(nodes, None) != 2
    assert not r.all_dead(nodes)
    r.lost(1, died=True)
    r.lost(3, died=True)
    assert r.all_dead(nodes)


def test_a_silent_node_is_avoided_until_it_answers_or_is_named_leader() -> None:
    r = Router(lambda nodes: nodes[0])
    nodes = [1, 2, 3]
    r.answered(1, None)
    r.lost(1, died=False)  # the leader went silent (paused, cut off): not dead, but ask others
    assert r.leader == 0 and r.pick(nodes, None) == 2 and r.pick(nodes, STALE) == 2
    assert not r.all_dead(nodes)
    r.lost(2, died=False)
    r.lost(3, died=False)
    assert r.pick(nodes, None) == 1  # all silent: any of them rather than none
    r.silent.clear()
    r.lost(1, died=False)
    assert not r.redirected(2, 1, nodes, None) and r.pick(nodes, None) == 1  # named leader: asked again
    r.lost(3, died=False)
    r.answered(3, FOLLOWER)
    assert 3 not in r.silent  # it answered


def test_a_silent_leader_is_replaced_only_by_a_newer_leader_the_others_name() -> None:
    assert new_leader(1, [(5, 2), (5, 2)]) == 2  # both others follow node 2 now
    assert new_leader(1, [(4, 1), (4, 1)]) == 0  # still node 1: it is only slow
    assert new_leader(1, [(4, 1), (5, 0)]) == 0  # an election is on, no leader yet: wait
    assert new_leader(1, [(4, 3), (6, 1)]) == 0  # a stale hint loses to a newer term naming node 1
    assert new_leader(1, [(7, 3), (6, 1)]) == 3
    assert new_leader(1, [(7, 0), (7, 3)]) == 3  # a node that knows the leader beats one that does not
    assert new_leader(1, []) == 0


def test_backoff_grows_to_a_bound() -> None:
    assert backoff(1, 1.0) < backoff(3, 1.0) <= backoff(10_000, 1.0) == backoff(20, 1.0)
    assert backoff(5, 0.0) == 0.0
