"""Snapshots in the pure core: compaction, InstallSnapshot, restart from a snapshot.

The shell takes the snapshot of its state machine and tells the core (``compact``); the core
sends it to followers whose entries are gone (``SNAPSHOT``), and a follower installs it
(``Ready.snapshot``). The state itself never enters the core.
"""

from __future__ import annotations

import random

import pytest

from raft_actors.core import Entry, HardState, Message, MsgType, ProgressState, RaftCore, Role
from raft_actors.core.messages import SnapshotMeta
from raft_actors.core.raft import LOST_STATE
from tests.core_helpers import ET, Net, ack, config, core, drain, leader, of, terms_of

M = MsgType


def compacted_leader(n_entries: int = 20, snap_at: int = 15, keep: int = 0) -> RaftCore:
    """Leader 1 of (1, 2, 3) whose log 1..n is committed and applied, compacted at ``snap_at``."""
    ld = leader(terms=[1] * n_entries, caught_up=[3])
    ack(ld, 3)
    drain(ld)
    assert ld.log.applied == ld.log.last_index() == n_entries + 1  # + the leader's noop
    ld.compact(SnapshotMeta(snap_at, ld.log.term(snap_at), ld.voters), keep=keep)
    return ld


def reject_from(ld: RaftCore, frm: int, hint: int) -> Message:
    """Follower ``frm`` rejects the leader's outstanding probe; its log ends at ``hint``."""
    return Message(M.APPEND_RESP, ld.id, frm, ld.term, index=ld.progress[frm].next - 1, reject=True, reject_hint=hint)


def test_compact_drops_the_log_up_to_the_snapshot_and_keeps_what_follows():
    ld = compacted_leader(20, 15)
    assert ld.log.offset == 15 and ld.log.offset_term == 1
    assert [e.index for e in ld.log.entries] == list(range(16, 22))
    assert ld.snapshot == SnapshotMeta(15, 1, (1, 2, 3))
    assert ld.log.term(14) is None and ld.log.term(15) == 1


def test_compact_keeps_trailing_entries_when_asked():
    ld = compacted_leader(20, 15, keep=5)
    assert ld.snapshot.index == 15
    assert ld.log.offset == 10 and ld.log.term(11) == 1


def test_compact_beyond_applied_or_with_wrong_term_is_refused():
    c = core(terms=[1, 1, 1], commit=3)
    drain(c)  # applies 1..3
    with pytest.raises(ValueError, match="beyond the applied"):
        c.compact(SnapshotMeta(4, 1, (1, 2, 3)))
    with pytest.raises(ValueError, match="does not match"):
        c.compact(SnapshotMeta(2, 7, (1, 2, 3)))
    c.compact(SnapshotMeta(2, 1, (1, 2, 3)))
    c.compact(SnapshotMeta(1, 1, (1, 2, 3)))  # older than the one held: nothing happens
    assert c.snapshot.index == 2 and c.log.offset == 2


def test_follower_behind_the_compacted_log_is_sent_the_snapshot_and_nothing_else_until_it_lands():
    ld = compacted_leader(20, 15)
    # follower 2 answers the probe: it has nothing at all
    ld.step(reject_from(ld, 2, hint=0))
    snaps = of(drain(ld).messages, M.SNAPSHOT, to=2)
    assert len(snaps) == 1 and snaps[0].snapshot == SnapshotMeta(15, 1, (1, 2, 3))
    pr = ld.progress[2]
    assert pr.state == ProgressState.SNAPSHOT and pr.pending_snapshot == 15
    # while it is pending: no appends to 2, not even after new proposals or heartbeat answers
    ld.propose([b"x"])
    ld.step(Message(M.HEARTBEAT_RESP, 1, 2, ld.term))
    ld.tick()
    assert not of(drain(ld).messages, M.APPEND, to=2)
    assert not of(drain(ld).messages, M.SNAPSHOT, to=2)


