"""Durability on a real (local) Ray: nodes killed abruptly and restarted from their write-ahead
log, a whole cluster killed under load, corrupt and torn logs, and catch-up by snapshot."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from raft_actors import NodeStartupError, RaftCluster, RaftConfig, RaftError
from raft_actors.state_machines import get, put

from .conftest import cluster_with_keys, open_session, read_call, submit_call, wait_until
from .waiting import restarted

pytestmark = pytest.mark.timeout(300)


def roles(cluster) -> dict[int, str]:
    return cluster.status()["role"].to_dict()


def converged(cluster) -> bool:
    st = cluster.status()
    return st["applied_index"].notna().all() and st["applied_index"].nunique() == 1


def stale_state(cluster, node: int) -> dict:
    """Everything node ``node`` holds, read from that node alone."""
    h = cluster.handle(node)
    (keys,) = read_call(h, "stale", ("keys",))
    values = read_call(h, "stale", *[get(k) for k in sorted(keys.value)])
    return {k: v.value for k, v in zip(sorted(keys.value), values)}


def bulk_write(cluster, n: int, prefix: str, size: int = 8) -> None:
    """Commit ``n`` puts quickly (many in flight in one async client)."""

    async def go() -> None:
        client = cluster.async_client()
        for lo in range(0, n, 500):
            await asyncio.gather(*(client.submit(put(f"{prefix}{i}", "v" * size)) for i in range(lo, min(n, lo + 500))))
        await client.aclose()

    asyncio.run(go())


def wait_compacted_past(cluster, leader: int, victim: int) -> None:
    """Snapshots are taken in the background: wait until the leader's covers the victim's log."""

    def compacted() -> bool:
        st = cluster.status()
        return st.loc[leader, "snapshot_index"] > st.loc[victim, "log_length"]

    wait_until(compacted, what="the leader to compact past the victim's log")


def segments(data_dir: str) -> list[str]:
    return sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.startswith("wal-"))


# ---------------------------------------------------------------------- restarts keep a voter


def test_killed_node_restarts_from_its_log_as_a_voter(cluster_factory) -> None:
    cluster, client = cluster_with_keys(cluster_factory, 20)
    leader = cluster.leader()
    a, b = (i for i in cluster.node_ids if i != leader)
    term = int(cluster.status().loc[a, "term"])
    cluster.kill(a)
    client.submit(put("while", "down"))
    cluster.restart(a)
    st = cluster.status()
    assert st.loc[a, "role"] != "non-voter"  # its vote and log survived: still a voter
    assert int(st.loc[a, "term"]) >= term
    wait_until(lambda: converged(cluster), what="the restarted node to catch up")
    # it counts toward the quorum: with the other follower gone, leader + restarted node commit
    cluster.kill(b)
    assert client.submit(put("after", "restart"), timeout=20) is None
    assert stale_state(cluster, a)["k19"] == 19


def test_node_crashed_inside_its_process_is_restarted_by_ray_as_a_voter(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3)
    client = cluster.client()
    client.submit(put("x", 1))
    leader = cluster.leader()
    pid = int(cluster.status().loc[leader, "pid"])
    cluster.handle(leader).crash.remote()  # os._exit inside the actor
    client.submit(put("x", 2))
    wait_until(lambda: restarted(cluster.status(), leader, pid), what="ray to restart the actor")
    assert roles(cluster)[leader] != "non-voter"  # its log and vote survived the crash
    wait_until(lambda: converged(cluster), what="convergence")
    wait_until(lambda: roles(cluster)[leader] in ("follower", "leader"), what="the restarted node to rejoin")
    assert stale_state(cluster, leader)["x"] == 2


def test_every_node_killed_abruptly_under_load_loses_no_acknowledged_write(cluster_factory) -> None:
    cluster = cluster_factory(num_nodes=3, config=RaftConfig(request_timeout=2.0))
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        client = cluster.client()
        n = 0
        while not stop.is_set():
            key, value = f"w{w}-{n % 50}", f"{w}.{n}"
            try:
                client.submit(put(key, value))
            except RaftError:
                pass  # the cluster is being killed: an outcome may be unknown
            else:
                with lock:
                    acked[key] = value  # one writer per key: the last acknowledged value must win
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 100, what="load")
    ids = cluster.node_ids
    # abruptly: one exits inside its process (and is not restarted), the others are killed by Ray
    cluster.handle(ids[0]).crash.remote()
    for i in ids[1:]:
        cluster.kill(i)
    stop.set()
    for t in threads:
        t.join()
    with lock:
        expected = dict(acked)
    cluster.kill(ids[0])  # whatever Ray did with it, make it dead for good
    for i in ids:
        cluster.restart(i)
    assert all(r != "non-voter" for r in roles(cluster).values())
    client = cluster.client()
    for key, value in expected.items():
        got = client.query(get(key))
        # a write whose outcome was unknown may have landed after the last acknowledged one
        assert got == value or (got is not None and int(got.split(".")[1]) > int(value.split(".")[1])), key
    client.submit(put("final", "barrier"))
    wait_until(lambda: converged(cluster), what="every node to apply the same log")
    states = [stale_state(cluster, i) for i in ids]
    assert states[0] == states[1] == states[2]


def test_cluster_relaunched_from_its_data_directory_recovers_everything(ray_session, tmp_path) -> None:
    cfg = RaftConfig(snapshot_commands=50, keep_bytes=1000)
    with RaftCluster.launch(num_nodes=3, config=cfg, name="relaunch", data_dir=tmp_path) as cluster:
        bulk_write(cluster, 200, "a")
        cluster.client().submit(put("last", 1))
        # every node snapshots in the background once it has applied 50 commands
        wait_until(lambda: (cluster.status()["snapshot_index"] > 0).all(), what="snapshots on every node")
        before = cluster.status()
    with RaftCluster.launch(num_nodes=3, config=cfg, name="relaunch", data_dir=tmp_path) as again:
        client = again.client()
        assert client.query(get("a199")) == "v" * 8
        assert client.query(get("last")) == 1
        assert int(again.status()["term"].min()) >= int(before["term"].max())
        again.shutdown(delete_data=True)
    assert not tmp_path.exists()


def test_relaunch_with_a_node_whose_data_is_gone_makes_it_a_non_voter(ray_session, tmp_path) -> None:
    import shutil

    with RaftCluster.launch(num_nodes=3, name="relaunch-wiped", data_dir=tmp_path) as cluster:
        cluster.client().submit(put("kept", 1))
        gone = cluster.node_data_dir(3)
    shutil.rmtree(gone)  # say its disk was replaced while the cluster was down
    with RaftCluster.launch(num_nodes=3, name="relaunch-wiped", data_dir=tmp_path) as again:
        assert roles(again)[3] == "non-voter"  # it must not vote with an empty log
        assert again.client().query(get("kept")) == 1
        wait_until(lambda: converged(again), what="the wiped node to catch up")
        assert stale_state(again, 3)["kept"] == 1
        again.shutdown(delete_data=True)


# ---------------------------------------------------------------------- damaged logs


def killed_follower(cluster) -> tuple[int, str, str]:
    """Kill a follower; returns its id, its data directory and its last log segment."""
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    data = cluster.node_data_dir(victim)
    cluster.kill(victim)
    return victim, data, segments(data)[-1]


def test_corrupt_log_stops_the_node_with_file_and_offset_and_a_wiped_node_rejoins(cluster_factory) -> None:
    cluster, client = cluster_with_keys(cluster_factory, 30, config=RaftConfig(snapshot_commands=0, snapshot_bytes=0))
    victim, data, seg = killed_follower(cluster)
    with open(seg, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(NodeStartupError) as err:
        cluster.restart(victim)
    text = str(err.value)
    assert seg in text and "offset" in text
    assert "non-voter" not in set(roles(cluster).values())
    client.submit(put("still", "serving"))  # the other two carry on
    # the README's remedy: wipe the node's data and restart it; it rejoins as a non-voter
    import shutil

    shutil.rmtree(data)
    cluster.restart(victim)
    assert roles(cluster)[victim] == "non-voter"
    wait_until(lambda: converged(cluster), what="the wiped node to catch up")
    assert stale_state(cluster, victim)["still"] == "serving"


def test_torn_tail_is_cut_off_and_the_node_rejoins(cluster_factory) -> None:
    cluster, client = cluster_with_keys(cluster_factory, 10)
    victim, _, seg = killed_follower(cluster)
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")  # a record header cut short by a crash
    cluster.restart(victim)
    assert roles(cluster)[victim] != "non-voter"
    client.submit(put("after", 1))
    wait_until(lambda: converged(cluster), what="the repaired node to catch up")
    assert stale_state(cluster, victim)["after"] == 1


# ---------------------------------------------------------------------- snapshots


def test_node_down_for_thousands_of_entries_catches_up_by_snapshot(cluster_factory) -> None:
    cfg = RaftConfig(snapshot_commands=500, keep_bytes=10_000, snapshot_chunk_bytes=4096)
    cluster = cluster_factory(num_nodes=3, config=cfg)
    client = cluster.client()
    client.submit(put("first", 0))
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    victim_log = int(cluster.status().loc[victim, "log_length"])
    cluster.kill(victim)
    bulk_write(cluster, 3000, "k", size=32)
    others = [i for i in cluster.node_ids if i != victim]
    wait_until(lambda: (cluster.status().loc[others, "commands_applied"] > 3000).all(), what="both to apply")
    # a snapshot every 500 commands (a log entry carries a whole client call of them), taken in
    # the background: the log is compacted past what the victim holds
    wait_until(lambda: (cluster.status().loc[others, "snapshot_index"] > victim_log).all(), what="snapshots")
    st = cluster.status()
    assert (st.loc[others, "commands_since_snapshot"] <= 500 + cfg.client_batch).all()
    assert (st.loc[others, "log_entries"] <= 50).all()  # compacted: memory stays bounded
    cluster.restart(victim)
    wait_until(lambda: converged(cluster), timeout=60, what="catch-up by snapshot")
    st = cluster.status()
    assert st.loc[victim, "snapshots_received"] >= 1
    assert st.loc[victim, "snapshot_chunks_received"] > 10  # the state came in many chunks
    assert st.loc[victim, "role"] != "non-voter"
    state = stale_state(cluster, victim)
    assert len(state) == 3001 and state["k2999"] == "v" * 32
    assert state == stale_state(cluster, others[0])
    # and it keeps up from the log afterwards
    client.submit(put("later", 1))
    wait_until(lambda: converged(cluster), what="replication after the snapshot")
    assert stale_state(cluster, victim)["later"] == 1


def test_snapshot_transfer_cut_by_partitions_and_lossy_links_still_completes(cluster_factory) -> None:
    """Every snapshot the leader means to send ends in a report, even when a partition or an
    injected loss stops it; after healing, the follower catches up."""
    cfg = RaftConfig(snapshot_commands=50, keep_bytes=0, snapshot_chunk_bytes=1024)
    cluster = cluster_factory(num_nodes=3, config=cfg)
    leader = cluster.leader()
    victim = next(i for i in cluster.node_ids if i != leader)
    cluster.partition([victim])
    bulk_write(cluster, 400, "p", size=64)

    for round_ in range(3):  # heal, let a transfer start, cut it again, write more
        wait_compacted_past(cluster, leader, victim)
        chunks = cluster.status().loc[victim, "snapshot_chunks_received"]
        cluster.heal()
        wait_until(lambda c=chunks: cluster.status().loc[victim, "snapshot_chunks_received"] > c, what="a transfer")
        cluster.partition([victim])
        bulk_write(cluster, 100, f"q{round_}-", size=64)
    cluster.heal()
    cluster.inject(leader, drop_rate=0.5)  # half of everything the leader sends is lost
    bulk_write(cluster, 100, "r", size=64)
    cluster.heal()
    wait_until(lambda: converged(cluster), timeout=60, what="the follower to catch up after the faults")
    assert stale_state(cluster, victim)["r99"] == "v" * 64


def test_lagging_follower_serving_follower_reads_catches_up_by_snapshot(cluster_factory) -> None:
    """A lagging follower's own requests to the leader (ReadIndex for follower reads) are
    answered in the call's return value; a snapshot must never ride in such an answer."""
    cfg = RaftConfig(snapshot_commands=50, keep_bytes=0)
    cluster = cluster_factory(num_nodes=3, config=cfg)
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    pid = int(cluster.status().loc[victim, "pid"])
    cluster.partition([victim])
    bulk_write(cluster, 300, "k")
    leader = cluster.leader()
    wait_compacted_past(cluster, leader, victim)
    cluster.heal()

    async def reads() -> None:  # follower reads, many at once: half go to the lagging node
        client = cluster.async_client()
        for _ in range(20):
            await asyncio.gather(*(client.query(get("k299"), consistency="follower") for _ in range(50)))
        await client.aclose()

    asyncio.run(reads())
    wait_until(lambda: converged(cluster), what="catch-up")
    assert int(cluster.status().loc[victim, "pid"]) == pid  # it never crashed


def test_snapshot_keeps_client_sessions_so_a_retry_after_compaction_is_not_applied_twice(cluster_factory) -> None:
    from raft_actors import Counter

    cfg = RaftConfig(snapshot_commands=20, keep_bytes=0)
    cluster = cluster_factory(num_nodes=3, state_machine=Counter, config=cfg)
    session = open_session(cluster.handle(cluster.leader()))
    first = submit_call(cluster.handle(cluster.leader()), session, 1, ("add", 5))
    client = cluster.client()
    for _ in range(60):
        client.submit(("add", 1))
    victim = next(i for i in cluster.node_ids if i != cluster.leader())
    cluster.kill(victim)
    for _ in range(60):
        client.submit(("add", 1))
    cluster.restart(victim)
    wait_until(lambda: converged(cluster), what="catch-up")
    # the retry reaches a leader whose sessions came (at least partly) from snapshots
    cluster.transfer_leadership(victim)
    again = submit_call(cluster.handle(victim), session, 1, ("add", 5))
    assert first[0].value == again[0].value == 5
    assert client.query(("get",)) == 125
