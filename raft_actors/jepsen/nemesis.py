"""Nemeses: the faults a Jepsen-style test injects into a live cluster, one at a time, on a
schedule a seed decides.

Each nemesis has a name (what ``--nemesis`` takes) and two steps: :meth:`Nemesis.start` breaks
something and returns what it did (for the fault timeline), :meth:`Nemesis.stop` repairs it.

- ``partition``: cut the network: the leader alone, two random halves, a *bridge* (3 nodes: the
  two ends cannot talk, the middle talks to both) or a *ring* (5 or more: each node talks to its
  neighbours only, so every node sees a majority and no two see the same one), or a one-way cut
  (a node's messages to the others are lost, or theirs to it);
- ``kill``: kill the leader, a random node or a minority at once, and restart them later;
- ``pause``: freeze a node's process (``SIGSTOP``: the leader or any node) for 0.5-5 s, then
  ``SIGCONT``: the classic stale leader, which wakes up thinking it still leads;
- ``net``: an unreliable network on every node (the MIT 6.5840 one): 10% of messages lost (its
  requests and its answers), the rest delayed 0-27 ms, 10% of them 0.2-2.2 s (so they arrive out
  of order), 5% duplicated;
- ``membership``: add a node (learner, caught up, promoted), or remove a random voter or the
  leader, while clients run; the cluster keeps at least 3 voters;
- ``disk``: a node's fsync fails or its disk is full (it must stop, not go on as if its writes
  were durable: Ray restarts it and it replays its disk), or, while a follower is down, the tail
  of its write-ahead log is torn (it must repair it and rejoin) or a bit of its last record
  flipped (it must refuse to start: detected, never served; it is then replaced by a new node).
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from ..cluster import RaftCluster, _on_ray_node
from ..errors import NodeStartupError, RaftError


@dataclass
class Fault:
    """One fault as the timeline shows it."""

    nemesis: str
    what: str
    start: float = 0.0
    end: float | None = None
    nodes: list[int] = field(default_factory=list)
    detail: str = ""
    state: Any = None  # what stop() needs


class Context:
    """What a nemesis works with: the cluster, the seeded random numbers, the clock."""

    def __init__(self, cluster: RaftCluster, rng: random.Random, t0: float):
        self.cluster = cluster
        self.rng = rng
        self.t0 = t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def members(self) -> list[int]:
        return sorted(self.cluster.node_ids)

    def voters(self) -> list[int]:
        try:
            return sorted(self.cluster.configuration(timeout=5).voters)
        except RaftError:
            return self.members()

    def leader(self) -> int | None:
        try:
            return self.cluster.leader(timeout=5)
        except RaftError:
            return None


class Nemesis:
    """A kind of fault (see the module doc)."""

    name = ""
    #: how long a fault of this kind is held, seconds (low, high)
    hold = (1.0, 4.0)

    def start(self, ctx: Context) -> Fault | None:
        raise NotImplementedError

    def stop(self, ctx: Context, fault: Fault) -> None:
        raise NotImplementedError


class Partition(Nemesis):
    name = "partition"
    hold = (1.0, 5.0)

    def start(self, ctx: Context) -> Fault | None:
        nodes = ctx.members()
        rng = ctx.rng
        kind = rng.choice(["leader", "halves", "ring", "one-way"])
        links: set[tuple[int, int]] = set()
        if kind == "leader":
            leader = ctx.leader() or rng.choice(nodes)
            links = {(a, b) for a in nodes for b in nodes if a != b and leader in (a, b)}
            what = f"isolate the leader {leader}"
        elif kind == "halves":
            shuffled = nodes[:]
            rng.shuffle(shuffled)
            cut = rng.randrange(1, len(shuffled))
            side = set(shuffled[:cut])
            links = {(a, b) for a in nodes for b in nodes if (a in side) != (b in side)}
            what = f"halves {sorted(side)} | {sorted(set(nodes) - side)}"
        elif kind == "ring":
            order = nodes[:]
            rng.shuffle(order)
            n = len(order)
            if n < 5:  # a bridge: the ends cannot talk, the middle node talks to both
                a, b = order[0], order[-1]
                links = {(a, b), (b, a)}
                what = f"bridge {order[0]} - {order[1:-1]} - {order[-1]}"
            else:  # a ring: each node hears its neighbours within n // 2 // 2 hops, a majority with itself
                reach = (n // 2 + 1) // 2
                near = {(order[i], order[(i + d) % n]) for i in range(n) for d in range(-reach, reach + 1)}
                links = {(a, b) for a in nodes for b in nodes if a != b and (a, b) not in near}
                what = f"majority ring {order}"
        else:
            x = rng.choice(nodes)
            if rng.random() < 0.5:
                links = {(x, b) for b in nodes if b != x}
                what = f"one-way: node {x} cannot send"
            else:
                links = {(b, x) for b in nodes if b != x}
                what = f"one-way: node {x} cannot hear"
        ctx.cluster.cut(links)
        return Fault(self.name, what, nodes=sorted({a for a, _ in links} | {b for _, b in links}))

    def stop(self, ctx: Context, fault: Fault) -> None:
        ctx.cluster.heal()


class Kill(Nemesis):
    name = "kill"
    hold = (1.0, 4.0)

    def start(self, ctx: Context) -> Fault | None:
        nodes, rng = ctx.members(), ctx.rng
        kind = rng.choice(["leader", "random", "minority"])
        if kind == "leader":
            victims = [ctx.leader() or rng.choice(nodes)]
        elif kind == "random":
            victims = [rng.choice(nodes)]
        else:
            victims = rng.sample(nodes, max(1, (len(nodes) - 1) // 2))
        for v in victims:
            ctx.cluster.kill(v)
        return Fault(self.name, f"kill {kind} {victims}", nodes=victims, state=victims)

    def stop(self, ctx: Context, fault: Fault) -> None:
        for v in fault.state:
            with contextlib.suppress(RaftError, ray.exceptions.RayError):
                ctx.cluster.restart(v)


class Pause(Nemesis):
    name = "pause"
    hold = (0.5, 5.0)

    def start(self, ctx: Context) -> Fault | None:
        nodes, rng = ctx.members(), ctx.rng
        victim = (ctx.leader() if rng.random() < 0.6 else None) or rng.choice(nodes)
        ctx.cluster.pause(victim)
        return Fault(self.name, f"pause node {victim} (SIGSTOP)", nodes=[victim], state=victim)

    def stop(self, ctx: Context, fault: Fault) -> None:
        with contextlib.suppress(RaftError, ray.exceptions.RayError):
            ctx.cluster.resume(fault.state)


class Net(Nemesis):
    name = "net"
    hold = (2.0, 6.0)

    def start(self, ctx: Context) -> Fault | None:
        hit = []
        for n in ctx.members():
            with contextlib.suppress(RaftError, ray.exceptions.RayError):  # a node down now is left alone
                ctx.cluster.inject(n, drop_rate=0.1, delay=0.027, duplicate_rate=0.05, long_delay_rate=0.1,
                                   long_delay=(0.2, 2.2))
                hit.append(n)
        return Fault(self.name, "10% loss, 0-27 ms delays, 10% delayed 0.2-2.2 s, 5% duplicated", nodes=hit)

    def stop(self, ctx: Context, fault: Fault) -> None:
        ctx.cluster.heal()


class Membership(Nemesis):
    name = "membership"
    hold = (0.5, 2.0)

    def start(self, ctx: Context) -> Fault | None:
        rng, cl = ctx.rng, ctx.cluster
        voters = ctx.voters()
        grow = len(voters) <= 3 or (len(voters) < 5 and rng.random() < 0.5)
        try:
            if grow:
                new = cl.add_node(timeout=60)
                return Fault(self.name, f"add node {new} (learner, caught up, promoted)", nodes=[new])
            leader = ctx.leader()
            victim = leader if leader is not None and rng.random() < 0.4 else rng.choice(voters)
            cl.remove_node(victim, timeout=60)
            return Fault(self.name, f"remove {'the leader ' if victim == leader else 'node '}{victim}", nodes=[victim])
        except RaftError as exc:  # refused (e.g. another fault left no healthy quorum): part of the run
            return Fault(self.name, f"change refused: {type(exc).__name__}: {exc}"[:200])

    def stop(self, ctx: Context, fault: Fault) -> None:
        pass  # a membership change stays


class Disk(Nemesis):
    name = "disk"
    hold = (1.0, 3.0)

    def start(self, ctx: Context) -> Fault | None:
        rng, cl = ctx.rng, ctx.cluster
        nodes = ctx.members()
        kind = rng.choice(["fail_fsync", "full", "torn", "bitflip"])
        if kind in ("fail_fsync", "full"):
            victim = rng.choice(nodes)
            cl.disk_fault(victim, kind)
            what = {"fail_fsync": "fsync fails", "full": "disk full"}[kind]
            return Fault(self.name, f"node {victim}: {what} (it must stop)", nodes=[victim], state=(kind, victim))
        leader = ctx.leader()
        victim = rng.choice([n for n in nodes if n != leader] or nodes)
        where = _node_machine(cl, victim)  # while it runs: the machine its disk is on
        cl.kill(victim)
        return Fault(self.name, f"node {victim} down, its log's tail to be {'torn' if kind == 'torn' else 'bit-flipped'}",
                     nodes=[victim], state=(kind, victim, where))

    def stop(self, ctx: Context, fault: Fault) -> None:
        kind, victim = fault.state[:2]
        cl = ctx.cluster
        if kind in ("fail_fsync", "full"):
            # Ray restarts the node that stopped; wait until it answers (or bring it back)
            _wait_back(cl, victim)
            fault.detail = "stopped and came back"
            return
        where = fault.state[2]
        damaged = ray.get(_damage_log.options(**_on_ray_node(where)).remote(cl.node_data_dir(victim), kind),
                          timeout=30)
        try:
            cl.restart(victim)
            fault.detail = ("restarted" if kind == "torn" else
                            "BIT FLIP NOT DETECTED: the node started") + f" ({damaged})"
        except NodeStartupError as exc:
            fault.detail = f"detected, refused to start: {exc}; replaced"
            with contextlib.suppress(RaftError):
                cl.replace_node(victim, timeout=90)


def _node_machine(cl: RaftCluster, node: int) -> str | None:
    """The Ray node id of the machine a (running) node is on."""
    with contextlib.suppress(Exception):
        st = cl.status()
        if "ray_node" in st.columns and node in st.index:
            where = st.loc[node, "ray_node"]
            return where if isinstance(where, str) and where else None
    return None


def _wait_back(cl: RaftCluster, node: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            st = cl.status()
            if node in st.index and st.loc[node, "role"] not in ("dead", "unreachable", "starting", "failed"):
                return
        time.sleep(0.2)
    with contextlib.suppress(RaftError, ray.exceptions.RayError):
        cl.restart(node)


@ray.remote(num_cpus=0)
def _damage_log(data_dir: str, kind: str) -> str:
    """On the node's machine: tear the tail of its last log segment (cut a few bytes off the
    last record) or flip a bit inside the last record (checksummed: it must be detected)."""
    segs = sorted(glob.glob(os.path.join(data_dir, "wal-*.log")))
    if not segs:
        return "no log segment"
    seg = segs[-1]
    size = os.path.getsize(seg)
    if size < 64:
        return f"{os.path.basename(seg)} too short"
    with open(seg, "r+b") as f:
        if kind == "torn":
            f.truncate(size - 7)
            return f"{os.path.basename(seg)}: 7 bytes cut off the end"
        pos = size - 24  # inside the last record's payload, before its final checksum
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
        return f"{os.path.basename(seg)}: a bit flipped at byte {pos}"


NEMESES: dict[str, type[Nemesis]] = {n.name: n for n in (Partition, Kill, Pause, Net, Membership, Disk)}