def test_follower_installs_a_snapshot_replacing_its_log_and_the_leader_resumes_after_it():
    ld = compacted_leader(20, 15)
    f = core(2, terms=[1, 1, 2, 2], term=2)  # a conflicting suffix of term 2 at 3..4
    ld.step(reject_from(ld, 2, hint=0))
    snap = of(drain(ld).messages, M.SNAPSHOT, to=2)[0]
    f.step(snap)
    rd = drain(f)
    assert rd.snapshot == snap.snapshot
    assert (f.log.offset, f.log.offset_term, f.log.entries) == (15, 1, [])
    assert f.log.commit == f.log.applied == 15
    assert rd.hard_state is not None and rd.hard_state.commit == 15
    assert rd.committed_entries == []  # the snapshot holds them: the state machine restores it
    (resp,) = of(rd.messages, M.APPEND_RESP, to=1)
    assert resp.index == 15 and not resp.reject
    # the shell reports the snapshot sent, the leader hears the answer and streams the rest
    ld.report_snapshot(2, True)
    ld.step(resp)
    assert ld.progress[2].state == ProgressState.REPLICATE and ld.progress[2].match == 15
    appends = of(drain(ld).messages, M.APPEND, to=2)
    assert appends and appends[0].index == 15 and appends[0].log_term == 1
    for m in appends:
        f.step(m)
    assert f.log.last_index() == ld.log.last_index()
    assert f.log.entries == ld.log.entries


def test_follower_holding_the_snapshot_entry_keeps_its_log_and_only_commits():
    f = core(2, terms=[1] * 18, term=1)
    f.step(Message(M.SNAPSHOT, 2, 1, 1, snapshot=SnapshotMeta(15, 1, (1, 2, 3))))
    rd = drain(f)
    assert rd.snapshot is None
    assert f.log.commit == 15 and f.log.last_index() == 18 and f.log.offset == 0
    assert [e.index for e in rd.committed_entries] == list(range(1, 16))
    assert of(rd.messages, M.APPEND_RESP)[0].index == 15


def test_stale_snapshot_is_ignored_and_answered_with_the_commit_index():
    f = core(2, terms=[1] * 10, term=1, commit=8)
    drain(f)
    f.step(Message(M.SNAPSHOT, 2, 1, 1, snapshot=SnapshotMeta(5, 1, (1, 2, 3))))
    rd = drain(f)
    assert rd.snapshot is None and f.log.last_index() == 10 and f.log.commit == 8
    assert of(rd.messages, M.APPEND_RESP)[0].index == 8


def test_snapshot_from_a_newer_term_makes_a_candidate_follow_and_a_stale_one_is_answered():
    c = core(2, terms=[1], term=1, pre_vote=False)
    while c.role != Role.CANDIDATE:
        c.tick()
    drain(c)
    c.step(Message(M.SNAPSHOT, 2, 3, c.term + 1, snapshot=SnapshotMeta(5, 2, (1, 2, 3))))
    assert c.role == Role.FOLLOWER and c.lead == 3 and c.log.offset == 5
    rd = drain(c)
    c.step(Message(M.SNAPSHOT, 2, 1, 1, snapshot=SnapshotMeta(9, 1, (1, 2, 3))))
    (resp,) = drain(c).messages
    assert resp.type == M.APPEND_RESP and resp.term == c.term and c.log.offset == 5
    assert rd.snapshot is not None


def test_failed_snapshot_is_sent_again_when_the_follower_next_answers():
    ld = compacted_leader(20, 15)
    ld.step(reject_from(ld, 2, hint=0))
    assert of(drain(ld).messages, M.SNAPSHOT, to=2)
    ld.report_snapshot(2, False)
    assert ld.progress[2].state == ProgressState.PROBE
    ld.step(Message(M.HEARTBEAT_RESP, 1, 2, ld.term))
    again = of(drain(ld).messages, M.SNAPSHOT, to=2)
    assert len(again) == 1 and ld.progress[2].state == ProgressState.SNAPSHOT


def test_delivered_snapshot_report_waits_for_the_answer_before_probing():
    ld = compacted_leader(20, 15)
    ld.step(reject_from(ld, 2, hint=0))
    drain(ld)
    ld.report_snapshot(2, True)
    pr = ld.progress[2]
    assert pr.state == ProgressState.PROBE and pr.next == 16 and pr.is_paused()
    assert not drain(ld).messages  # paused until the follower's answer or a heartbeat answer
    ld.step(Message(M.HEARTBEAT_RESP, 1, 2, ld.term))
    (probe,) = of(drain(ld).messages, M.APPEND, to=2)
    assert probe.index == 15 and probe.log_term == 1


