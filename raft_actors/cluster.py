"""The driver: launch a Raft cluster of node actors on Ray, inspect it, break it, heal it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self

import cloudpickle
import ray

from .channel import Channel
from .client import AsyncRaftClient, RaftClient
from .config import RaftConfig
from .core.membership import ConfState
from .core.messages import SnapshotMeta
from .envelope import loads
from .errors import (
    ClusterUnavailableError,
    MembershipChangeError,
    NodeNotFoundError,
    NodeStartupError,
    NotLeaderError,
    RaftTimeoutError,
)
from .node import CONCURRENCY_GROUPS, RaftNode, node_actor_name
from .placement import Placement, choose_slots, slot_options
from .state_machines import KVStore

if TYPE_CHECKING:  # imported where a table is made: a script that never asks for one does not load pandas
    import pandas as pd

log = logging.getLogger(__name__)

_STATUS_TIMEOUT = 2.0
#: the Ray namespace of the node actors unless ``launch``/``connect`` say otherwise
DEFAULT_NAMESPACE = "raft_actors"
#: environment variable naming the default root of node data directories
DATA_DIR_ENV = "RAFT_ACTORS_DATA_DIR"


def default_data_root() -> str:
    """Where node data lives unless ``data_dir`` says otherwise: ``$RAFT_ACTORS_DATA_DIR``, or
    ``raft_actors`` in the system's temporary directory (``/tmp/raft_actors`` on Linux)."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join(tempfile.gettempdir(), "raft_actors")


