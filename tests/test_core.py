"""Unit tests of the pure Raft core (:mod:`raft_actors.core`), rule by rule.

The rules are those of Figure 2 and §5 of the Raft paper plus the etcd-style extensions the
core implements (pre-vote, check-quorum and leader stickiness, fast log backtracking, flow
control, ReadIndex, leadership transfer, nodes that lost their storage). Most tests drive a single core
with hand-built messages and look at what comes out of ``ready()``; a few run a tiny in-test
network (:class:`core_helpers.Net`).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft_actors.core import (
    NONE,
    TRANSFER,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProgressState,
    ProposalDropped,
    RaftCore,
    ReadState,
    Role,
)
from raft_actors.core.raft import LOST_STATE
from tests.core_helpers import ET, Net, ack, cluster, config, core, drain, elect, ents, leader, of, terms_of, tick_until

M = MsgType


def msg(type: MsgType, to: int, frm: int, term: int, **kw) -> Message:
    return Message(type, to, frm, term, **kw)


def heartbeat(c: RaftCore, frm: int, term: int | None = None, commit: int = 0, context=None) -> None:
    c.step(msg(M.HEARTBEAT, c.id, frm, c.term if term is None else term, commit=commit, context=context))


def append(c: RaftCore, frm: int, prev: int, prev_term: int, entries=(), commit: int = 0, term: int | None = None):
    c.step(msg(M.APPEND, c.id, frm, c.term if term is None else term, log_term=prev_term, index=prev,
               entries=list(entries), commit=commit))


# ====================================================================== rules for all servers


@pytest.mark.parametrize("kind", [M.APPEND, M.HEARTBEAT])
def test_higher_term_append_makes_follower_of_sender_and_clears_vote(kind):
    c = core(terms=[1, 1], term=3, vote=2)
    drain(c)
    c.step(msg(kind, 1, 3, 5, log_term=1, index=2))
    assert (c.role, c.term, c.vote, c.lead) == (Role.FOLLOWER, 5, NONE, 3)
    assert drain(c).hard_state == HardState(5, NONE, 0)


@pytest.mark.parametrize("kind", [M.APPEND_RESP, M.HEARTBEAT_RESP, M.VOTE_RESP, M.READ_INDEX_RESP])
def test_leader_seeing_higher_term_steps_down_to_follower_at_that_term(kind):
    c = leader(terms=[1])
    assert c.term == 2
    c.step(msg(kind, 1, 2, 7, reject=kind == M.VOTE_RESP))
    assert (c.role, c.term, c.vote, c.lead) == (Role.FOLLOWER, 7, NONE, NONE)
    assert drain(c).hard_state == HardState(7, NONE, 0)


def test_candidate_seeing_higher_term_vote_request_becomes_follower_at_that_term():
    c = core(terms=[1], pre_vote=False)
    tick_until(c, lambda x: x.role == Role.CANDIDATE)
    assert (c.term, c.vote) == (2, 1)
    drain(c)
    c.step(msg(M.VOTE, 1, 3, 4, log_term=1, index=1))
    assert (c.role, c.term) == (Role.FOLLOWER, 4)
    # the vote of term 2 is gone; the vote of term 4 went to the (up-to-date) requester
    assert c.vote == 3
    rd = drain(c)
    assert rd.hard_state == HardState(4, 3, 0)
    assert rd.messages == [msg(M.VOTE_RESP, 3, 1, 4)]


@pytest.mark.parametrize("kind", [M.APPEND, M.HEARTBEAT])
def test_stale_append_or_heartbeat_is_answered_with_current_term(kind):
    c = core(terms=[1, 1], term=5)
    heartbeat(c, 2)
    drain(c)
    c.tick()
    c.step(msg(kind, 1, 3, 4, log_term=1, index=2, entries=ents([4], start=3), commit=2))
    assert drain(c).messages == [msg(M.APPEND_RESP, 3, 1, 5)]
    # nothing else changed: same leader, same log, no commit, timer not reset
    assert (c.term, c.lead, c.log.last_index(), c.log.commit, c.election_elapsed) == (5, 2, 2, 0, 1)


def test_stale_leader_steps_down_when_told_the_newer_term():
    old = leader(terms=[1], caught_up=[2, 3])
    assert old.term == 2
    f = core(2, terms=[1], term=3)
    old.tick()
    hb = of(drain(old).messages, M.HEARTBEAT, to=2)
    assert len(hb) == 1
    f.step(hb[0])
    (resp,) = drain(f).messages
    assert (resp.type, resp.term) == (M.APPEND_RESP, 3)
    old.step(resp)
    assert (old.role, old.term, old.lead) == (Role.FOLLOWER, 3, NONE)


@pytest.mark.parametrize(
    "kind", [M.VOTE_RESP, M.PRE_VOTE_RESP, M.APPEND_RESP, M.HEARTBEAT_RESP, M.READ_INDEX,
             M.READ_INDEX_RESP, M.TIMEOUT_NOW]
)
def test_other_stale_messages_are_ignored(kind):
    c = core(terms=[1, 1], term=5)
    heartbeat(c, 2)
    drain(c)
    before = (c.role, c.term, c.vote, c.lead, c.log.commit, c.election_elapsed)
    c.step(msg(kind, 1, 3, 4, log_term=9, index=9, context="ctx"))
    rd = drain(c)
    assert rd.messages == [] and rd.read_states == [] and rd.dropped_reads == [] and rd.hard_state is None
    assert (c.role, c.term, c.vote, c.lead, c.log.commit, c.election_elapsed) == before


def test_stale_vote_is_rejected_with_current_term():
    """A candidate stuck in an old term learns ours (it may know no node that would tell it:
    a stale configuration), and nothing else changes here."""
    c = core(terms=[1, 1], term=5)
    heartbeat(c, 2)
    drain(c)
    before = (c.role, c.term, c.vote, c.lead, c.log.commit, c.election_elapsed)
    c.step(msg(M.VOTE, 1, 3, 4, log_term=9, index=9))
    (resp,) = drain(c).messages
    assert (resp.type, resp.to, resp.term, resp.reject) == (M.VOTE_RESP, 3, 5, True)
    assert (c.role, c.term, c.vote, c.lead, c.log.commit, c.election_elapsed) == before


def test_stale_pre_vote_is_rejected_with_current_term():
    c = core(terms=[1], term=5)
    c.step(msg(M.PRE_VOTE, 1, 3, 4, log_term=9, index=9))
    assert drain(c).messages == [msg(M.PRE_VOTE_RESP, 3, 1, 5, reject=True)]
    assert c.term == 5


def test_commit_never_moves_backward():
    c = core(terms=[1] * 5, commit=4)
    assert c.log.commit == 4
    heartbeat(c, 2, commit=2)
    append(c, 2, prev=4, prev_term=1, commit=1)
    append(c, 2, prev=5, prev_term=1, commit=3)
    append(c, 2, prev=1, prev_term=1, entries=ents([1], start=2), commit=2)
    assert c.log.commit == 4
    rd = drain(c)
    assert rd.hard_state in (None, HardState(1, NONE, 4))
    heartbeat(c, 2, commit=5)
    assert c.log.commit == 5
    heartbeat(c, 2, commit=3)
    assert c.log.commit == 5


def test_committed_entries_come_out_of_ready_once_in_index_order():
    c = core(terms=[], term=1)
    new = ents([1, 1, 1, 1, 1])
    append(c, 2, prev=0, prev_term=0, entries=new, commit=3)
    rd = drain(c)
    assert rd.entries == new
    assert rd.committed_entries == new[:3]
    assert rd.hard_state == HardState(1, NONE, 3)
    rd = drain(c)
    assert rd.committed_entries == [] and rd.entries == []
    heartbeat(c, 2, commit=5)
    assert drain(c).committed_entries == new[3:]
    heartbeat(c, 2, commit=5)
    assert drain(c).committed_entries == []


def test_restored_commit_is_applied_from_the_start():
    c = core(terms=[1, 1, 1], commit=2)
    assert drain(c).committed_entries == ents([1, 1])


# ====================================================================== RequestVote


def voter(**kw) -> RaftCore:
    c = core(1, (1, 2, 3, 4, 5), **kw)
    drain(c)
    return c


def test_vote_for_lower_term_candidate_is_not_granted():
    c = voter(terms=[1], term=5)
    c.step(msg(M.VOTE, 1, 2, 4, log_term=4, index=100))
    assert not [m for m in drain(c).messages if m.type == M.VOTE_RESP and not m.reject]
    assert (c.term, c.vote) == (5, NONE)


def test_vote_is_granted_at_most_once_per_term_but_repeated_to_the_same_candidate():
    c = voter(terms=[1, 1], term=2)
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=2))
    assert drain(c).messages == [msg(M.VOTE_RESP, 2, 1, 3)]
    assert (c.term, c.vote) == (3, 2)
    c.step(msg(M.VOTE, 1, 3, 3, log_term=1, index=2))
    assert drain(c).messages == [msg(M.VOTE_RESP, 3, 1, 3, reject=True)]
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=2))
    assert drain(c).messages == [msg(M.VOTE_RESP, 2, 1, 3)]
    assert c.vote == 2


def test_vote_survives_restart():
    c = voter(terms=[1, 1], term=3, vote=2)
    c.step(msg(M.VOTE, 1, 3, 3, log_term=1, index=2))
    assert drain(c).messages == [msg(M.VOTE_RESP, 3, 1, 3, reject=True)]


def test_follower_that_knows_the_leader_of_the_term_does_not_vote_in_it():
    c = voter(terms=[1, 1], term=3)
    heartbeat(c, 4)
    drain(c)
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=2))
    assert drain(c).messages == [msg(M.VOTE_RESP, 2, 1, 3, reject=True)]
    assert c.vote == NONE


@pytest.mark.parametrize(
    "last_term, last_index, granted",
    [
        (1, 10, False),  # lower last term, however long
        (2, 3, False),  # same last term, shorter
        (2, 4, True),  # same last term, same length
        (2, 5, True),  # same last term, longer
        (3, 1, True),  # higher last term, however short
    ],
)
def test_vote_requires_candidate_log_at_least_as_up_to_date(last_term, last_index, granted):
    c = voter(terms=[1, 1, 2, 2], term=2)
    c.step(msg(M.VOTE, 1, 2, 3, log_term=last_term, index=last_index))
    (resp,) = drain(c).messages
    assert (resp.type, resp.reject) == (M.VOTE_RESP, not granted)
    assert c.term == 3
    assert c.vote == (2 if granted else NONE)


def test_granting_a_vote_resets_the_election_timer():
    c = voter(terms=[1], term=3, pre_vote=False)
    timeout = c.randomized_timeout
    for _ in range(timeout - 1):
        c.tick()
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=1))
    assert drain(c).messages == [msg(M.VOTE_RESP, 2, 1, 3)]
    assert c.election_elapsed == 0
    for _ in range(timeout - 1):
        c.tick()
    assert c.role == Role.FOLLOWER and drain(c).messages == []
    c.tick()
    assert c.role == Role.CANDIDATE and c.term == 4


def test_rejecting_a_vote_does_not_reset_the_election_timer():
    c = voter(terms=[1, 1], term=3, pre_vote=False)
    for _ in range(c.randomized_timeout - 1):
        c.tick()
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=1))  # shorter log: rejected
    assert drain(c).messages == [msg(M.VOTE_RESP, 2, 1, 3, reject=True)]
    c.tick()
    assert c.role == Role.CANDIDATE


def test_vote_is_in_the_same_ready_as_the_response_so_it_is_persisted_before_sending():
    c = voter(terms=[1], term=2)
    c.step(msg(M.VOTE, 1, 2, 3, log_term=1, index=1))
    assert c.has_ready()
    rd = drain(c)
    assert rd.hard_state == HardState(3, 2, 0)
    assert rd.messages == [msg(M.VOTE_RESP, 2, 1, 3)]
    assert not c.has_ready()


def test_pre_vote_grant_changes_no_state():
    c = voter(terms=[1], term=2)
    c.step(msg(M.PRE_VOTE, 1, 2, 3, log_term=1, index=1))
    rd = drain(c)
    # a granted pre-vote answers in the term asked about; term and vote stay
    assert rd.messages == [msg(M.PRE_VOTE_RESP, 2, 1, 3)]
    assert rd.hard_state is None
    assert (c.term, c.vote, c.role) == (2, NONE, Role.FOLLOWER)


# ====================================================================== elections


def test_follower_starts_pre_vote_after_randomized_timeout_without_bumping_term():
    timeouts = set()
    for seed in range(40):
        c = core(terms=[1, 2], term=2, seed=seed)
        drain(c)
        t = c.randomized_timeout
        assert ET <= t < 2 * ET
        timeouts.add(t)
        for _ in range(t - 1):
            c.tick()
        assert c.role == Role.FOLLOWER and drain(c).messages == []
        c.tick()
        assert (c.role, c.term, c.vote) == (Role.PRE_CANDIDATE, 2, NONE)
        rd = drain(c)
        assert rd.hard_state is None
        assert rd.messages == [msg(M.PRE_VOTE, p, 1, 3, log_term=2, index=2) for p in (2, 3)]
    assert len(timeouts) >= 5  # randomized


def test_pre_vote_majority_starts_real_election():
    c = core(terms=[1, 2], term=2)
    tick_until(c, lambda x: x.role == Role.PRE_CANDIDATE)
    drain(c)
    c.step(msg(M.PRE_VOTE_RESP, 1, 2, 3))
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 3, 1)
    rd = drain(c)
    assert rd.hard_state == HardState(3, 1, 0)
    assert rd.messages == [msg(M.VOTE, p, 1, 3, log_term=2, index=2) for p in (2, 3)]


def test_pre_vote_without_majority_never_bumps_term():
    c = core(1, (1, 2, 3, 4, 5), terms=[1], term=1)
    tick_until(c, lambda x: x.role == Role.PRE_CANDIDATE)
    c.step(msg(M.PRE_VOTE_RESP, 1, 2, 2))  # 2 of 5: not enough
    assert (c.role, c.term) == (Role.PRE_CANDIDATE, 1)
    for _ in range(10 * ET):
        c.tick()
    assert c.term == 1 and c.vote == NONE
    assert not of(drain(c).messages, M.VOTE)


def test_pre_vote_rejected_by_majority_returns_to_follower_in_same_term():
    c = core(terms=[1], term=1)
    tick_until(c, lambda x: x.role == Role.PRE_CANDIDATE)
    c.step(msg(M.PRE_VOTE_RESP, 1, 2, 1, reject=True))
    assert c.role == Role.PRE_CANDIDATE
    c.step(msg(M.PRE_VOTE_RESP, 1, 3, 1, reject=True))
    assert (c.role, c.term, c.lead) == (Role.FOLLOWER, 1, NONE)


def test_without_pre_vote_timeout_bumps_term_and_votes_for_self():
    c = core(terms=[1, 1], term=1, pre_vote=False)
    drain(c)
    n = tick_until(c, lambda x: x.role != Role.FOLLOWER)
    assert ET <= n < 2 * ET
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 2, 1)
    rd = drain(c)
    assert rd.hard_state == HardState(2, 1, 0)
    assert rd.messages == [msg(M.VOTE, p, 1, 2, log_term=1, index=2) for p in (2, 3)]


def test_candidate_wins_with_majority_and_appends_noop_of_its_term():
    c = core(1, (1, 2, 3, 4, 5), terms=[1, 1], term=1, commit=2, pre_vote=False)
    tick_until(c, lambda x: x.role == Role.CANDIDATE)
    drain(c)
    c.step(msg(M.VOTE_RESP, 1, 2, 2))
    c.step(msg(M.VOTE_RESP, 1, 4, 2, reject=True))
    assert c.role == Role.CANDIDATE  # 2 of 5
    c.step(msg(M.VOTE_RESP, 1, 2, 2))  # a duplicate counts once
    assert c.role == Role.CANDIDATE
    c.step(msg(M.VOTE_RESP, 1, 3, 2))
    assert (c.role, c.lead, c.term) == (Role.LEADER, 1, 2)
    noop = Entry(2, 3, None, EntryKind.NOOP)
    assert c.log.entries[-1] == noop
    rd = drain(c)
    assert rd.entries == [noop]
    assert rd.messages == [
        msg(M.APPEND, p, 1, 2, log_term=1, index=2, entries=[noop], commit=2) for p in (2, 3, 4, 5)
    ]


def test_candidate_loses_on_majority_of_rejections():
    c = core(terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda x: x.role == Role.CANDIDATE)
    c.step(msg(M.VOTE_RESP, 1, 2, 2, reject=True))
    c.step(msg(M.VOTE_RESP, 1, 3, 2, reject=True))
    assert (c.role, c.term, c.vote) == (Role.FOLLOWER, 2, 1)


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("kind", [M.APPEND, M.HEARTBEAT])
def test_candidate_seeing_leader_of_its_term_becomes_follower(pre_vote, kind):
    c = core(terms=[1], term=1, pre_vote=pre_vote)
    tick_until(c, lambda x: x.role != Role.FOLLOWER)
    assert c.role == (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
    term = c.term
    drain(c)
    c.step(msg(kind, 1, 3, term, log_term=1, index=1, commit=1))
    assert (c.role, c.term, c.lead) == (Role.FOLLOWER, term, 3)
    (resp,) = drain(c).messages
    assert resp.to == 3 and resp.term == term and not resp.reject
    assert resp.type == (M.APPEND_RESP if kind == M.APPEND else M.HEARTBEAT_RESP)
    assert c.log.commit == 1


def test_split_vote_is_retried_in_a_higher_term():
    c = core(1, (1, 2, 3, 4), terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda x: x.role == Role.CANDIDATE)
    drain(c)
    c.step(msg(M.VOTE_RESP, 1, 3, 2))  # 2 of 4
    c.step(msg(M.VOTE_RESP, 1, 2, 2, reject=True))  # node 2 voted for itself
    c.step(msg(M.VOTE_RESP, 1, 4, 2, reject=True))  # node 4 voted for node 2
    assert (c.role, c.term) == (Role.CANDIDATE, 2)  # neither won nor lost
    n = tick_until(c, lambda x: x.term == 3)
    assert ET <= n < 2 * ET
    assert (c.role, c.vote) == (Role.CANDIDATE, 1)
    assert of(drain(c).messages, M.VOTE) == [msg(M.VOTE, p, 1, 3, log_term=1, index=1) for p in (2, 3, 4)]


def test_split_vote_in_a_network_ends_with_a_single_leader():
    net = cluster(4, terms=[1], pre_vote=False)
    # nodes 1 and 2 campaign for term 2 at once; 3 votes for 1 and 4 for 2 first
    for nid in (1, 2):
        tick_until(net[nid], lambda x: x.role == Role.CANDIDATE)
    net.deliver(lambda m: (m.frm, m.to) in {(1, 3), (2, 4), (3, 1), (4, 2)})
    net.deliver()
    assert net.leader() is None
    assert {c.term for c in net.cores.values()} == {2}
    ld = net.elect()
    assert ld.term >= 3
    assert all(c.lead == ld.id for c in net.cores.values())


def lease_follower(**kw) -> RaftCore:
    c = core(terms=[1], term=2, **kw)
    heartbeat(c, 2)
    drain(c)
    return c


@pytest.mark.parametrize("kind", [M.VOTE, M.PRE_VOTE])
def test_leader_stickiness_ignores_higher_term_vote_request_within_lease(kind):
    c = lease_follower()
    for _ in range(ET - 1):
        c.tick()
    c.step(msg(kind, 1, 3, 3, log_term=1, index=5))
    assert drain(c).messages == []
    assert (c.term, c.vote, c.lead) == (2, NONE, 2)


def test_vote_request_is_heard_once_the_lease_has_expired():
    c = lease_follower()
    for _ in range(ET):
        c.tick()
    drain(c)
    c.step(msg(M.VOTE, 1, 3, 3, log_term=1, index=5))
    assert of(drain(c).messages, M.VOTE_RESP) == [msg(M.VOTE_RESP, 3, 1, 3)]
    assert (c.term, c.vote) == (3, 3)


def test_leader_stickiness_is_off_without_check_quorum():
    c = lease_follower(check_quorum=False)
    c.step(msg(M.VOTE, 1, 3, 3, log_term=1, index=5))
    assert drain(c).messages == [msg(M.VOTE_RESP, 3, 1, 3)]


def test_transfer_vote_request_is_heard_within_lease():
    c = lease_follower()
    c.step(msg(M.VOTE, 1, 3, 3, log_term=1, index=5, context=TRANSFER))
    assert drain(c).messages == [msg(M.VOTE_RESP, 3, 1, 3)]
    assert (c.term, c.vote) == (3, 3)


def test_leader_ignores_higher_term_vote_request_with_check_quorum():
    c = leader(terms=[1], caught_up=[2, 3])
    c.step(msg(M.VOTE, 1, 3, 9, log_term=9, index=9))
    assert drain(c).messages == [] and c.is_leader() and c.term == 2


def test_check_quorum_leader_without_quorum_steps_down_after_election_timeout():
    c = leader(terms=[1])
    for _ in range(ET - 1):
        c.tick()
    assert c.is_leader()
    c.tick()
    assert (c.role, c.term, c.lead) == (Role.FOLLOWER, 2, NONE)


def test_check_quorum_leader_hearing_from_quorum_each_timeout_stays():
    c = leader(terms=[1])
    for _ in range(5):
        for _ in range(ET - 1):
            c.tick()
        c.step(msg(M.HEARTBEAT_RESP, 1, 3, 2))
        c.tick()
        assert c.is_leader()
    for _ in range(ET):
        c.tick()
    assert c.role == Role.FOLLOWER


def test_without_check_quorum_isolated_leader_stays():
    c = leader(terms=[1], check_quorum=False)
    for _ in range(5 * ET):
        c.tick()
    assert c.is_leader()


def test_partitioned_node_with_pre_vote_does_not_disrupt_the_cluster_when_it_rejoins():
    net = cluster(3, seed=1, terms=[1])
    ld = net.elect()
    term = ld.term
    other = next(i for i in net.cores if i != ld.id)
    net.isolate(other)
    net.tick(6 * ET)
    assert net[other].term == term  # pre-votes failed: term never bumped
    assert ld.is_leader()
    ld.propose([b"x"])
    net.tick(1)
    net.heal()
    net.tick(2 * ET)
    assert net.leader() is ld and ld.term == term
    assert net[other].role == Role.FOLLOWER and net[other].lead == ld.id and net[other].term == term
    assert net[other].log.entries == ld.log.entries


def test_without_pre_vote_partitioned_node_bumps_its_term():
    # the contrast to the test above: what pre-vote protects against
    net = cluster(3, seed=1, terms=[1], pre_vote=False)
    ld = net.elect()
    other = next(i for i in net.cores if i != ld.id)
    net.isolate(other)
    net.tick(6 * ET)
    assert net[other].term > ld.term


# ====================================================================== AppendEntries (follower)


def test_append_with_missing_prev_entry_is_rejected_with_hint():
    c = core(terms=[1, 1, 2], term=2)
    append(c, 2, prev=5, prev_term=2)
    assert drain(c).messages == [msg(M.APPEND_RESP, 2, 1, 2, log_term=2, index=5, reject=True, reject_hint=3)]
    assert terms_of(c) == [1, 1, 2]


def test_append_with_prev_term_mismatch_is_rejected_with_hint_skipping_the_term():
    c = core(terms=[1, 1, 2, 2, 2, 2, 2], term=3)
    # the leader's entry 6 has term 3: our whole run of term-2 entries up to 6 may still match
    append(c, 2, prev=6, prev_term=3)
    assert drain(c).messages == [msg(M.APPEND_RESP, 2, 1, 3, log_term=2, index=6, reject=True, reject_hint=6)]
    # the leader's entry 6 has term 1: every entry of a term > 1 is skipped at once
    append(c, 2, prev=6, prev_term=1)
    assert drain(c).messages == [msg(M.APPEND_RESP, 2, 1, 3, log_term=1, index=6, reject=True, reject_hint=2)]
    # nothing of term <= 0 but the empty prefix
    c2 = core(terms=[2, 2], term=3)
    append(c2, 2, prev=2, prev_term=1)
    assert drain(c2).messages == [msg(M.APPEND_RESP, 2, 1, 3, log_term=0, index=2, reject=True, reject_hint=0)]


def test_append_deletes_conflicting_entry_and_all_that_follow_and_appends_new_ones():
    c = core(terms=[1, 1, 2, 2, 2], term=2, commit=2)
    drain(c)
    new = ents([3, 3], start=3)
    append(c, 2, prev=2, prev_term=1, entries=new, commit=2, term=3)
    assert c.log.entries == ents([1, 1]) + new
    rd = drain(c)
    assert rd.entries == new
    assert rd.messages == [msg(M.APPEND_RESP, 2, 1, 3, index=4)]


def test_append_does_not_touch_entries_already_present():
    c = core(terms=[1, 1, 1, 1], term=1)
    drain(c)
    before = list(c.log.entries)
    append(c, 2, prev=0, prev_term=0, entries=ents([1, 1]))  # an old, shorter copy
    rd = drain(c)
    assert c.log.entries == before and rd.entries == []
    assert rd.messages == [msg(M.APPEND_RESP, 2, 1, 1, index=2)]
    append(c, 2, prev=2, prev_term=1, entries=ents([1, 1, 1], start=3))  # overlaps; one new entry
    rd = drain(c)
    assert rd.entries == ents([1], start=5)
    assert c.log.entries == before + ents([1], start=5)
    assert rd.messages == [msg(M.APPEND_RESP, 2, 1, 1, index=5)]


def test_append_sets_commit_to_min_of_leader_commit_and_last_new_entry():
    c = core(terms=[1] * 5, term=1)
    append(c, 2, prev=1, prev_term=1, entries=ents([1], start=2), commit=5)
    # entries 3..5 are ours, not (yet) known to be the leader's: commit stops at 2
    assert c.log.commit == 2
    append(c, 2, prev=5, prev_term=1, commit=4)
    assert c.log.commit == 4
    append(c, 2, prev=5, prev_term=1, entries=ents([1, 1], start=6), commit=9)
    assert c.log.commit == 7
    assert [e.index for e in drain(c).committed_entries] == list(range(1, 8))


def test_append_below_commit_is_answered_with_commit_index():
    c = core(terms=[1] * 5, term=1, commit=4)
    drain(c)
    append(c, 2, prev=2, prev_term=1, entries=ents([1], start=3), commit=4)
    assert drain(c).messages == [msg(M.APPEND_RESP, 2, 1, 1, index=4)]
    assert terms_of(c) == [1] * 5


def test_append_resets_election_timer_and_records_leader():
    c = core(terms=[1], term=1)
    for _ in range(c.randomized_timeout - 1):
        c.tick()
    append(c, 3, prev=1, prev_term=1)
    assert (c.election_elapsed, c.lead) == (0, 3)
    for _ in range(c.randomized_timeout - 1):
        c.tick()
    assert c.role == Role.FOLLOWER


def exchange(ld: RaftCore, f: RaftCore, first: list[Message] | None = None, max_rounds: int = 1000) -> tuple[int, int]:
    """Deliver leader->follower messages (``first``, then the leader's Readys) and the answers until quiet.

    Returns (round trips, rejections). Messages to other nodes are dropped.
    """
    rejects = 0
    for rounds in range(max_rounds):
        to_f = [m for m in (drain(ld).messages if first is None else first) if m.to == f.id]
        first = None
        if not to_f:
            return rounds, rejects
        for m in to_f:
            f.step(m)
        for r in drain(f).messages:
            rejects += r.reject
            ld.step(r)
    raise AssertionError("no convergence")


def test_fast_backtracking_repairs_a_long_divergent_suffix_in_o_terms_round_trips():
    # the leader (term 5) has 50 entries of term 2 then 20 of term 4;
    # the follower has 100 entries of term 3 after the common prefix
    lt = [1] * 3 + [2] * 50 + [4] * 20
    ft = [1] * 3 + [3] * 100
    ld = RaftCore(1, (1, 2, 3), config(), random.Random(0), HardState(4, NONE, 3), ents(lt))
    probes = of(elect(ld, [3]).messages, M.APPEND)
    f = RaftCore(2, (1, 2, 3), config(), random.Random(0), HardState(4, NONE, 3), ents(ft))
    rounds, rejects = exchange(ld, f, probes)
    assert f.log.entries == ld.log.entries
    # the probe at 73 skips the follower's 70 entries of term 3 beyond 73 at once, the probe at 53 the
    # leader's 50 entries of term 2: one rejection per term, not one per entry
    assert rejects == 2
    assert rounds == 3  # two rejections and the repair (the commit index rides on the next heartbeat)
    assert ld.progress[2].match == ld.log.last_index() == 74


@st.composite
def divergent_logs(draw):
    """A committed common prefix, then a leader suffix of even terms and a follower one of odd terms."""
    prefix = sorted(draw(st.lists(st.integers(1, 3), max_size=8)))
    base = prefix[-1] if prefix else 1
    lead = sorted(draw(st.lists(st.sampled_from([4, 6, 8]), max_size=12)))
    foll = sorted(draw(st.lists(st.sampled_from([5, 7, 9]), max_size=40)))
    lead = [max(t, base) for t in lead]
    foll = [max(t, base) for t in foll]
    # a follower can also be a plain prefix of the leader's log, or shorter than the prefix
    cut = draw(st.integers(0, len(prefix)))
    if draw(st.booleans()):
        foll_log = prefix[:cut]
        commit_f = cut
    else:
        foll_log = prefix + foll
        commit_f = draw(st.integers(0, len(prefix)))
    return prefix + lead, foll_log, len(prefix), commit_f


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    divergent_logs(),
    st.integers(1, 4),  # max_entries_per_message
    st.integers(1, 3),  # max_inflight
)
def test_divergent_follower_log_is_always_repaired_to_the_leaders(logs, per_msg, inflight):
    lt, ft, commit_l, commit_f = logs
    cfg = config(max_entries_per_message=per_msg, max_inflight=inflight)
    ld = RaftCore(1, (1, 2, 3), cfg, random.Random(0), HardState(9, NONE, commit_l), ents(lt))
    probes = of(elect(ld, [3]).messages, M.APPEND)
    f = RaftCore(2, (1, 2, 3), cfg, random.Random(0), HardState(9, NONE, commit_f), ents(ft))
    # a lossless exchange needs no heartbeat: fast backtracking costs at most one rejection per term
    _, rejects = exchange(ld, f, probes)
    assert rejects <= len(set(lt[commit_l:])) + len(set(ft[commit_f:])) + 1
    for _ in range(200):
        if f.log.entries == ld.log.entries and ld.progress[2].match == ld.log.last_index():
            break
        ld.tick()
        ld.step(msg(M.HEARTBEAT_RESP, 1, 3, ld.term))  # keep check-quorum happy
    assert f.log.entries == ld.log.entries
    assert ld.progress[2].match == ld.log.last_index()
    # the noop is on 2 of 3: everything is committed and the follower learns it
    assert ld.log.commit == ld.log.last_index()
    ld.tick()
    exchange(ld, f)
    assert f.log.commit == ld.log.commit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(divergent_logs(), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32))
def test_divergent_follower_log_is_repaired_despite_lost_duplicated_and_reordered_messages(logs, per_msg, inflight, seed):
    lt, ft, commit_l, commit_f = logs
    rnd = random.Random(seed)
    cfg = config(max_entries_per_message=per_msg, max_inflight=inflight, check_quorum=False)
    ld = RaftCore(1, (1, 2, 3), cfg, random.Random(0), HardState(9, NONE, commit_l), ents(lt))
    elect(ld, [3])
    f = RaftCore(2, (1, 2, 3), cfg, random.Random(0), HardState(9, NONE, commit_f), ents(ft))
    wire: list[Message] = []
    f_commit = f.log.commit
    for _ in range(300):
        wire += of(drain(ld).messages, to=2) + drain(f).messages
        rnd.shuffle(wire)
        keep = []
        for m in wire:
            r = rnd.random()
            if r < 0.25:
                continue  # lost
            if r < 0.35:
                keep.append(m)  # duplicated
            (f if m.to == 2 else ld).step(m)
        wire = keep
        assert f.log.commit >= f_commit
        f_commit = f.log.commit
        # the follower never holds a committed entry the leader does not have
        assert f.log.entries[: f.log.commit] == ld.log.entries[: f.log.commit]
        if rnd.random() < 0.3:
            ld.tick()
    # then the network heals
    for _ in range(50):
        ld.tick()
        exchange(ld, f)
    assert f.log.entries == ld.log.entries
    assert f.log.commit == ld.log.commit == ld.log.last_index()


# ====================================================================== leader: replication


def test_new_leader_probes_each_follower_from_its_own_last_index_plus_one():
    c = core(terms=[1, 1, 2], term=2)
    rd = elect(c)
    noop = Entry(3, 4, None, EntryKind.NOOP)
    for p in (2, 3):
        pr = c.progress[p]
        assert (pr.state, pr.match, pr.next, pr.probe_sent) == (ProgressState.PROBE, 0, 4, True)
    assert of(rd.messages, M.APPEND) == [msg(M.APPEND, p, 1, 3, log_term=2, index=3, entries=[noop]) for p in (2, 3)]


def test_leader_moves_next_index_back_by_the_conflict_hint_on_rejection():
    c = core(terms=[1, 1, 3, 3, 3, 3], term=4)
    elect(c)  # term 5, noop at 7
    # follower 2 has [1, 1, 2, 2, 2, 2, 2, 2]: it rejects prev (6, 3) with hint (6, 2)
    c.step(msg(M.APPEND_RESP, 1, 2, 5, index=6, reject=True, reject_hint=6, log_term=2))
    pr = c.progress[2]
    assert (pr.state, pr.next) == (ProgressState.PROBE, 3)  # every term-3 entry skipped at once
    (m,) = drain(c).messages
    assert (m.type, m.to, m.index, m.log_term) == (M.APPEND, 2, 2, 1)
    assert [e.index for e in m.entries] == [3, 4, 5, 6, 7]


def test_leader_moves_next_index_back_to_the_followers_last_index():
    c = core(terms=[1, 1, 1, 1], term=1)
    elect(c)
    c.step(msg(M.APPEND_RESP, 1, 2, 2, index=4, reject=True, reject_hint=1, log_term=1))
    assert c.progress[2].next == 2
    (m,) = drain(c).messages
    assert (m.index, m.log_term, [e.index for e in m.entries]) == (1, 1, [2, 3, 4, 5])


def test_leader_ignores_stale_rejection():
    c = core(terms=[1, 1, 1, 1], term=1)
    elect(c)
    c.step(msg(M.APPEND_RESP, 1, 2, 2, index=2, reject=True, reject_hint=1, log_term=1))  # we did not send prev 2
    assert c.progress[2].next == 5 and drain(c).messages == []


def test_successful_append_advances_match_and_next_and_switches_probe_to_replicate():
    c = core(terms=[1, 1], term=1)
    elect(c)
    c.step(msg(M.APPEND_RESP, 1, 2, 2, index=3))
    pr = c.progress[2]
    assert (pr.state, pr.match, pr.next) == (ProgressState.REPLICATE, 3, 4)
    assert c.progress[3].state == ProgressState.PROBE


def test_leader_in_probe_sends_one_append_at_a_time():
    c = core(terms=[1], term=1)
    elect(c)
    for i in range(3):
        c.propose([b"%d" % i])
    rd = drain(c)
    assert of(rd.messages, M.APPEND) == []  # the first probe (with the noop) is unanswered
    c.tick()
    hbs = drain(c).messages
    assert [m.type for m in hbs] == [M.HEARTBEAT, M.HEARTBEAT]
    # a heartbeat answer lets a new probe out (the first one may have been lost)
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, 2))
    (m,) = drain(c).messages
    assert (m.type, m.index, [e.index for e in m.entries]) == (M.APPEND, 1, [2, 3, 4, 5])


def replicating_leader(**kw) -> RaftCore:
    c = leader(terms=[1], caught_up=[2, 3], **kw)
    assert c.progress[2].state == ProgressState.REPLICATE
    return c


def propose_one_by_one(c: RaftCore, n: int) -> None:
    """Propose ``n`` commands, each in its own ready cycle (so each may be its own append)."""
    for i in range(n):
        c.propose([b"%d" % i])
        drain(c)


def test_pipelining_keeps_at_most_max_inflight_appends_in_flight():
    c = replicating_leader(max_inflight=2)
    first = c.log.last_index() + 1
    propose_one_by_one(c, 4)
    pr = c.progress[2]
    assert pr.inflight == [first, first + 1] and pr.is_paused()
    c.propose([b"more"])
    assert of(drain(c).messages, to=2) == []
    # one acknowledgement frees one slot ... and the rest of the log goes out in one message
    c.step(msg(M.APPEND_RESP, 1, 2, c.term, index=first))
    (m,) = drain(c).messages
    assert (m.to, m.index, [e.index for e in m.entries]) == (2, first + 1, [first + 2, first + 3, first + 4])
    assert pr.inflight == [first + 1, first + 4]


def test_pipelining_sends_several_appends_before_any_answer():
    c = replicating_leader(max_inflight=3)
    first = c.log.last_index() + 1
    sent = []
    for i in range(5):
        c.propose([b"%d" % i])
        sent += of(drain(c).messages, M.APPEND, to=3)
    assert [[e.index for e in m.entries] for m in sent] == [[first], [first + 1], [first + 2]]
    assert [m.index for m in sent] == [first - 1, first, first + 1]


def test_heartbeat_response_frees_a_slot_of_a_full_pipeline():
    c = replicating_leader(max_inflight=2)
    first = c.log.last_index() + 1
    propose_one_by_one(c, 3)
    pr = c.progress[2]
    assert pr.is_paused() and pr.inflight == [first, first + 1]
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, c.term))
    (m,) = drain(c).messages
    assert (m.type, m.to, [e.index for e in m.entries]) == (M.APPEND, 2, [first + 2])
    assert pr.inflight == [first + 1, first + 2]


def test_rejection_in_replicate_falls_back_to_probe():
    c = replicating_leader()
    first = c.log.last_index() + 1
    for i in range(3):
        c.propose([b"%d" % i])
        drain(c)
    # the first append was lost: the follower rejects the second
    c.step(msg(M.APPEND_RESP, 1, 2, c.term, index=first, reject=True, reject_hint=first - 1, log_term=c.term))
    pr = c.progress[2]
    assert (pr.state, pr.next, pr.inflight) == (ProgressState.PROBE, first, [])
    (m,) = drain(c).messages
    assert (m.index, [e.index for e in m.entries]) == (first - 1, [first, first + 1, first + 2])


def test_commit_advances_when_a_majority_matches_an_entry_of_the_current_term():
    c = core(1, (1, 2, 3, 4, 5), terms=[1], term=1)
    elect(c)
    c.propose([b"a", b"b"])
    drain(c)
    assert ack(c, 2, 4).committed_entries == [] and c.log.commit == 0  # 2 of 5
    rd = ack(c, 4, 3)  # matches 4, 4, 3: 3 of 5 hold index 3
    assert c.log.commit == 3
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert rd.hard_state.commit == 3
    rd = ack(c, 5, 4)
    assert c.log.commit == 4 and [e.index for e in rd.committed_entries] == [4]
    # the commit index goes out with the next appends
    c.propose([b"c"])
    assert {m.commit for m in drain(c).messages} == {4}


def test_figure8_old_term_entry_on_a_majority_is_not_committed_by_counting():
    # leader of term 4 with an uncommitted entry of term 2 at index 2 (Figure 8 (c))
    c = core(1, (1, 2, 3, 4, 5), terms=[1, 2], term=3, commit=1, max_entries_per_message=1)
    drain(c)
    elect(c)
    assert c.term == 4 and terms_of(c) == [1, 2, 4]
    # followers 2 and 3 have only entry 1: the probe (prev 2) is rejected and entry 2 is sent alone
    for p in (2, 3):
        c.step(msg(M.APPEND_RESP, 1, p, 4, index=2, reject=True, reject_hint=1, log_term=1))
        (m,) = of(drain(c).messages, M.APPEND, to=p)
        assert [e.term for e in m.entries] == [2]
        c.step(msg(M.APPEND_RESP, 1, p, 4, index=2))
    # entry 2 (term 2) is now on 1, 2, 3: a majority, yet not committed
    assert [c.progress[p].match for p in (1, 2, 3)] == [3, 2, 2]
    assert c.log.commit == 1
    rd = drain(c)
    assert rd.committed_entries == []
    # once the current-term entry is on a majority, both are committed
    c.step(msg(M.APPEND_RESP, 1, 2, 4, index=3))
    assert c.log.commit == 1
    c.step(msg(M.APPEND_RESP, 1, 3, 4, index=3))
    assert c.log.commit == 3
    assert [(e.term, e.index) for e in drain(c).committed_entries] == [(2, 2), (4, 3)]


def test_figure8_in_a_network_old_term_entry_on_a_majority_is_overwritten_safely():
    # Figure 8 (d): S1 leads term 4 and gets its term-2 entry 2 onto S2 and S3, then crashes; S5, whose
    # entry 2 is of term 3, is elected and overwrites it everywhere. That is safe only because the
    # term-2 entry was never committed, nor applied anywhere.
    logs = {1: [1, 2], 2: [1], 3: [1], 4: [1], 5: [1, 3]}
    net = Net(core(i, range(1, 6), terms=t, term=3, commit=1, seed=i, max_entries_per_message=1)
              for i, t in logs.items())
    for i in (4, 5):
        net.cut(1, i)
    tick_until(net[1], lambda x: x.role != Role.FOLLOWER)
    # S1 wins term 4 with S2 and S3; its probes (prev 2) are rejected; entry 2 goes out alone
    net.deliver(lambda m: m.type != M.APPEND or net[m.to].log.last_index() < 2)
    s1 = net[1]
    assert s1.is_leader() and s1.term == 4
    assert [net[i].log.term(2) for i in (1, 2, 3)] == [2, 2, 2]
    assert [s1.progress[i].match for i in (1, 2, 3)] == [3, 2, 2]
    assert s1.log.commit == 1  # on a majority, not committed by counting
    # S1 crashes before its noop gets anywhere
    net.down.add(1)
    net.drop()
    net.heal()
    for _ in range(ET):
        for i in (2, 3, 4):
            net[i].tick()  # their leases run out; whatever they do is lost
    net.drop()
    for _ in range(10 * ET):
        net.tick(1, [5])
        if net[5].is_leader():
            break
    s5 = net[5]
    assert s5.is_leader() and s5.term >= 5
    net.tick(2, [5])
    assert [net[i].log.term(2) for i in (2, 3, 4, 5)] == [3, 3, 3, 3]
    assert s5.log.commit == s5.log.last_index() == 3
    # S1 comes back and is repaired too
    net.down.discard(1)
    net.tick(3)
    assert not s1.is_leader() and s1.log.entries == s5.log.entries
    for i in net.cores:
        assert [(e.term, e.index) for e in net.applied[i]] == [(1, 1), (3, 2), (s5.term, 3)]


def test_heartbeats_carry_min_of_match_and_commit():
    c = core(terms=[1], term=1)
    elect(c)
    c.propose([b"a"])
    drain(c)
    ack(c, 2)
    assert c.log.commit == 3
    c.tick()
    hbs = {m.to: m.commit for m in of(drain(c).messages, M.HEARTBEAT)}
    assert hbs == {2: 3, 3: 0}
    ack(c, 3, 2)
    c.tick()
    assert {m.to: m.commit for m in of(drain(c).messages, M.HEARTBEAT)} == {2: 3, 3: 2}


def test_heartbeats_are_sent_every_heartbeat_interval():
    c = replicating_leader(heartbeat_ticks=3)
    counts = []
    for _ in range(9):
        c.tick()
        counts.append(len(of(drain(c).messages, M.HEARTBEAT)))
    assert counts == [0, 0, 2] * 3


def test_appends_respect_max_entries_per_message():
    c = replicating_leader(max_entries_per_message=3)
    first = c.log.last_index() + 1
    c.propose([b"%d" % i for i in range(10)])
    (m,) = of(drain(c).messages, M.APPEND, to=2)
    assert [e.index for e in m.entries] == [first, first + 1, first + 2]
    c.step(msg(M.APPEND_RESP, 1, 2, c.term, index=first + 2))
    rest = [x for x in of(drain(c).messages, M.APPEND, to=2) if x.entries]
    assert [len(x.entries) for x in rest] == [3, 3, 1]
    assert [e.index for x in rest for e in x.entries] == list(range(first + 3, first + 10))
    assert [x.index for x in rest] == [first + 2, first + 5, first + 8]


def test_appends_respect_max_entries_per_message_when_probing():
    c = core(terms=[1] * 10, term=1, max_entries_per_message=4)
    elect(c)
    c.step(msg(M.APPEND_RESP, 1, 2, 2, index=10, reject=True, reject_hint=0, log_term=0))
    (m,) = drain(c).messages
    assert (m.index, [e.index for e in m.entries]) == (0, [1, 2, 3, 4])


def test_propose_returns_first_index_and_term_and_appends():
    c = replicating_leader()
    last = c.log.last_index()
    assert c.propose([b"a", b"b"]) == (last + 1, c.term)
    assert c.log.entries[-2:] == [Entry(c.term, last + 1, b"a"), Entry(c.term, last + 2, b"b")]
    rd = drain(c)
    assert rd.entries == c.log.entries[-2:]


def test_propose_on_follower_raises_not_leader_with_leader_hint():
    c = core(terms=[1], term=1)
    with pytest.raises(NotLeader) as ei:
        c.propose([b"x"])
    assert ei.value.leader == NONE
    heartbeat(c, 3)
    with pytest.raises(NotLeader) as ei:
        c.propose([b"x"])
    assert ei.value.leader == 3
    assert c.log.last_index() == 1


def test_propose_on_candidate_raises_not_leader():
    c = core(terms=[1], term=1)
    tick_until(c, lambda x: x.role == Role.PRE_CANDIDATE)
    with pytest.raises(NotLeader) as ei:
        c.propose([b"x"])
    assert ei.value.leader == NONE


def test_single_node_cluster_elects_itself_and_commits_at_once():
    c = core(1, (1,), terms=[1], term=1)
    tick_until(c, lambda x: x.is_leader())
    assert c.term == 2
    c.propose([b"a"])
    rd = drain(c)  # the shell syncs the new entries...
    assert [e.index for e in rd.entries] == [2, 3] and rd.messages == []
    rd = drain(c)  # ... and with its own copy durable the leader commits them
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert rd.messages == []


# ====================================================================== ReadIndex


def committed_leader(n: int = 5, **kw) -> RaftCore:
    """A leader of a 5-node cluster that has committed its noop (followers 2, 3 caught up)."""
    c = leader(1, range(1, n + 1), terms=[1], caught_up=[2, 3], **kw)
    assert c.log.commit == 2
    return c


def test_leader_read_index_needs_a_quorum_of_heartbeat_acks_of_the_round():
    c = committed_leader()
    c.read_index("r1")
    hbs = of(drain(c).messages, M.HEARTBEAT)
    assert sorted(m.to for m in hbs) == [2, 3, 4, 5]
    (ctx,) = {m.context for m in hbs}
    assert ctx is not None
    # the commit index moves on during the round: the read keeps the round's start
    c.propose([b"w"])
    drain(c)
    ack(c, 2)
    ack(c, 3)
    assert c.log.commit == 3
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, c.term, context=ctx))
    c.step(msg(M.HEARTBEAT_RESP, 1, 4, c.term))  # an ordinary heartbeat answer is no ack
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, c.term, context=ctx))  # a duplicate counts once
    assert drain(c).read_states == []
    c.step(msg(M.HEARTBEAT_RESP, 1, 5, c.term, context=ctx))
    assert drain(c).read_states == [ReadState("r1", 2)]
    c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=ctx))
    assert drain(c).read_states == []  # released once


def test_later_read_round_ack_releases_earlier_rounds_too():
    c = committed_leader(3)
    c.read_index("a")
    (ctx_a,) = {m.context for m in drain(c).messages}
    c.propose([b"w"])
    ack(c, 2)
    c.read_index("b")
    (ctx_b,) = {m.context for m in of(drain(c).messages, M.HEARTBEAT)}
    assert ctx_a != ctx_b
    c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=ctx_b))
    assert drain(c).read_states == [ReadState("a", 2), ReadState("b", 3)]


def test_new_leader_defers_reads_until_it_commits_an_entry_of_its_term():
    c = core(1, (1, 2, 3), terms=[1], term=1, commit=1)
    elect(c)
    c.read_index("r")
    rd = drain(c)
    assert rd.messages == [] and rd.read_states == [] and rd.dropped_reads == []
    rd = ack(c, 2)  # the noop commits
    assert c.log.commit == 2
    hbs = of(rd.messages, M.HEARTBEAT)
    assert len(hbs) == 2 and hbs[0].context is not None
    c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=hbs[0].context))
    assert drain(c).read_states == [ReadState("r", 2)]


def test_follower_forwards_read_index_to_leader_and_turns_answer_into_read_state():
    c = core(terms=[1], term=1)
    heartbeat(c, 2)
    drain(c)
    c.read_index("q")
    assert drain(c).messages == [msg(M.READ_INDEX, 2, 1, 1, context="q")]
    c.step(msg(M.READ_INDEX_RESP, 1, 2, 1, index=7, context="q"))
    assert drain(c).read_states == [ReadState("q", 7)]
    c.read_index("q2")
    c.step(msg(M.READ_INDEX_RESP, 1, 2, 1, reject=True, context="q2"))
    rd = drain(c)
    assert rd.read_states == [] and rd.dropped_reads == ["q2"]


def test_leader_answers_forwarded_read_index_after_quorum():
    c = committed_leader(3)
    c.step(msg(M.READ_INDEX, 1, 3, c.term, context="q"))
    rd = drain(c)
    (ctx,) = {m.context for m in of(rd.messages, M.HEARTBEAT)}
    assert rd.read_states == []
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, c.term, context=ctx))
    rd = drain(c)
    assert rd.read_states == []
    assert rd.messages == [msg(M.READ_INDEX_RESP, 3, 1, c.term, index=2, context="q")]


def test_follower_read_in_a_network():
    net = cluster(3, seed=2, terms=[1])
    ld = net.elect()
    ld.propose([b"x"])
    net.deliver()
    f = next(c for c in net.cores.values() if c is not ld)
    f.read_index("r")
    net.deliver()
    assert net.read_states[f.id] == [ReadState("r", ld.log.commit)]
    assert ld.log.commit == ld.log.last_index() == 3


@pytest.mark.parametrize("state", ["no-leader", "pre-candidate", "candidate"])
def test_read_without_a_leader_is_dropped(state):
    c = core(terms=[1], term=1, pre_vote=state != "candidate")
    if state != "no-leader":
        tick_until(c, lambda x: x.role != Role.FOLLOWER)
    drain(c)
    c.read_index("r")
    rd = drain(c)
    assert rd.dropped_reads == ["r"] and rd.messages == [] and rd.read_states == []


def test_leader_stepping_down_drops_its_pending_local_reads():
    c = committed_leader(3)
    c.read_index("mine")
    c.step(msg(M.READ_INDEX, 1, 3, c.term, context="theirs"))
    drain(c)
    c2 = core(1, (1, 2, 3), terms=[1], term=1, commit=1)
    elect(c2)
    c2.read_index("deferred")
    for x in (c, c2):
        x.step(msg(M.APPEND_RESP, 1, 2, x.term + 1))
        assert not x.is_leader()
    assert drain(c).dropped_reads == ["mine"]
    assert drain(c2).dropped_reads == ["deferred"]
    assert not c.read_rounds and not c2.deferred_reads


def test_leader_stepping_down_by_check_quorum_drops_reads():
    c = committed_leader(3)
    c.read_index("mine")
    for _ in range(2 * ET):  # the followers were active in the first timeout
        c.tick()
    assert not c.is_leader()
    assert drain(c).dropped_reads == ["mine"]


def test_single_node_cluster_reads_at_once():
    c = core(1, (1,), terms=[1], term=1)
    tick_until(c, lambda x: x.is_leader())
    drain(c)
    c.read_index("r")
    rd = drain(c)
    assert rd.read_states == [ReadState("r", 2)] and rd.messages == []


# ====================================================================== leadership transfer


def test_transfer_to_caught_up_follower_sends_timeout_now():
    c = replicating_leader()
    c.transfer_leader(2)
    assert drain(c).messages == [msg(M.TIMEOUT_NOW, 2, 1, c.term)]
    assert c.lead_transferee == 2


def test_transfer_to_lagging_follower_sends_appends_first_then_timeout_now():
    c = leader(terms=[1], caught_up=[2])
    ack(c, 3, 1)
    c.propose([b"a"])
    drain(c)
    c.transfer_leader(3)
    (m,) = drain(c).messages
    assert (m.type, m.to) == (M.APPEND, 3)
    assert not of(drain(c).messages, M.TIMEOUT_NOW)
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=2))  # not there yet
    assert not of(drain(c).messages, M.TIMEOUT_NOW)
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=3))
    assert of(drain(c).messages, M.TIMEOUT_NOW) == [msg(M.TIMEOUT_NOW, 3, 1, c.term)]


def test_proposals_are_refused_during_a_transfer():
    c = leader(terms=[1], caught_up=[2])
    c.transfer_leader(3)
    last = c.log.last_index()
    with pytest.raises(ProposalDropped):
        c.propose([b"x"])
    assert c.log.last_index() == last


def test_transfer_target_campaigns_at_once_without_pre_vote():
    c = core(2, (1, 2, 3), terms=[1, 2], term=2)
    heartbeat(c, 1)
    drain(c)
    c.step(msg(M.TIMEOUT_NOW, 2, 1, 2))
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 3, 2)
    rd = drain(c)
    assert rd.hard_state == HardState(3, 2, 0)
    assert rd.messages == [msg(M.VOTE, p, 2, 3, log_term=2, index=2, context=TRANSFER) for p in (1, 3)]


def test_leadership_transfer_in_a_network():
    net = cluster(3, seed=3, terms=[1])
    ld = net.elect()
    term = ld.term
    ld.propose([b"a"])
    net.deliver()
    target, bystander = [i for i in net.cores if i != ld.id]
    # the bystander has heard from the leader just now: it is in its lease
    assert net[bystander].lead == ld.id and net[bystander].election_elapsed < ET
    net.delivered.clear()
    ld.transfer_leader(target)
    net.deliver()
    assert net[target].is_leader() and net[target].term == term + 1
    assert of(net.delivered, M.PRE_VOTE, to=bystander) == []
    assert [m.reject for m in of(net.delivered, M.VOTE_RESP) if m.frm == bystander] == [False]
    assert not ld.is_leader() and ld.lead == target
    assert net[bystander].lead == target


def test_unfinished_transfer_is_abandoned_after_an_election_timeout():
    c = leader(terms=[1], caught_up=[2], check_quorum=False)
    c.transfer_leader(3)
    for _ in range(ET - 1):
        c.tick()
    with pytest.raises(ProposalDropped):
        c.propose([b"x"])
    c.tick()
    assert c.lead_transferee == NONE and c.is_leader()
    first, term = c.propose([b"x"])
    assert (first, term) == (c.log.last_index(), c.term)


def test_transfer_on_follower_raises_not_leader():
    c = core(terms=[1], term=1)
    heartbeat(c, 2)
    with pytest.raises(NotLeader) as ei:
        c.transfer_leader(3)
    assert ei.value.leader == 2


def test_timeout_now_on_a_candidate_or_stale_is_ignored():
    c = core(2, (1, 2, 3), terms=[1], term=1)
    tick_until(c, lambda x: x.role == Role.PRE_CANDIDATE)
    drain(c)
    c.step(msg(M.TIMEOUT_NOW, 2, 1, 1))
    assert (c.role, c.term) == (Role.PRE_CANDIDATE, 1) and drain(c).messages == []



# ====================================================================== randomized runs


def check_invariants(net: Net) -> None:
    cores = list(net.cores.values())
    # log matching: two logs with an entry of the same index and term are identical up to it
    for a in cores:
        for b in cores:
            if a.id < b.id:
                common = min(a.log.last_index(), b.log.last_index())
                same = [i for i in range(1, common + 1) if a.log.term(i) == b.log.term(i)]
                if same:
                    assert a.log.entries[: same[-1]] == b.log.entries[: same[-1]]
    # state machine safety
    assert_state_machine_safety(net)
    # leader completeness: a leader holds every entry applied anywhere in an earlier term
    for ld in cores:
        if ld.is_leader():
            for applied in net.applied.values():
                for e in applied:
                    if e.term < ld.term:
                        assert ld.log.term(e.index) == e.term


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32),
    st.sampled_from([3, 5]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([1, 2, 8]),
    st.sampled_from([1, 3, 100]),
)
def test_random_runs_keep_election_safety_log_matching_and_state_machine_safety(
    seed, n, pre_vote, check_quorum, inflight, per_msg
):
    rnd = random.Random(seed)
    cfg = {"pre_vote": pre_vote, "check_quorum": check_quorum, "max_inflight": inflight,
           "max_entries_per_message": per_msg}
    net = cluster(n, seed=seed % 997, **cfg)
    ids = list(net.cores)
    reads: dict[object, int] = {}  # read context -> the highest commit index anywhere when it was asked
    writes = 0
    for step in range(400):
        r = rnd.random()
        net.flush()
        if r < 0.30:
            net[rnd.choice(ids)].tick()
        elif r < 0.65 and net.pending:
            m = net.pending.pop(rnd.randrange(len(net.pending)))
            if (m.frm, m.to) not in net.blocked:
                net[m.to].step(m)
        elif r < 0.72 and net.pending:
            net.pending.pop(rnd.randrange(len(net.pending)))  # lost
        elif r < 0.75 and net.pending:
            net.pending.append(rnd.choice(net.pending))  # duplicated
        elif r < 0.85:
            for c in net.cores.values():
                if c.is_leader():
                    try:
                        c.propose([b"w%d" % writes])
                        writes += 1
                    except ProposalDropped:
                        pass
        elif r < 0.89:
            c = net[rnd.choice(ids)]
            ctx = ("read", step)
            reads[ctx] = max(x.log.commit for x in net.cores.values())
            c.read_index(ctx)
        elif r < 0.93:
            a, b = rnd.sample(ids, 2)
            net.cut(a, b)
        elif r < 0.96:
            net.heal()
        elif r < 0.98:
            # crash and restart from the persisted state (everything up to the last Ready)
            c = net[rnd.choice(ids)]
            net.replace(RaftCore(c.id, ids, config(**cfg), random.Random(rnd.random()), c.hard_state,
                                 list(c.log.entries)))
        else:
            c = net[rnd.choice(ids)]
            if c.is_leader():
                c.transfer_leader(rnd.choice(ids))
        net.flush()
        check_invariants(net)
    # reads: a read index covers every write committed before the read was asked
    for rs in net.read_states.values():
        for ctx, index in rs:
            assert index >= reads[ctx]
    # liveness once the network is healthy again: one leader, every log equal and committed
    net.heal()
    net.deliver()

    def settled() -> bool:
        ld = net.leader()
        return ld is not None and all(
            c.term == ld.term and c.log.entries == ld.log.entries and c.log.commit == ld.log.last_index()
            for c in net.cores.values()
        )

    for _ in range(30 * ET):
        if settled():
            break
        net.tick(1)
    assert settled()
    check_invariants(net)

# ====================================================================== lost storage
# A node that lost its storage restarts with ``lost_state``: it may have forgotten a vote or an
# entry it acknowledged, so it never votes or campaigns again and is never counted in a quorum
# (commit, check-quorum, ReadIndex); it only follows the log, as a non-voting replica.


def lost_core(nid: int = 1, voters=(1, 2, 3, 4, 5), **kw) -> RaftCore:
    return RaftCore(nid, voters, config(**kw), random.Random(0), lost_state=True)


def test_lost_state_mark_is_persisted_in_the_hard_state():
    c = lost_core()
    rd = drain(c)
    assert rd.hard_state == HardState(0, NONE, 0, True)
    assert rd.messages == []


def test_lost_state_mark_in_hard_state_survives_a_restart():
    c = RaftCore(1, (1, 2, 3), config(), random.Random(0), hard_state=HardState(4, NONE, 0, True))
    assert c.lost_state
    assert drain(c).hard_state is None  # already persisted
    assert c.hard_state == HardState(4, NONE, 0, True)


def test_lost_node_never_votes_nor_campaigns():
    c = lost_core()
    drain(c)
    c.step(msg(M.PRE_VOTE, 1, 2, 5, log_term=4, index=9))
    c.step(msg(M.VOTE, 1, 2, 5, log_term=4, index=9))
    rd = drain(c)
    assert [(m.type, m.reject) for m in rd.messages] == [(M.PRE_VOTE_RESP, True), (M.VOTE_RESP, True)]
    assert (c.term, c.vote) == (5, NONE)
    assert rd.hard_state == HardState(5, NONE, 0, True)
    c.step(msg(M.TIMEOUT_NOW, 1, 2, 5))
    for _ in range(10 * ET):
        c.tick()
    sent = drain(c).messages
    assert (c.role, c.term) == (Role.FOLLOWER, 5)
    assert not [m for m in sent if m.type in (M.PRE_VOTE, M.VOTE)]


def test_lost_node_follows_the_log_and_marks_every_answer():
    c = lost_core(voters=(1, 2, 3))
    drain(c)
    append(c, 2, prev=5, prev_term=1, term=1)  # it cannot match: rejected
    (m,) = drain(c).messages
    assert (m.type, m.reject, m.index, m.context) == (M.APPEND_RESP, True, 5, LOST_STATE)
    append(c, 2, prev=0, prev_term=0, entries=ents([1, 1, 1]), commit=2)
    rd = drain(c)
    assert rd.entries == ents([1, 1, 1]) and rd.committed_entries == ents([1, 1])
    assert rd.messages == [msg(M.APPEND_RESP, 2, 1, 1, index=3, context=LOST_STATE)]
    heartbeat(c, 2, commit=3, context=7)  # a ReadIndex round: a lost node cannot confirm it
    rd = drain(c)
    assert rd.messages == [msg(M.HEARTBEAT_RESP, 2, 1, 1, context=LOST_STATE)]
    assert rd.committed_entries == ents([1], start=3)
    # being caught up changes nothing: only a membership change could re-add it
    assert c.lost_state and c.hard_state.lost_state


def test_lost_node_takes_commit_from_heartbeats_only_up_to_what_this_leader_verified():
    c = lost_core(voters=(1, 2, 3))
    # it got entries 1..3 from a stale leader of term 1
    append(c, 1, prev=0, prev_term=0, entries=ents([1, 1, 1]), commit=1, term=1)
    assert c.log.commit == 1
    # the leader of term 2 still thinks (from before the loss) that it matches up to 3
    heartbeat(c, 2, term=2, commit=3)
    assert (c.term, c.lead, c.log.commit) == (2, 2, 1)
    # an append of this leader verifies the log up to 2
    append(c, 2, prev=1, prev_term=1, entries=ents([1], start=2), commit=1)
    assert c.log.commit == 1
    heartbeat(c, 2, commit=3)
    assert c.log.commit == 2


def test_leader_never_counts_a_follower_that_lost_its_state():
    c = leader(terms=[1], caught_up=[2], check_quorum=False)
    assert c.log.commit == 2
    c.propose([b"x"])
    drain(c)
    # node 3 lost its storage (it got the log back since): it says so in every answer
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=3, context=LOST_STATE))
    pr = c.progress[3]
    assert pr.lost and pr.match == 3
    assert c.log.commit == 2  # 3 of 3 nodes hold entry 3, yet only the leader counts
    # its pre-loss answers, delivered late, are void
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=3))
    assert c.log.commit == 2
    c.step(msg(M.APPEND_RESP, 1, 2, c.term, index=3))
    assert c.log.commit == 3


def test_read_index_is_never_confirmed_by_a_lost_follower():
    c = leader(terms=[1], caught_up=[2, 3])
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=2, context=LOST_STATE))
    c.read_index("r")
    (ctx,) = {m.context for m in of(drain(c).messages, M.HEARTBEAT)}
    c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=LOST_STATE))
    c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=ctx))  # pre-loss style echo: void too
    assert drain(c).read_states == []
    c.step(msg(M.HEARTBEAT_RESP, 1, 2, c.term, context=ctx))
    assert drain(c).read_states == [ReadState("r", 2)]


def test_check_quorum_does_not_count_a_lost_follower():
    c = leader(terms=[1], caught_up=[2])
    c.step(msg(M.APPEND_RESP, 1, 3, c.term, index=2, context=LOST_STATE))
    for _ in range(ET):
        c.tick()  # node 2 was heard from in this timeout
        c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=LOST_STATE))
    assert c.is_leader()
    for _ in range(ET):
        c.tick()  # only the lost node answers
        if not c.is_leader():
            break
        c.step(msg(M.HEARTBEAT_RESP, 1, 3, c.term, context=LOST_STATE))
    assert (c.role, c.lead) == (Role.FOLLOWER, NONE)


def test_lost_node_rejoins_a_network_and_follows_the_log_but_counts_for_nothing():
    net = cluster(3, seed=4, terms=[1])
    ld = net.elect()
    ld.propose([b"a", b"b"])
    net.deliver()
    term = ld.term
    victim, other = [i for i in net.cores if i != ld.id]
    net.replace(RaftCore(victim, (1, 2, 3), config(), random.Random(9), lost_state=True))
    net.tick(3)
    v = net[victim]
    assert v.lost_state and ld.progress[victim].lost
    assert v.log.entries == ld.log.entries and v.log.commit == ld.log.commit
    assert ld.is_leader() and ld.term == term == v.term
    assert net.applied[victim] == ld.log.entries
    # with the healthy follower cut off, the leader replicates to the lost node but commits nothing
    net.isolate(other)
    ld.propose([b"c"])
    net.tick(2)
    assert v.log.entries == ld.log.entries
    assert ld.log.commit == ld.log.last_index() - 1
    net.heal()
    net.tick(2)
    assert ld.log.commit == ld.log.last_index() == v.log.commit


def assert_state_machine_safety(net: Net) -> None:
    """No two nodes ever apply different entries at the same index."""
    logs = [[(e.term, e.index) for e in a] for a in net.applied.values()]
    for x in logs:
        for y in logs:
            k = min(len(x), len(y))
            assert x[:k] == y[:k], f"applied logs diverge: {x} vs {y}"


def test_lost_node_cannot_help_a_stale_leader_commit():
    # Regression: an earlier design let a node that lost its disk acknowledge a stale leader's entry
    # (and count toward its quorum) before it had learnt the cluster's term.
    net = cluster(3, seed=5, terms=[1], commit=1)
    # node 1 leads term 2
    tick_until(net[1], lambda x: x.role != Role.FOLLOWER)
    net.deliver()
    net.tick(1, [1])
    assert net[1].is_leader() and net[1].term == 2 and net[3].log.commit == 2
    # node 1 stalls (it stops ticking: a long pause) just after writing "a", which reaches nobody
    net.isolate(1)
    net[1].propose([b"a"])
    net.drop()
    # nodes 2 and 3 elect node 2 in term 3; its noop is committed at index 3
    for _ in range(ET):
        net.tick(1, [2, 3])
    for _ in range(4 * ET):
        net.tick(1, [2])
        if net[2].is_leader():
            break
    net.tick(1, [2])
    assert net[2].is_leader() and net[2].term == 3
    assert net[2].log.commit == 3 and net[3].log.entries == net[2].log.entries
    assert net.applied[2][-1] == Entry(3, 3, None, EntryKind.NOOP)
    # node 3 loses its disk and restarts; node 1 wakes up and reaches it (not node 2)
    net.replace(RaftCore(3, (1, 2, 3), config(), random.Random(3), lost_state=True))
    net.heal()
    net.cut(1, 2)
    net.deliver()
    net.tick(3, [1])
    assert net[3].log.term(3) == 2  # node 3 took node 1's "a" ...
    assert net[1].log.commit == 2  # ... but node 1 did not count its ack
    assert_state_machine_safety(net)
    # node 2 reaches node 3 again and repairs it
    net.isolate(1)
    net.tick(3, [2, 3])
    assert net[3].log.entries == net[2].log.entries and net[3].log.commit == 3
    assert_state_machine_safety(net)
    assert net.applied[3][-1] == Entry(3, 3, None, EntryKind.NOOP)


def test_lost_node_never_votes_again_in_a_term_it_may_have_voted_in():
    # Regression: an earlier design let a node that lost its disk vote again once it had "caught
    # up", although the candidate it had voted for before could still win with that vote.
    net = Net(core(i, (1, 2, 3, 4, 5), terms=[1], seed=i) for i in (1, 2, 3, 4, 5))
    # node 3 leads term 2, everyone has its noop
    tick_until(net[3], lambda x: x.role != Role.FOLLOWER)
    net.deliver()
    net.tick(1, [3])
    assert net[3].is_leader() and net[3].term == 2
    assert all(c.log.last_index() == 2 and c.term == 2 for c in net.cores.values())
    # leader 3 is cut off for a while; node 2 campaigns for term 3 with the pre-votes of 1 and 4
    for i in (1, 2, 4, 5):
        net.cut(3, i)
    for _ in range(ET):
        net.tick(1, [1, 4, 5])  # their leases run out (their own timeouts are later)
    tick_until(net[2], lambda x: x.role == Role.PRE_CANDIDATE)
    net.deliver(lambda m: m.type == M.PRE_VOTE and m.to in (1, 4) or m.type == M.PRE_VOTE_RESP)
    assert net[2].role == Role.CANDIDATE and net[2].term == 3
    # node 1 grants node 2 its vote of term 3; node 2's requests to 4 and 5 are slow
    net.deliver(lambda m: m.type == M.VOTE and m.to == 1 or m.type == M.VOTE_RESP)
    assert (net[1].term, net[1].vote) == (3, 2) and net[2].votes == {2: True, 1: True}
    slow = net.drop(lambda m: m.frm == 2)
    # node 1 loses its disk and restarts; leader 3 (term 2) gives it the log back
    net.heal()
    for a, b in ((2, 1), (3, 4), (3, 5)):
        net.cut(a, b)
    net.replace(RaftCore(1, (1, 2, 3, 4, 5), config(), random.Random(1), lost_state=True))
    net.tick(2, [3])
    assert (net[1].term, net[1].vote, net[1].log.last_index()) == (2, NONE, 2)
    # node 2's slow request reaches node 4: node 2 wins term 3, with node 1's pre-loss vote
    (to4,) = [m for m in slow if m.type == M.VOTE and m.to == 4]
    net[4].step(to4)
    net.deliver(lambda m: m.type == M.VOTE_RESP and m.to == 2)
    assert net[2].is_leader() and net[2].term == 3
    # node 5 campaigns for term 3 as well; node 1 must not vote for it (the Net checks election safety)
    net.heal()
    net.isolate(2)
    net.isolate(4)
    for _ in range(ET):
        net.tick(1, [1])
    for _ in range(6 * ET):
        net.tick(1, [5])
    assert net[1].vote == NONE
    assert not (net[5].is_leader() and net[5].term == 3)
    assert net.two_leader_terms() == []


@pytest.mark.parametrize("jitter", [0, 3, None])
def test_randomized_election_timeout_spans_the_configured_jitter(jitter) -> None:
    c = core(election_jitter_ticks=jitter)
    seen = set()
    for _ in range(300):
        c._reset_randomized_timeout()
        seen.add(c.randomized_timeout)
    top = ET - 1 if jitter is None else jitter
    assert seen == set(range(ET, ET + top + 1))  # every value in range, none outside