def test_report_for_a_follower_not_waiting_for_a_snapshot_changes_nothing():
    ld = compacted_leader(20, 15)
    before = (ld.progress[3].state, ld.progress[3].match, ld.progress[3].next)
    ld.report_snapshot(3, False)
    ld.report_snapshot(9, True)
    assert (ld.progress[3].state, ld.progress[3].match, ld.progress[3].next) == before


def test_follower_slightly_behind_gets_the_kept_entries_not_a_snapshot():
    ld = compacted_leader(20, 15, keep=5)
    ld.step(reject_from(ld, 2, hint=12))
    msgs = drain(ld).messages
    assert not of(msgs, M.SNAPSHOT)
    (app,) = of(msgs, M.APPEND, to=2)
    assert app.index == 12 and app.entries[0].index == 13


def test_core_restarted_from_a_snapshot_continues_the_log_after_it():
    snap = SnapshotMeta(10, 2, (1, 2, 3))
    after = [Entry(2, 11, b"a"), Entry(3, 12, b"b")]
    c = RaftCore(1, (1, 2, 3), config(), random.Random(0), HardState(3, 0, 11), after, snapshot=snap)
    assert (c.log.offset, c.log.offset_term, c.log.last_index(), c.log.last_term()) == (10, 2, 12, 3)
    assert c.log.applied == 10 and c.log.commit == 11 and c.snapshot == snap
    assert [e.index for e in drain(c).committed_entries] == [11]
    # a commit index older than the snapshot (cannot be persisted that way, but be safe) is raised to it
    c2 = RaftCore(1, (1, 2, 3), config(), random.Random(0), HardState(3, 0, 4), [], snapshot=snap)
    assert c2.log.commit == 10 and c2.log.last_index() == 10


def test_vote_of_a_restored_node_compares_the_snapshot_end_when_the_log_is_empty():
    snap = SnapshotMeta(10, 2, (1, 2, 3))
    c = RaftCore(1, (1, 2, 3), config(), random.Random(0), HardState(2, 0, 10), [], snapshot=snap)
    c.step(Message(M.VOTE, 1, 2, 3, log_term=2, index=9))
    assert drain(c).messages[0].reject
    c.step(Message(M.VOTE, 1, 3, 3, log_term=2, index=10))
    assert not drain(c).messages[0].reject


def test_node_that_lost_its_state_installs_a_snapshot_and_may_commit_up_to_it():
    f = core(2, lost_state=True)
    f.step(Message(M.SNAPSHOT, 2, 1, 4, snapshot=SnapshotMeta(30, 3, (1, 2, 3))))
    rd = drain(f)
    assert rd.snapshot is not None and f.log.commit == 30
    assert of(rd.messages, M.APPEND_RESP)[0].context == LOST_STATE
    f.step(Message(M.HEARTBEAT, 2, 1, 4, commit=30))
    assert f.log.commit == 30


def test_cluster_with_a_compacting_leader_brings_a_restarted_empty_follower_up_to_date():
    net = Net(core(i, (1, 2, 3), seed=i) for i in (1, 2, 3))
    ld = net.elect()
    f = next(i for i in (1, 2, 3) if i != ld.id)
    net.down.add(f)
    for k in range(30):
        ld.propose([f"c{k}".encode()])
        net.deliver()
    ld.compact(SnapshotMeta(ld.log.applied, ld.log.term(ld.log.applied), ld.voters))
    for k in range(5):
        ld.propose([f"d{k}".encode()])
        net.deliver()
    # the follower comes back with its log intact but far behind: it needs the snapshot
    net.down.discard(f)
    net.tick(3 * ET)
    fc = net[f]
    assert net.snapshots[f] and net.snapshots[f][-1].index >= 31
    assert fc.log.last_index() == ld.log.last_index() and fc.log.commit == ld.log.commit
    assert fc.log.entries == ld.log.slice(fc.log.offset + 1, ld.log.last_index() + 1)
    # what it applied after the snapshot continues exactly where the snapshot ends
    applied = [e.index for e in net.applied[f] if e.index > net.snapshots[f][-1].index]
    assert applied == list(range(net.snapshots[f][-1].index + 1, ld.log.commit + 1))
    assert terms_of(fc) == [e.term for e in ld.log.slice(fc.log.offset + 1, ld.log.last_index() + 1)]