class RaftCluster:
    """A running Raft cluster: one Ray actor per node.

    Create one with :meth:`launch`; use it as a context manager to shut it down::

        with RaftCluster.launch(num_nodes=3, state_machine=KVStore) as cluster:
            client = cluster.client()
            client.submit(("put", "x", 1))
            assert client.query(("get", "x")) == 1
    """

    def __init__(self, name: str, nodes: dict[int, Any], config: RaftConfig, state_machine: bytes,
                 actor_options: dict[str, Any], owns_ray: bool, data_dir: str | None = None,
                 namespace: str = DEFAULT_NAMESPACE, placement: Placement = "auto"):
        self.name = name
        self.namespace = namespace
        self.data_dir = data_dir
        self.placement: Placement = placement
        self._slots: dict[int, str | None] = {}
        self._bootstrap: dict[int, list[int]] = {}  # each node's initial voters (empty: it joined later)
        #: what add_node/remove_node/replace_node did, with timings (``membership_log()``)
        self._membership_events: list[dict[str, Any]] = []
        self.config = config
        self._nodes = nodes
        self._state_machine = state_machine
        self._actor_options = actor_options
        self._owns_ray = owns_ray
        self._dead: set[int] = set()
        self._errors: dict[int, str] = {}  # why a node is dead, when known
        self._closed = False
        self._clients: weakref.WeakSet[RaftClient] = weakref.WeakSet()
        self._pids: dict[int, tuple[int, str | None]] = {}  # process of a node paused (to resume it)

    # ------------------------------------------------------------------ launch
    @classmethod
    def launch(
        cls,
        num_nodes: int = 3,
        state_machine: Callable[[], Any] = KVStore,
        config: RaftConfig | None = None,
        *,
        address: str | None = None,
        name: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        actor_options: dict[str, Any] | None = None,
        wait_for_leader: float | None = 30.0,
        storage: Literal["file", "memory"] = "file",
        data_dir: str | os.PathLike | None = None,
        placement: Placement = "auto",
    ) -> RaftCluster:
        """Start ``num_nodes`` node actors and wait until they have elected a leader.

        Each node keeps a write-ahead log and snapshots in ``<data_dir>/node-<id>`` and replays
        them when it starts, so launching again with the same ``name`` and ``data_dir``
        recovers a cluster that was stopped or crashed.

        Args:
            num_nodes: cluster size (odd sizes make the most of each node).
            state_machine: a zero-argument factory of the state machine, usually the class; it
                may be defined in your own script or notebook (cloudpickle carries it).
            config: protocol and timing settings.
            address: an existing Ray cluster (``"auto"`` or ``"ray://..."``); by default Ray is
                started in this process (and shut down with the cluster) unless already running.
            name: a name for the cluster (random if not given). The nodes are named detached
                actors ``<name>-node-<id>`` in ``namespace``: they outlive this driver, and
                :meth:`connect` finds them from another one.
            namespace: the Ray namespace of the node actors.
            actor_options: extra ``ray.remote`` options for the node actors.
            wait_for_leader: seconds to wait for the first leader (``None``: don't wait).
            storage: ``"file"`` (durable, the default) or ``"memory"`` (faster, and a node that
                restarts has lost everything: it rejoins as a non-voter).
            data_dir: the cluster's data directory, on the machine of each node (default:
                ``<default_data_root()>/<name>``).
            placement: how nodes are spread over machines (see :mod:`raft_actors.placement`):
                ``"auto"`` pins each node to its own machine by a ``raft_slot_<name>`` custom
                resource when the Ray cluster offers enough slots, and leaves nodes unpinned
                when it offers none (one machine); ``"slots"`` requires a slot per node;
                ``None`` never pins.
        """
        if num_nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if not callable(state_machine):
            raise TypeError("state_machine must be a class or a zero-argument factory")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
        config = config or RaftConfig()
        owns_ray = _init_ray(address, namespace)
        name = name or f"raft-{uuid.uuid4().hex[:8]}"
        # a threaded actor: its methods run on the threads of their concurrency group (see node.py)
        options = {"num_cpus": 0, "max_restarts": 10, "max_task_retries": 0, "max_concurrency": 2}
        options.update(actor_options or {})
        sm = cloudpickle.dumps(state_machine)
        root = None
        if storage == "file":
            root = os.path.abspath(os.fspath(data_dir)) if data_dir is not None else os.path.join(default_data_root(), name)
        cluster = cls(name, {}, config, sm, options, owns_ray, root, namespace, placement)
        ids = list(range(1, num_nodes + 1))
        try:
            if cluster._existing_node_names():
                raise ValueError(f"a cluster named {name!r} is running in namespace {namespace!r}: "
                                 f"RaftCluster.connect({name!r}) to use it")
            slots = choose_slots(num_nodes, (), placement)
            for i, slot in zip(ids, slots, strict=True):
                cluster._slots[i] = slot
                cluster._bootstrap[i] = ids
                cluster._nodes[i] = cluster._new_actor(i, ids, restarted=False, wait_for_start=True)
            # a node that finds nothing while others have state (its disk was replaced or
            # wiped, or it landed elsewhere) has lost its state: it must not vote
            had = cluster._call_all(lambda i, h: h.has_state.remote())
            existing = any(had.values())
            starts = {i: h.start.remote(existing) for i, h in cluster._nodes.items() if i not in cluster._dead}
            for i, ref in starts.items():
                try:
                    ray.get(ref, timeout=_STATUS_TIMEOUT * 30)
                except ray.exceptions.RayTaskError as exc:  # e.g. its log is corrupt: the others go on
                    cluster._failed(i, f"node {i} failed to start: {_summary(str(exc))}")
            cluster._connect_all()
            if wait_for_leader is not None:
                cluster.leader(timeout=wait_for_leader)
        except BaseException:
            cluster.shutdown()  # leave no actors (or a Ray we started) behind
            raise
        return cluster

    @classmethod
    def connect(cls, name: str, *, address: str | None = "auto", namespace: str = DEFAULT_NAMESPACE,
                timeout: float = 30.0) -> RaftCluster:
        """A driver for a running cluster launched elsewhere (by another driver, maybe one that
        has exited): its nodes are named detached actors in ``namespace``.

        ``address`` is the Ray cluster to join (ignored if Ray is already initialized here).
        The returned object manages the cluster as :meth:`launch`'s does; :meth:`shutdown`
        stops the nodes, while leaving the driver without shutting down is always fine.
        Raises :class:`~raft_actors.errors.ClusterUnavailableError` if no node answers.
        """
        owns_ray = _init_ray(address, namespace)
        probe = cls(name, {}, RaftConfig(), b"", {}, owns_ray, None, namespace)
        handles = {}
        for actor_name in probe._existing_node_names():
            node_id = int(actor_name.rsplit("-", 1)[1])
            with contextlib.suppress(ValueError):
                handles[node_id] = ray.get_actor(actor_name, namespace=namespace)
        deadline = time.monotonic() + timeout
        info = None
        while handles and info is None:
            refs = [h.describe.remote() for h in handles.values()]
            ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.1, deadline - time.monotonic()))
            for ref in ready:
                with contextlib.suppress(ray.exceptions.RayError):
                    info = ray.get(ref)
            if info is None and time.monotonic() >= deadline:
                break
        if info is None:
            if owns_ray:
                ray.shutdown()
            raise ClusterUnavailableError(f"no running node of cluster {name!r} in namespace {namespace!r}")
        node_dir = info["data_dir"]
        cluster = cls(name, handles, info["config"], info["state_machine"], info["actor_options"], owns_ray,
                      os.path.dirname(node_dir) if node_dir else None, namespace)
        for node_id, h in handles.items():
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                d = ray.get(h.describe.remote(), timeout=_STATUS_TIMEOUT)
                cluster._slots[node_id], cluster._bootstrap[node_id] = d["slot"], d["bootstrap"]
        return cluster

    def _existing_node_names(self) -> list[str]:
        """Names of this cluster's node actors that Ray knows of (alive or restarting)."""
        prefix = node_actor_name(self.name, 0)[:-1]
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["namespace"] == self.namespace and a["name"].startswith(prefix)
                      and a["name"][len(prefix):].isdigit())

    def node_data_dir(self, node_id: int) -> str | None:
        """The data directory of a node (on its machine); ``None`` with in-memory storage."""
        return None if self.data_dir is None else os.path.join(self.data_dir, f"node-{node_id}")

    def _new_actor(self, node_id: int, ids: list[int] | None, restarted: bool, wait_for_start: bool = False) -> Any:
        if ids is None:
            ids = self._bootstrap.get(node_id, [])
        slot = self._slots.get(node_id)
        actor_cls = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(RaftNode).options(
            name=node_actor_name(self.name, node_id), namespace=self.namespace, lifetime="detached",
            **{**self._actor_options, **slot_options(slot)},
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                return actor_cls.remote(node_id, ids, self.config, self._state_machine, False, self.name,
                                        self.node_data_dir(node_id), restarted, wait_for_start,
                                        namespace=self.namespace, slot=slot, actor_options=self._actor_options)
            except ray.exceptions.ActorAlreadyExistsError:
                # the name of an actor that just died is released a moment later
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _failed(self, node_id: int, error: str) -> None:
        """Node ``node_id`` cannot run: kill its actor, remember why (``status()`` shows it)."""
        log.warning("%s", error)
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(self._nodes[node_id], no_restart=True)
        self._dead.add(node_id)
        self._errors[node_id] = error

    def _connect_all(self) -> None:
        live = {i: h for i, h in self._nodes.items() if i not in self._dead}
        self._call_all(lambda i, h: h.connect.remote(live))

    def _call_all(self, call: Callable[[int, Any], Any]) -> dict[int, Any]:
        """Call every live node at once; a node found dead is marked dead, not an error."""
        refs = {i: call(i, h) for i, h in self._nodes.items() if i not in self._dead}
        results = {}
        for i, ref in refs.items():
            try:
                results[i] = ray.get(ref, timeout=_STATUS_TIMEOUT * 5)
            except ray.exceptions.ActorDiedError:
                self._dead.add(i)  # it died on its own (restart limit, fail-stop)
            except (ray.exceptions.RayError, TimeoutError):
                pass  # restarting or unreachable: it gets the news when it is back
        return results

    # ------------------------------------------------------------------ clients
    @property
    def channel(self) -> Channel:
        """This process's channel to the cluster, shared by all its clients."""
        return Channel.of(self._live_nodes, self.config, self._is_closed, name=self.name)

    def client(self) -> RaftClient:
        """A new blocking client session (thread-safe). Sessions are cheap: every client of a
        process shares one channel to the cluster."""
        self._check_open()
        c = RaftClient(self._live_nodes, self.config, self._is_closed, self.channel)
        self._clients.add(c)
        return c

    def async_client(self) -> AsyncRaftClient:
        """A new asyncio client session (usable from any event loop)."""
        self._check_open()
        return AsyncRaftClient(self._live_nodes, self.config, self._is_closed, self.channel)

    def _live_nodes(self) -> dict[int, Any]:
        return dict(self._nodes)

    def _is_closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ inspection
    @property
    def node_ids(self) -> list[int]:
        return sorted(self._nodes)

    def handle(self, node_id: int) -> Any:
        """The Ray actor handle of a node."""
        self._check(node_id)
        return self._nodes[node_id]

    def _statuses(self) -> dict[int, dict[str, Any] | None]:
        self._check_open()
        refs = {i: h.status.remote() for i, h in self._nodes.items() if i not in self._dead}
        out: dict[int, dict[str, Any] | None] = {i: None for i in self._nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=_STATUS_TIMEOUT)
        done = set(ready)
        for i, ref in refs.items():
            if ref in done:
                try:
                    out[i] = ray.get(ref)
                except ray.exceptions.RayError:
                    out[i] = None
        return out

    def status(self) -> pd.DataFrame:
        """One row per node: role, term, leader, commit index, applied index, log length,
        latest snapshot index, entries held in memory and bytes of storage.

        A node that does not answer (killed, restarting) shows role ``dead`` or ``unreachable``.
        """
        import pandas as pd

        rows = []
        for i, st in sorted(self._statuses().items()):
            if st is None:
                role = "failed" if i in self._errors else "dead" if i in self._dead else "unreachable"
                st = {"node": i, "role": role}
                if i in self._errors:
                    st["error"] = self._errors[i]
            rows.append(st)
        cols = ["node", "role", "term", "leader", "commit_index", "applied_index", "log_length", "snapshot_index",
                "log_entries", "storage_bytes"]
        df = pd.DataFrame(rows)
        df = df[[c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]]
        ints = [c for c in cols[2:] + ["pid"] if c in df.columns]
        return df.astype({c: "Int64" for c in ints}).set_index("node")

    def leader(self, timeout: float = 10.0, poll: float | None = None) -> int:
        """The id of the current leader, waiting up to ``timeout`` seconds for one (asking the
        nodes every ``poll`` seconds, by default every tick).

        A leader counts once a majority of the cluster's nodes report it as the leader of its
        term, so a deposed leader in a minority partition, which may not know it yet, is not
        taken for the leader.
        """
        deadline = time.monotonic() + timeout
        while True:
            sts = [s for s in self._statuses().values() if s is not None]
            for s in sts:
                if s["role"] == "leader":
                    voters = s.get("voters") or tuple(self._nodes)
                    followers = sum(1 for o in sts if o["term"] == s["term"] and o["leader"] == s["node"]
                                    and o["node"] in voters)
                    if followers >= len(voters) // 2 + 1:
                        return int(s["node"])
            if time.monotonic() >= deadline:
                raise RaftTimeoutError(f"no leader within {timeout}s")
            time.sleep(self.config.tick_interval if poll is None else poll)

    def configuration(self, timeout: float = 10.0, committed: bool = True) -> ConfState:
        """The cluster's configuration (voters, learners, highest id ever used), as the leader
        has it: the committed one, or with ``committed=False`` the newest in its log (a change
        takes effect as soon as it is in the log, and is done once it is committed)."""
        leader = self.leader(timeout=timeout)
        st = self._statuses()[leader]
        if st is None:
            raise ClusterUnavailableError(f"leader {leader} did not answer")
        if committed:
            return ConfState(tuple(st["committed_voters"]), tuple(st["committed_learners"]), int(st["committed_max_id"]))
        return ConfState(tuple(st["voters"]), tuple(st["learners"]), int(st["max_id"]))

    # ------------------------------------------------------------------ membership
    def add_node(self, promote: bool = True, timeout: float = 120.0) -> int:
        """Add a new node to the cluster and return its id.

        The node starts empty as a *learner*: it receives the log (or a snapshot) but neither
        votes nor counts toward commit. With ``promote`` (the default) the leader then replicates
        to it in rounds until a round takes less than an election timeout (it has caught up)
        and makes it a voter; otherwise call :meth:`promote` later.

        If the change cannot complete (the learner does not catch up, ``timeout`` passes), it is
        aborted cleanly: the learner is removed from the configuration, its actor stopped and its
        data deleted, and :class:`~raft_actors.errors.MembershipChangeError` (or
        :class:`~raft_actors.errors.RaftTimeoutError`) is raised.
        """
        self._check_open()
        deadline = time.monotonic() + timeout
        conf = self.configuration(timeout=timeout, committed=False)  # ids of pending changes are taken too
        node_id = max(conf.max_id, *self._nodes, 0) + 1
        taken = [s for i, s in self._slots.items() if i not in self._dead and s is not None]
        self._slots[node_id] = choose_slots(1, taken, self.placement)[0]
        self._bootstrap[node_id] = []
        t0 = time.monotonic()
        try:
            self._nodes[node_id] = self._new_actor(node_id, [], restarted=False)
            self._wait_alive(node_id, deadline)
            self._connect_all()
            self._event("actor started", node_id, t0)
            self._membership("add_learner", node_id, deadline)
            self._wait_knows(node_id, "learner", deadline)
            self._event("learner added", node_id, t0)
            if promote:
                self.promote(node_id, timeout=max(0.1, deadline - time.monotonic()), _t0=t0)
        except BaseException as exc:
            self._event("aborted", node_id, t0, detail=f"{type(exc).__name__}: {exc}")
            self._abort_add(node_id)
            raise
        return node_id

    def promote(self, node_id: int, timeout: float = 120.0, catch_up: bool = True, _t0: float | None = None) -> None:
        """Make learner ``node_id`` a voter: once it has caught up (see :meth:`add_node`), or at
        once with ``catch_up=False``. Raises :class:`~raft_actors.errors.MembershipChangeError`
        if it does not catch up in time (it stays a learner)."""
        self._check(node_id)
        t0 = time.monotonic() if _t0 is None else _t0
        t1 = time.monotonic()
        deadline = time.monotonic() + timeout
        _, info = self._membership("promote", node_id, deadline, catch_up)
        if info.get("caught_up_s") is not None:
            self._event("caught up", node_id, t0, at=t1 + info["caught_up_s"] - t0,
                        detail=f"{info['rounds']} round(s) of catch-up")
        self._wait_knows(node_id, "voter", deadline)
        self._event("promoted to voter", node_id, t0)

    def remove_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Remove a node (voter or learner; the leader too: it hands leadership to the most
        up-to-date voter once the change commits) and stop it, deleting its data."""
        self._check(node_id)
        t0 = time.monotonic()
        self._membership("remove", node_id, t0 + timeout)
        self._event("removed from the configuration", node_id, t0)
        # a removed leader hands over with a last message (TimeoutNow): stop it only once a
        # successor leads, or the message could die with it and cost an election timeout
        with contextlib.suppress(RaftTimeoutError):
            deadline = time.monotonic() + max(0.1, t0 + timeout - time.monotonic())
            while self.leader(timeout=max(0.1, deadline - time.monotonic()), poll=0.005) == node_id:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
        self._stop_node(node_id)
        self._event("stopped, data deleted", node_id, t0)

    def replace_node(self, node_id: int, timeout: float = 180.0) -> int:
        """Replace node ``node_id`` (dead, or alive but to be retired) by a new node; returns
        the new node's id.

        A live node is replaced add-first (a new learner catches up and is promoted, then the old
        node is removed), so the cluster never has fewer voters than it had. A dead one, or one
        that lost its state, is removed first: it counts for nothing, and a smaller
        configuration needs fewer nodes for a quorum while the new one catches up.
        """
        self._check(node_id)
        deadline = time.monotonic() + timeout
        sts = self._statuses()
        st = sts.get(node_id)
        healthy = st is not None and st.get("role") not in ("non-voter", "starting")
        if healthy:
            new = self.add_node(timeout=max(0.1, deadline - time.monotonic()))
            self.remove_node(node_id, timeout=max(0.1, deadline - time.monotonic()))
        else:
            self.remove_node(node_id, timeout=max(0.1, deadline - time.monotonic()))
            new = self.add_node(timeout=max(0.1, deadline - time.monotonic()))
        return new

    def membership_log(self) -> pd.DataFrame:
        """What :meth:`add_node`, :meth:`promote`, :meth:`remove_node` and
        :meth:`replace_node` did, one row per step: wall-clock time, node, event, and seconds
        since the step's operation began, and details (rounds of catch-up, errors)."""
        import pandas as pd

        return pd.DataFrame(self._membership_events, columns=["time", "node", "event", "seconds", "detail"])

    def _event(self, what: str, node_id: int, t0: float, at: float | None = None, detail: str = "") -> None:
        secs = time.monotonic() - t0 if at is None else at
        self._membership_events.append({"time": datetime.now(UTC), "node": node_id, "event": what,
                                        "seconds": round(secs, 3), "detail": detail})
        log.info("node %s: %s (%.3fs)", node_id, what, secs)

    def _membership(self, kind: str, node_id: int, deadline: float, catch_up: bool = True) -> tuple[ConfState, dict]:
        """Make one change through whoever leads, retrying across leader changes until it is
        committed; a change that turns out to be in place already counts as done."""

        def in_place(conf: ConfState) -> bool:  # conf: committed (a change in the log may be undone)
            return {"add_learner": node_id in conf.members, "promote": node_id in conf.voters,
                    "remove": node_id not in conf.members}[kind]

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RaftTimeoutError(f"{kind} of node {node_id} did not complete in time")
            try:
                leader = self.leader(timeout=left)
                ref = self._nodes[leader].change_membership.remote(kind, node_id, catch_up)
                out = loads(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
            except (ray.exceptions.RayError, TimeoutError):
                out = None  # the leader died or did not answer in time: ask again
            if out is not None and out.ok:
                return out.value
            err = out.value if out is not None else None
            if isinstance(err, MembershipChangeError) and not err.retryable:
                raise err
            if err is None or isinstance(err, NotLeaderError):
                # a change whose outcome is unknown may have been made: look before retrying
                with contextlib.suppress(RaftTimeoutError, ClusterUnavailableError):
                    conf = self.configuration(timeout=max(0.1, deadline - time.monotonic()))
                    if in_place(conf):
                        return conf, {}
            time.sleep(self.config.tick_interval * 3)

    def _wait_knows(self, node_id: int, role: str, deadline: float) -> None:
        """Wait until node ``node_id`` itself has the committed change that made it a ``role``
        (``"learner"`` or ``"voter"``): it learns it from the leader within a heartbeat or so."""
        key = {"learner": "committed_learners", "voter": "committed_voters"}[role]
        while True:
            st = self._statuses().get(node_id)
            if st is not None and node_id in (st.get(key) or ()):
                return
            if time.monotonic() >= deadline:
                raise RaftTimeoutError(f"node {node_id} did not learn in time that it is a {role}")
            time.sleep(self.config.tick_interval / 3)

    def _wait_alive(self, node_id: int, deadline: float) -> None:
        while True:
            try:
                ray.get(self._nodes[node_id].ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorDiedError as exc:
                raise _startup_error(node_id, exc) or exc from exc
            except (ray.exceptions.RayError, TimeoutError):
                if time.monotonic() >= deadline:
                    raise RaftTimeoutError(f"node {node_id}'s actor did not start in time") from None
                time.sleep(0.1)

    def _abort_add(self, node_id: int) -> None:
        """Undo a node addition that did not complete: out of the configuration, actor stopped,
        data deleted."""
        with contextlib.suppress(Exception):
            conf = self.configuration(timeout=10, committed=False)  # an addition still in the log too
            if node_id in conf.learners:
                self._membership("remove", node_id, time.monotonic() + 30)
        if node_id in self._nodes:
            self._stop_node(node_id)

    def _stop_node(self, node_id: int) -> None:
        h = self._nodes.pop(node_id)
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            ray.get(h.destroy_data.remote(), timeout=_STATUS_TIMEOUT * 5)
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(h, no_restart=True)
        self._slots.pop(node_id, None)
        self._dead.discard(node_id)
        self._errors.pop(node_id, None)
        self._connect_all()

    # ------------------------------------------------------------------ faults
    def kill(self, node_id: int) -> None:
        """Kill a node's process abruptly, for good (until :meth:`restart`).

        What it had synced to disk stays; with in-memory storage, everything is lost."""
        self._check(node_id)
        ray.kill(self._nodes[node_id], no_restart=True)
        self._dead.add(node_id)

    def crash(self, node_id: int) -> None:
        """Kill a node's process and let Ray restart it at once (``max_restarts``)."""
        self._check(node_id)
        ray.kill(self._nodes[node_id], no_restart=False)

    def restart(self, node_id: int, timeout: float = 30.0) -> None:
        """Bring a killed node back (or crash and restart a live one) and wait until it answers.

        The node replays its write-ahead log and snapshot and rejoins as what it was.

        A node that comes back with no state at all (in-memory storage, or a wiped data
        directory) has forgotten its votes and the entries it acknowledged: it rejoins as a
        *non-voter*. It receives and applies the log and serves reads, but never votes,
        campaigns or counts toward a quorum, so what it forgot cannot break safety. Each such
        restart costs the cluster a voter for good (until membership changes can re-admit it).

        Raises :class:`~raft_actors.errors.NodeStartupError` if the node cannot start, e.g.
        because its write-ahead log is corrupt (the message names the file and offset).
        """
        self._check(node_id)
        if node_id not in self._dead:
            try:
                ray.get(self._nodes[node_id].ping.remote(), timeout=_STATUS_TIMEOUT)
            except ray.exceptions.ActorDiedError:
                self._dead.add(node_id)  # it died on its own: make a new one
            except (ray.exceptions.RayError, TimeoutError):
                pass
        if node_id in self._dead:
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                ray.kill(self._nodes[node_id], no_restart=True)  # releases the name of one that died alone
            self._nodes[node_id] = self._new_actor(node_id, None, restarted=True)
            self._dead.discard(node_id)
            self._errors.pop(node_id, None)
            self._connect_all()
        else:
            self.crash(node_id)
        deadline = time.monotonic() + timeout
        while True:
            try:
                ray.get(self._nodes[node_id].ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorDiedError as exc:
                self._dead.add(node_id)
                cause = _startup_error(node_id, exc)
                if cause is not None:
                    self._errors[node_id] = str(cause)
                    raise cause from exc
                raise
            except (ray.exceptions.RayError, TimeoutError):
                if time.monotonic() >= deadline:
                    raise RaftTimeoutError(f"node {node_id} did not come back within {timeout}s") from None
                time.sleep(0.1)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut the cluster into groups that cannot talk to each other.

        Nodes not named in any group form one more group together. ``partition([1])`` isolates
        node 1 from the rest.
        """
        sets = [set(g) for g in groups]
        for g in sets:
            for i in g:
                self._check(i)
        rest = set(self._nodes) - set().union(*sets)
        if rest:
            sets.append(rest)
        group_of = {i: k for k, g in enumerate(sets) for i in g}
        self._call_all(lambda i, h: h.set_faults.remote(blocked=[j for j in self._nodes if group_of[j] != group_of[i]]))

    def cut(self, links: Iterable[tuple[int, int]]) -> None:
        """Cut the given one-way links: for each ``(a, b)``, what node ``a`` sends node ``b`` is
        lost (``b`` still reaches ``a`` unless ``(b, a)`` is cut too). Replaces any partition or
        earlier cut; :meth:`heal` removes it."""
        out: dict[int, list[int]] = {i: [] for i in self._nodes}
        for a, b in links:
            self._check(a)
            self._check(b)
            out[a].append(b)
        self._call_all(lambda i, h: h.set_faults.remote(blocked=[], blocked_out=out.get(i, [])))

    def heal(self) -> None:
        """Remove every partition, cut and injected message fault."""
        self._check_open()
        self._call_all(lambda i, h: h.set_faults.remote(blocked=[], blocked_out=[], drop_rate=0.0, delay=0.0,
                                                        duplicate_rate=0.0, long_delay_rate=0.0))

    def inject(self, node_id: int, drop_rate: float | None = None, delay: float | None = None,
               duplicate_rate: float | None = None, long_delay_rate: float | None = None,
               long_delay: tuple[float, float] | None = None) -> None:
        """Make a node drop, duplicate, or delay (by up to ``delay`` seconds, so they also
        reorder) a share of its messages (its requests and its answers); ``long_delay_rate`` of
        them are held back ``long_delay = (low, high)`` seconds instead."""
        self._check(node_id)
        ray.get(self._nodes[node_id].set_faults.remote(drop_rate=drop_rate, delay=delay, duplicate_rate=duplicate_rate,
                                                       long_delay_rate=long_delay_rate, long_delay=long_delay))

    def disk_fault(self, node_id: int, kind: str) -> None:
        """Make node ``node_id``'s disk fail: ``"fail_fsync"`` (the next fsync fails) or
        ``"full"`` (the next write finds no space). The node stops at once rather than go on
        as if its writes were durable (fail-stop); Ray restarts it (``max_restarts``) and it
        replays what its disk holds."""
        self._check(node_id)
        ray.get(self._nodes[node_id].set_faults.remote(disk=kind), timeout=_STATUS_TIMEOUT * 5)

    def pause(self, node_id: int) -> None:
        """Freeze a node's process (``SIGSTOP``), as a long GC pause or a stalled VM would: it
        neither answers nor notices time passing until :meth:`resume`."""
        self._signal(node_id, "SIGSTOP")

    def resume(self, node_id: int) -> None:
        """Let a paused node's process run again (``SIGCONT``)."""
        self._signal(node_id, "SIGCONT")

    def _signal(self, node_id: int, signame: str) -> None:
        self._check(node_id)
        st = self._statuses().get(node_id) if signame == "SIGSTOP" else None
        where = self._pids.get(node_id) if st is None else (int(st["pid"]), st.get("ray_node"))
        if where is None:
            raise ClusterUnavailableError(f"node {node_id} did not answer: its process is unknown")
        self._pids[node_id] = where
        pid, ray_node = where
        ray.get(_send_signal.options(**_on_ray_node(ray_node)).remote(pid, signame), timeout=_STATUS_TIMEOUT * 5)

    def transfer_leadership(self, to: int, timeout: float = 10.0) -> float:
        """Hand leadership to node ``to``; returns the seconds it took."""
        self._check(to)
        start = time.monotonic()
        deadline = start + timeout
        while True:
            leader = self.leader(timeout=max(0.1, deadline - time.monotonic()))
            if leader == to:
                return time.monotonic() - start
            try:
                ray.get(self._nodes[leader].transfer_leadership.remote(to), timeout=_STATUS_TIMEOUT)
            except (ray.exceptions.RayError, TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise RaftTimeoutError(f"leadership did not move to node {to} within {timeout}s")
            time.sleep(self.config.tick_interval)

    def snapshot(self, node_id: int | None = None) -> dict[int, SnapshotMeta | None]:
        """Make nodes (all live ones by default) snapshot their state machine and compact their
        log now, as they do by themselves past ``RaftConfig.snapshot_commands``."""
        if node_id is not None:
            self._check(node_id)
            return {node_id: ray.get(self._nodes[node_id].take_snapshot.remote(), timeout=_STATUS_TIMEOUT * 30)}
        return self._call_all(lambda i, h: h.take_snapshot.remote())

    def reset_metrics(self) -> None:
        """Restart the nodes' storage statistics (``sync_ms_p50`` ... in :meth:`status`)."""
        self._call_all(lambda i, h: h.reset_metrics.remote())

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, delete_data: bool = False) -> None:
        """Kill every node actor (and Ray itself, if :meth:`launch` started it); when Ray stays
        up, return once it has let go of the nodes' names (at most 30 s), so that the same name
        may be launched again at once.

        The nodes' data stays on disk (launch again with the same ``name`` and ``data_dir`` to
        recover the cluster) unless ``delete_data`` is true.
        """
        if self._closed:
            return
        self._closed = True
        for c in list(self._clients):
            c.close()
        self.channel.close()
        if delete_data and self.data_dir is not None:
            self._call_all(lambda i, h: h.destroy_data.remote())
            shutil.rmtree(self.data_dir, ignore_errors=True)  # what dead nodes left on this machine
        for h in self._nodes.values():
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                ray.kill(h, no_restart=True)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        elif self._nodes and ray.is_initialized():
            self._wait_names_released({node_actor_name(self.name, i) for i in self._nodes})

    def _wait_names_released(self, names: set[str], timeout: float = 30.0) -> None:
        """Until Ray has let go of these node actors' names (``ray.kill`` only asks for the
        kill), so that a launch under the same name may follow at once; at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ray.exceptions.RayError, ConnectionError):
            while names.intersection(self._existing_node_names()) and time.monotonic() < deadline:
                time.sleep(0.05)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _check(self, node_id: int) -> None:
        self._check_open()
        if node_id not in self._nodes:
            raise NodeNotFoundError(f"no node {node_id} in cluster {self.name} (nodes: {self.node_ids})")

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterUnavailableError(f"cluster {self.name} has been shut down")




@ray.remote(num_cpus=0)
def _send_signal(pid: int, signame: str) -> None:
    """Send a signal to a process on the machine this task runs on."""
    import signal

    os.kill(pid, getattr(signal, signame))


def _on_ray_node(ray_node: str | None) -> dict[str, Any]:
    """Ray options that run a task on the machine ``ray_node`` (the local one if unknown)."""
    if not isinstance(ray_node, str) or not ray_node:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray_node, soft=False)}


def _init_ray(address: str | None, namespace: str) -> bool:
    """Start or join Ray unless it is running here; whether this call started a local Ray
    (which the cluster then shuts down with itself)."""
    if ray.is_initialized():
        return False
    ray.init(address=address, namespace=namespace, log_to_driver=True)
    return address is None


def _summary(text: str) -> str:
    """The gist of a remote error's text: the last line naming an exception, e.g.
    ``CorruptStorageError: <file>: offset N: ...``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "Error:" in ln), lines[-1] if lines else text)


def _startup_error(node_id: int, exc: ray.exceptions.ActorDiedError) -> NodeStartupError | None:
    """A typed error for a node actor whose constructor raised (Ray keeps only the text)."""
    if not exc.actor_init_failed:
        return None
    return NodeStartupError(f"node {node_id} failed to start: {_summary(str(exc))}")
