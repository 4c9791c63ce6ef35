"""Replicated actors: a Python class behind a Ray-style actor handle, its state kept by Raft.

::

    import ray
    import raft_actors

    @raft_actors.replicated
    class Bank:
        def __init__(self, fee=0):
            self.fee, self.accounts = fee, {}

        def deposit(self, who, amount):          # a write: through the log, applied once, in order
            self.accounts[who] = self.accounts.get(who, 0) + amount - self.fee
            return self.accounts[who]

        @raft_actors.read                         # a read: never changes the state
        def balance(self, who):
            return self.accounts.get(who, 0)

    bank = Bank.options(num_replicas=3, name="bank").remote(fee=1)
    ray.get(bank.deposit.remote("ann", 10))               # 9
    ray.get(bank.balance.remote("ann"))                   # 9, linearizable
    bank.balance.options(consistency="stale").remote("ann")

``Bank.remote(...)`` launches a Raft cluster (:class:`~raft_actors.cluster.RaftCluster`) whose
every node holds a ``Bank`` built from the same arguments. A method call is a command in the
log: committed by a majority, applied once (a retry after a leader change or a lost answer is
recognized by its session and sequence number), in the order each thread made its calls
through the handle, with the same result and the same exception on every replica. A method
marked :func:`read` is a query, answered at the consistency asked for (``"linearizable"`` by
default) once every write made before it through the handle has its result: a read sees
them, as a Ray actor's calls from one caller run in order.

Calls made back to back (a loop of ``.remote()``, the coroutines of one turn of an event
loop, many threads at once) travel together: consecutive writes as one request, encoded once,
in as few Ray calls as ``submit_many`` uses. A call leaves as soon as anyone waits for a ref of
the handle, when a call's worth (``RaftConfig.client_batch``) is queued, when the turn of the
event loop it was made in ends (a call made in a coroutine), and otherwise 1-21 ms after it was
made (:data:`FLUSH_AFTER` plus ``FLUSH_SLACK``; 21-41 ms on a loop whose turn does not end), so
a call nobody waits for is applied too.

What ``.remote()`` returns is a :class:`RaftRef`: ``ray.get`` takes it (alone or in a list of
them), ``await`` takes it, :func:`get` and :func:`wait` are ``ray.get`` and ``ray.wait`` for lists
that mix them with ``ObjectRef``\\ s, and :meth:`RaftRef.object_ref` gives a real ``ObjectRef``
once the result is in: pass that to a Ray task for Ray to resolve it as an argument (Ray
refuses a ``RaftRef`` itself as a top-level argument; inside a list or dict one travels
resolved). ``ray.wait`` refuses anything but Ray's own ``ObjectRef``: use :func:`wait`. It is
not itself an ``ObjectRef``: minting one costs a Ray call per request, and
calls here travel in batches (every handle and client of a process shares the process's
channel to the cluster), so a call through a handle costs what a client call costs.

``handle.method.map(*iterables)`` makes one call per set of arguments (as ``Executor.map``)
and returns one :class:`RaftRef` to the list of their results: thousands of calls at the cost
of one ``submit_many`` of them, without an object per call for the garbage collector.

Supported: plain methods (writes), methods marked :func:`read`, any picklable arguments and
results, exceptions (raised to the caller as themselves, as ``ray.get`` does for an actor).
Refused when the class is decorated, with a ``TypeError``: ``async def`` methods and
generators (a command must finish before the next one is applied, and its result must be a
value), and methods annotated to return an ``ObjectRef``; a method that returns an
``ObjectRef`` anyway raises ``TypeError`` at the caller (on every replica alike). Static and class methods
and names starting with ``_`` are not callable through the handle.

State is snapshotted by pickling the instance (cloudpickle); a class may define
``__raft_snapshot__(self) -> bytes`` and ``__raft_restore__(self, data)`` instead (the latter is
called on an instance made without ``__init__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import InvalidStateError, ThreadPoolExecutor
from threading import get_ident as _get_ident
from typing import Any, Self

import cloudpickle
import ray

from .channel import Channel, Many, _resolve_soon
from .cluster import DEFAULT_NAMESPACE, RaftCluster
from .errors import ClusterUnavailableError, CommandError
from .raycall import when_done
from .session import LINEARIZABLE, READ_MODES, Session

log = logging.getLogger(__name__)

try:  # ray.get hands a CompiledDAGRef (and a list of them) to its own .get(): RaftRef is one
    from ray.experimental.compiled_dag_ref import CompiledDAGRef as _RayGetProtocol
except ImportError:  # pragma: no cover - a Ray without it: ray.get refuses RaftRefs, get() works
    _RayGetProtocol = object  # type: ignore[assignment,misc]

__all__ = ["RaftRef", "ReplicatedClass", "ReplicatedHandle", "get", "get_replicated", "read", "replicated", "wait"]

#: the options of :meth:`ReplicatedClass.options`, and their defaults
DEFAULT_OPTIONS: dict[str, Any] = {
    "num_replicas": 3,
    "name": None,
    "namespace": DEFAULT_NAMESPACE,
    "config": None,
    "address": None,
    "data_dir": None,
    "storage": "file",
    "placement": "auto",
    "actor_options": None,
    "consistency": LINEARIZABLE,
    "timeout": None,
}


def read(method: Callable) -> Callable:
    """Mark a method of a :func:`replicated` class as a read: it is answered from a replica's
    state, never written to the log, and must not change the state."""
    method.__raft_read__ = True  # type: ignore[attr-defined]
    return method


def replicated(cls: type | None = None, **options: Any) -> Any:
    """Make ``cls`` a replicated actor class: ``@replicated`` or ``@replicated(num_replicas=5)``
    (any option of :meth:`ReplicatedClass.options`). See the module doc."""
    if cls is None:
        return lambda c: ReplicatedClass(c, options)
    return ReplicatedClass(cls, options)


def _method_table(cls: type) -> dict[str, bool]:
    """``{name: is_read}`` of the methods callable through a handle; ``TypeError`` for a method
    that cannot be replicated (see the module doc)."""
    if not isinstance(cls, type):
        raise TypeError(f"@replicated takes a class, not {cls!r}")
    table: dict[str, bool] = {}
    for name in dir(cls):
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, staticmethod | classmethod | property):
            continue
        fn = getattr(cls, name)
        if not inspect.isfunction(fn) or (name.startswith("_") and name != "__init__"):
            continue
        where = f"{cls.__qualname__}.{name}"
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"{where} is async: a replicated method is applied inside the log, one command "
                            "after another, and must finish before the next one; make it a plain def")
        if inspect.isgeneratorfunction(fn):
            raise TypeError(f"{where} is a generator: a replicated method's result must be a value "
                            "(return a list instead)")
        ret = inspect.signature(fn).return_annotation
        if ret is ray.ObjectRef or (isinstance(ret, str) and ret.replace("ray.", "").startswith("ObjectRef")):
            raise TypeError(f"{where} returns an ObjectRef: a replicated method's result must be a value, "
                            "the same on every replica")
        if name != "__init__":
            table[name] = bool(getattr(fn, "__raft_read__", False))
    return table


_NO_KWARGS: dict[str, Any] = {}


class ReplicatedState:
    """The state machine each node runs for a replicated class: an instance of it, commands
    ``(method, args)`` or ``(method, args, kwargs)`` applied to it. Built by :meth:`ReplicatedClass.state_machine`
    (usable with :class:`~raft_actors.cluster.RaftCluster`, the simulator and the Jepsen-style
    suite as any state machine is)."""

    def __init__(self, cls: type, args: tuple = (), kwargs: dict | None = None):
        self.cls = cls
        self.methods = _method_table(cls)
        self.obj = cls(*args, **(kwargs or {}))

    def validate(self, command: Any) -> None:
        self._call(command, write=True, run=False)

    def apply(self, command: Any) -> Any:
        return self._call(command, write=True)

    def query(self, query: Any) -> Any:
        return self._call(query, write=False)

    def _call(self, command: Any, write: bool, run: bool = True) -> Any:
        if (type(command) is not tuple or not 2 <= len(command) <= 3 or type(command[0]) is not str
                or type(command[1]) is not tuple or (len(command) == 3 and type(command[2]) is not dict)):
            raise ValueError(f"a {self.cls.__qualname__} call is (method, args) or (method, args, kwargs), "
                             f"not {command!r}")
        name, args = command[0], command[1]
        kwargs = command[2] if len(command) == 3 else _NO_KWARGS
        is_read = self.methods.get(name)
        if is_read is None:
            raise AttributeError(f"{self.cls.__qualname__} has no replicated method {name!r}")
        if write == is_read:
            kind = "a read: query it" if is_read else "a write: it goes through the log"
            raise ValueError(f"{self.cls.__qualname__}.{name} is {kind}")
        if not run:
            return None
        result = getattr(self.obj, name)(*args, **kwargs)
        if isinstance(result, ray.ObjectRef):
            raise TypeError(f"{self.cls.__qualname__}.{name} returned an ObjectRef: a replicated method's "
                            "result must be a value")
        return result

    def snapshot(self) -> bytes:
        hook = getattr(self.obj, "__raft_snapshot__", None)
        return hook() if hook is not None else cloudpickle.dumps(self.obj)

    def restore(self, data: bytes) -> None:
        if hasattr(self.cls, "__raft_restore__"):
            obj = self.cls.__new__(self.cls)
            obj.__raft_restore__(data)
            self.obj = obj
        else:
            self.obj = cloudpickle.loads(data)


class _Factory:
    """The zero-argument factory a cluster's nodes build their state machine with."""

    def __init__(self, cls: type, args: tuple, kwargs: dict):
        self.cls, self.args, self.kwargs = cls, args, kwargs

    def __call__(self) -> ReplicatedState:
        return ReplicatedState(self.cls, self.args, self.kwargs)


class ReplicatedClass:
    """A class made replicated by :func:`replicated`: ``.remote(*args)`` starts one, ``.options``
    sets how. Calling it directly is refused, as for a Ray actor class."""

    def __init__(self, cls: type, options: dict[str, Any] | None = None):
        self._methods = _method_table(cls)
        self.cls = cls
        self._options = dict(DEFAULT_OPTIONS)
        self._options.update(_checked(options or {}))
        functools.update_wrapper(self, cls, updated=())

    def options(self, **options: Any) -> ReplicatedClass:
        """A copy with these options changed:

        - ``num_replicas`` (3): Raft nodes, each holding a replica of the instance;
        - ``name``: the cluster's name (the nodes are named detached actors; a handle passed to
          another process, or :func:`get_replicated`, finds them by it); random if not given;
        - ``namespace``, ``address``, ``config`` (a :class:`~raft_actors.config.RaftConfig`),
          ``data_dir``, ``storage``, ``placement``, ``actor_options`` (``ray.remote`` options
          of the node actors: ``num_cpus``, ``resources``...): as for
          :meth:`RaftCluster.launch <raft_actors.cluster.RaftCluster.launch>`;
        - ``consistency``: the default of reads (``"linearizable"``, ``"follower"``, ``"stale"``);
        - ``timeout``: the default deadline of a call, in seconds (``config.request_timeout``).
        """
        new = ReplicatedClass.__new__(ReplicatedClass)
        new.__dict__.update(self.__dict__)
        new._options = {**self._options, **_checked(options)}
        return new

    def remote(self, *args: Any, **kwargs: Any) -> ReplicatedHandle:
        """Start the replicated actor: launch its Raft cluster, each node building the instance
        from ``args`` and ``kwargs``, and return its handle once a leader is elected."""
        o = self._options
        cluster = RaftCluster.launch(
            o["num_replicas"], _Factory(self.cls, args, kwargs), o["config"], address=o["address"], name=o["name"],
            namespace=o["namespace"], actor_options=o["actor_options"], storage=o["storage"], data_dir=o["data_dir"],
            placement=o["placement"])
        return ReplicatedHandle(cluster, self.cls, self._methods, o["consistency"], o["timeout"])

    def state_machine(self, *args: Any, **kwargs: Any) -> Callable[[], ReplicatedState]:
        """The zero-argument state machine factory of an instance built from ``args`` and
        ``kwargs``: for the simulator, the Jepsen-style suite or ``RaftCluster.launch``."""
        return _Factory(self.cls, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"a replicated class is not instantiated directly: use {self.cls.__name__}.remote(...) "
                        f"(or {self.cls.__name__}.cls(...) for a plain local instance)")

    def __repr__(self) -> str:
        return f"ReplicatedClass({self.cls.__qualname__})"


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are {sorted(DEFAULT_OPTIONS)}")
    if "consistency" in options and options["consistency"] not in READ_MODES:
        raise ValueError(f"consistency must be one of {READ_MODES}, got {options['consistency']!r}")
    n = options.get("num_replicas", 1)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_replicas must be a positive int, got {n!r}")
    return options


class ReplicatedHandle:
    """The handle of a running replicated actor: ``handle.method.remote(*args)`` calls it.

    It may be passed to Ray tasks and actors and to other drivers: it travels by the cluster's
    name and reconnects there. ``handle.cluster`` is its
    :class:`~raft_actors.cluster.RaftCluster` (status, faults, membership, ``shutdown``). Calls
    through one handle in one process are one client session: applied in the order each
    thread made them (see :class:`_Outbox`).
    """

    def __init__(self, cluster: RaftCluster, cls: type, methods: dict[str, bool], consistency: str = LINEARIZABLE,
                 timeout: float | None = None):
        self.cluster = cluster
        self.cls = cls
        self._methods = methods
        self._consistency = consistency
        self._timeout = timeout
        self._session = Session()
        self._ch: Channel | None = None  # the process's channel to the cluster, once looked up
        self._outbox = _Outbox(self)
        self._kinds: dict[tuple[str | None, float], _Kind] = {}

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def _channel(self) -> Channel:
        # Kept, as a client keeps it: looking it up takes the process-wide registry's lock,
        # which every thread's call would otherwise contend for.
        ch = self._ch
        if ch is None or (ch._closed and not self.cluster._closed):
            ch = self._ch = self.cluster.channel
        return ch

    def __getattr__(self, name: str) -> _Method:
        """``handle.method`` the first time: made, then kept as an attribute of the handle
        (later lookups do not come here)."""
        methods = self.__dict__.get("_methods")
        if name.startswith("__") or methods is None:
            raise AttributeError(name)
        is_read = methods.get(name)
        if is_read is None:
            raise AttributeError(f"{self.cls.__qualname__} has no method {name!r} callable through its handle "
                                 f"(public instance methods: {sorted(methods)})")
        m = self.__dict__[name] = _Method(self, name, is_read, self._consistency, self._timeout)
        return m

    def _kind(self, mode: str | None, timeout: float | None) -> _Kind:
        """The one :class:`_Kind` of this handle's calls with read ``mode`` (None: writes) and
        deadline ``timeout`` (None: the cluster's ``request_timeout``)."""
        key = (mode, timeout or self.cluster.config.request_timeout)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = _Kind(self._outbox, *key)
        return kind

    def __reduce__(self) -> tuple:
        return (_reconnect, (self.cluster.name, self.cluster.namespace, self._consistency, self._timeout))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.shutdown()

    def __repr__(self) -> str:
        return f"ReplicatedHandle({self.cls.__qualname__}, cluster={self.cluster.name!r})"


class _Method:
    """``handle.method``: ``.remote(*args, **kwargs)`` calls it; ``.options(...)`` per call."""

    __slots__ = ("_cluster", "_consistency", "_handle", "_kind", "_name", "_read", "_timeout")

    def __init__(self, handle: ReplicatedHandle, name: str, is_read: bool, consistency: str, timeout: float | None):
        self._handle = handle
        self._cluster = handle.cluster
        self._name = name
        self._read = is_read
        self._consistency = consistency
        self._timeout = timeout
        self._kind = handle._kind(consistency if is_read else None, timeout)  # what each call's ref carries

    def options(self, consistency: str | None = None, timeout: float | None = None) -> _Method:
        """This method with another read ``consistency`` (reads only) or call deadline."""
        if consistency is not None:
            if not self._read:
                raise ValueError(f"{self._name} is a write: it always goes through the log (consistency is for reads)")
            if consistency not in READ_MODES:
                raise ValueError(f"consistency must be one of {READ_MODES}, got {consistency!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return _Method(self._handle, self._name, self._read, consistency or self._consistency,
                       timeout if timeout is not None else self._timeout)

    def remote(self, *args: Any, **kwargs: Any) -> RaftRef:
        """Call the method; returns a :class:`RaftRef` to its result at once."""
        if self._cluster._closed:
            raise ClusterUnavailableError("the cluster has been shut down")
        kind = self._kind
        ref = RaftRef((self._name, args, kwargs) if kwargs else (self._name, args), kind, _get_ident())
        kind.outbox.add(ref)
        return ref

    def map(self, *iterables: Iterable[Any], return_exceptions: bool = False) -> RaftRef:
        """Call the method once per set of arguments, as ``Executor.map`` does: ``f(a[0],
        b[0])``, ``f(a[1], b[1])``, ... for ``map(a, b)`` (up to the shortest iterable); one
        :class:`RaftRef` to the list of their results, in order.

        The calls leave at once, after the calls made through the handle before them, as one
        ``submit_many`` of them: each applied once, in order. For thousands of calls this is the
        cheap way: a ref per call (a list of ``.remote()``) is an object per call for the
        garbage collector until its batch is answered. ``ray.get`` of the ref raises the
        exception of the first call (by position) that raised, as ``ray.get`` of a list of refs
        does; ``return_exceptions=True`` puts each in its place in the list instead.
        """
        if self._cluster._closed:
            raise ClusterUnavailableError("the cluster has been shut down")
        if not iterables:
            raise TypeError(f"{self._name}.map() needs at least one iterable of arguments")
        name = self._name
        calls = [(name, args) for args in zip(*iterables)]
        ref = RaftRef()
        if not calls:
            ref._settle([], None)
            return ref
        kind = self._kind
        kind.outbox.send_whole(_Gathered(ref, calls, kind, return_exceptions))
        return ref

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"call it with .remote(): {self._name}.remote(...) (or many at once: .map(...))")


def _reconnect(name: str, namespace: str, consistency: str, timeout: float | None) -> ReplicatedHandle:
    return get_replicated(name, namespace=namespace, consistency=consistency, timeout=timeout)


def get_replicated(name: str, *, namespace: str = DEFAULT_NAMESPACE, address: str | None = "auto",
                   consistency: str = LINEARIZABLE, timeout: float | None = None) -> ReplicatedHandle:
    """The handle of the running replicated actor named ``name`` (launched by any driver).
    Raises :class:`~raft_actors.errors.ClusterUnavailableError` if none answers, and
    ``TypeError`` if the cluster of that name does not run a replicated class."""
    cluster = RaftCluster.connect(name, address=address, namespace=namespace)
    factory = cloudpickle.loads(cluster._state_machine)
    if not isinstance(factory, _Factory):
        raise TypeError(f"cluster {name!r} does not run a replicated class (its state machine is {factory!r})")
    return ReplicatedHandle(cluster, factory.cls, _method_table(factory.cls), consistency, timeout)


# ---------------------------------------------------------------------------- calls out

#: a call not yet sent (nobody waits for it) leaves this many seconds after it was made, or up
#: to ``FLUSH_SLACK`` later, when the channel's timer thread wakes anyway
FLUSH_AFTER = 0.001
FLUSH_SLACK = 0.02
_NEVER = float("inf")


def _unwrapped(exc: BaseException) -> BaseException:
    """What a caller gets for a call's error: the method's own exception (noting where it was
    raised) rather than the :class:`~raft_actors.errors.CommandError` carrying it."""
    if isinstance(exc, CommandError) and exc.cause is not None:
        cause = exc.cause
        if exc.traceback and not getattr(cause, "__raft_noted__", False):
            cause.add_note(f"raised in the replicated actor:\n{exc.traceback.rstrip()}")
            cause.__raft_noted__ = True  # type: ignore[attr-defined]
        return cause
    return exc


class _Kind:
    """What a handle's call carries besides its method and arguments: where it waits to be
    sent, and what run it may join (one object per read consistency and deadline, so runs
    split where it changes)."""

    __slots__ = ("mode", "outbox", "timeout")

    def __init__(self, outbox: _Outbox, mode: str | None, timeout: float):
        self.outbox = outbox
        self.mode = mode  # None: a write; else a read's consistency
        self.timeout = timeout


class _Refs:
    """A run of a handle's calls (consecutive writes, or reads at one consistency, with one
    deadline) and the channel's sink of their results: to the refs by position; callbacks once
    all are in.
    (Called on Ray's callback thread, a blocking caller's, or the one that ended requests
    under the channel's lock, once it released it; it never calls into the channel itself.)"""

    __slots__ = ("calls", "left", "lock", "mode", "refs", "then", "timeout")

    def __init__(self, refs: list[RaftRef], calls: list[tuple], mode: str | None, timeout: float):
        self.refs = refs
        self.calls = calls  # until they are sent
        self.mode = mode  # None: writes; else the reads' consistency
        self.timeout = timeout
        self.left = len(refs)
        self.lock = threading.Lock()
        self.then: list[Callable[[], None]] | None = None

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        refs = self.refs
        n = 0
        woken = []
        awaited: dict[asyncio.AbstractEventLoop, list] | None = None  # coroutines' futures, by loop
        with _callbacks_lock:  # once for the run, not per ref
            for p, v in zip(positions, values):
                r = refs[p]
                if not r._done:
                    r._value, r._done = v, True
                    n += 1
                    w = r._take_waiters()
                    if w is not None:
                        latch, callbacks, afut = w
                        if afut is not None:
                            if awaited is None:
                                awaited = {}
                            awaited.setdefault(afut.get_loop(), []).append((afut, v, None))
                        if latch is not None or callbacks is not None:
                            woken.append((r, latch, callbacks))
        for loop, outcomes in (awaited or {}).items():  # one hand-over to each loop for the run
            _resolve_soon(loop, outcomes)
        for r, latch, callbacks in woken:
            _wake(r, latch, callbacks, None)
        self._count(n)

    def put_error(self, position: int, exc: BaseException) -> None:
        self._count(self.refs[position]._settle(None, _unwrapped(exc)))

    def _count(self, n: int) -> None:
        """``n`` more results are in; the callbacks once all are."""
        if not n:
            return
        with self.lock:
            self.left -= n
            then = self.then if not self.left else None
            if then:
                self.then = None
        for cb in then or ():
            cb()

    def done(self) -> bool:
        return not self.left

    def on_done(self, callback: Callable[[], None]) -> None:
        """``callback()`` once every ref has its result (now, if they have)."""
        with self.lock:
            if self.left:
                if self.then is None:
                    self.then = []
                self.then.append(callback)
                return
        callback()


class _Gathered(_Refs):
    """The run of one :meth:`_Method.map`: its results gathered by position (the first answer
    for each counts), then given to the map's one ref as a list."""

    __slots__ = ("many", "ref", "return_exceptions")

    def __init__(self, ref: RaftRef, calls: list[tuple], kind: _Kind, return_exceptions: bool):
        super().__init__([], calls, kind.mode, kind.timeout)
        self.left = 1  # one count for the whole run, once every result is in
        self.ref = ref
        self.return_exceptions = return_exceptions
        self.many = Many(len(calls), self._all_in)
        self.then = [self._settle]

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        self.many.put(positions, values)

    def put_error(self, position: int, exc: BaseException) -> None:
        self.many.put_error(position, _unwrapped(exc))

    def _all_in(self, many: Many) -> None:
        many.on_done = None  # (it is this bound method: no cycle left for the collector)
        self._count(1)

    def _settle(self) -> None:
        try:
            values = self.many.results(self.return_exceptions)
        except BaseException as exc:  # noqa: BLE001 - a call's own error: the ref raises it
            self.ref._settle(None, exc)
        else:
            self.ref._settle(values, None)


class _Lone:
    """The sink of one call whose maker waits for it on its own thread (see
    :meth:`_Outbox.flush`): its result straight to its ref, with none of a run's counting."""

    __slots__ = ("calls", "mode", "ref", "timeout")

    def __init__(self, ref: RaftRef, kind: _Kind):
        call, ref._call = ref._call, None
        self.calls = [call]  # until it is sent
        self.mode = kind.mode
        self.timeout = kind.timeout
        self.ref = ref

    def put(self, positions: Sequence[int], values: Sequence[Any]) -> None:
        self.ref._settle(values[0], None)

    def put_error(self, position: int, exc: BaseException) -> None:
        self.ref._settle(None, _unwrapped(exc))

    def done(self) -> bool:
        return self.ref._done

    def on_done(self, callback: Callable[[], None]) -> None:
        self.ref._on_done(lambda _: callback())


class _Outbox:
    """A handle's calls on their way to the channel.

    Calls made back to back (a loop of ``.remote()``, the coroutines of one turn of an event
    loop) leave together: one request per run of consecutive writes (or reads), encoded once
    on the caller's thread, as ``submit_many`` sends them. They leave as soon as anyone waits
    for one of the handle's refs (``ray.get``, ``await``, :func:`wait`, ...), when a run fills
    a call (``RaftConfig.client_batch``), when the turn of the event loop they were made in
    ends, and otherwise :data:`FLUSH_AFTER` (up to ``FLUSH_AFTER + FLUSH_SLACK``) seconds after
    the first of them (``FLUSH_AFTER + FLUSH_SLACK``, up to twice that, in an event loop). The
    calls of one thread
    leave in the order it made them; a read leaves once every write made before it through the
    handle has its result, so it sees them (as a Ray actor's calls from one caller run in
    order).
    """

    def __init__(self, handle: ReplicatedHandle):
        self._handle = handle
        self._queued: deque[RaftRef] = deque()  # calls not sent, in the order made (appends need no lock)
        self._lock = threading.Lock()  # loops, writes_out
        self._sending = threading.RLock()  # one flush at a time: runs leave in the order made
        self._flush_by = _NEVER  # when the timed flush that comes first is due (time.monotonic())
        self._loops: set[asyncio.AbstractEventLoop] = set()  # a flush is coming at the end of their turn
        self._writes_out: deque[_Refs | _Lone] = deque()  # sent writes, oldest first, until answered
        self._batch = max(1, handle.cluster.config.client_batch)

    def add(self, ref: RaftRef) -> None:
        """Queue the call ``ref`` carries."""
        q = self._queued
        q.append(ref)
        if len(q) >= self._batch:
            self.flush()
            return
        loop = asyncio._get_running_loop()
        if loop is not None:  # made in a coroutine (or a callback): it leaves when this turn of the
            self.flush_soon(loop)  # loop ends, with the others made in it
        # and by the timer in any case; later in a loop (its turn may not end soon: blocking code
        # in it), where the timer's wake-ups would cost the loop's thread
        delay = FLUSH_AFTER if loop is None else FLUSH_AFTER + FLUSH_SLACK
        due = time.monotonic() + delay
        if due < self._flush_by:  # no timed flush comes by then: one more (two threads may both arm
            self._flush_by = due  # one: a flush then finds nothing)
            try:
                armed = self._handle._channel.call_later(delay, self._timed_flush, FLUSH_SLACK)
            except Exception:  # noqa: BLE001 - no timer (the cluster is gone): the next wait sends it
                armed = False
            if not armed:
                self._flush_by = _NEVER

    def _timed_flush(self) -> None:
        self._flush_by = _NEVER
        self.flush()

    def flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """A call was made, or a ref is awaited, on ``loop`` (its own thread): flush once this
        turn of the loop is over, so that every coroutine that makes a call in it goes along."""
        if loop in self._loops:  # coming already (only this loop's own thread takes it out)
            return
        with self._lock:
            if not self._queued or loop in self._loops:
                return
            self._loops.add(loop)
        loop.call_soon(self._loop_flush, loop)

    def _loop_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loops.discard(loop)
        self.flush()

    def flush(self, own: RaftRef | None = None) -> None:
        """Send every queued call now, in order: each run of consecutive writes (or reads at
        one consistency, with one deadline) as one request. ``own``: the ref the calling thread
        is about to wait for; if it is the only call queued and this thread made it, the thread
        waits for its Ray call itself (no hand-over between threads: a lone call costs what a
        ``ray.get`` costs). Its maker is then blocked in that wait, so no later call of the same
        thread can overtake it; one made by another thread leaves under the lock, in order."""
        q = self._queued
        if not q:
            return
        with self._sending:
            n = len(q)
            if not n:
                return
            if n == 1 and q[0] is own and own._maker == _get_ident():
                q.popleft()
                lone = True
            else:
                lone = False
                refs = [q.popleft() for _ in range(n)]
                start = 0
                for i in range(1, n + 1):
                    if i == n or refs[i]._kind is not refs[start]._kind:
                        self._send_run(refs[start:i])
                        start = i
        if lone:  # waited for outside the lock: other threads' calls go meanwhile
            self._dispatch(_Lone(own, own._kind), blocking=True)

    def send_whole(self, sink: _Refs) -> None:
        """Send a run made whole by its caller (a map's), after every call queued before it."""
        with self._sending:
            self.flush()
            self._dispatch(sink)

    def _send_run(self, refs: list[RaftRef], blocking: bool = False) -> None:
        calls = []
        for r in refs:
            calls.append(r._call)
            r._call = None
        kind = refs[0]._kind
        self._dispatch(_Refs(refs, calls, kind.mode, kind.timeout), blocking)

    def _dispatch(self, sink: _Refs | _Lone, blocking: bool = False) -> None:
        """A run leaves: writes now (and remembered until answered, for the reads after them),
        a read once the writes before it are answered."""
        if sink.mode is None:
            with self._lock:
                while self._writes_out and self._writes_out[0].done():
                    self._writes_out.popleft()
                self._writes_out.append(sink)
            self._send(sink, blocking)
        else:
            self._send_read(sink, blocking)

    def _send_read(self, sink: _Refs | _Lone, blocking: bool = False) -> None:
        with self._lock:
            before = next((w for w in self._writes_out if not w.done()), None)
        if before is None:
            self._send(sink, blocking)
        else:  # once that write is answered, look again (off the thread that answered it)
            before.on_done(lambda: _later(self._send_read, sink))

    def _send(self, sink: _Refs | _Lone, blocking: bool = False) -> None:
        """Hand a run to the channel: one call as it is (the channel encodes it when it
        leaves, with what leaves beside it), more encoded here at once (an unpicklable one
        fails alone); ``blocking``: this thread waits for the run's Ray call (see :meth:`flush`)."""
        h = self._handle
        ch = h._channel
        calls, sink.calls = sink.calls, []
        try:
            if len(calls) > 1:
                ch.send_runs(calls, sink, sink.timeout, h._session, sink.mode)
            elif sink.mode is None:
                ch.write(h._session, calls, sink, sink.timeout, blocking=blocking)
            else:
                ch.read(calls, sink.mode, sink, sink.timeout, blocking=blocking)
        except Exception as exc:  # noqa: BLE001 - the cluster was shut down (RaftError), or anything
            for i in range(len(calls)):  # else: every call of the run not answered yet fails with it
                sink.put_error(i, exc)


_later_pool: ThreadPoolExecutor | None = None
_later_lock = threading.Lock()


def _later(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on a thread of its own: a sink's callback that sends calls leaves the
    thread giving results (Ray's callback thread, mostly) to give them."""
    global _later_pool
    with _later_lock:
        if _later_pool is None:
            _later_pool = ThreadPoolExecutor(1, thread_name_prefix="raft-replicated")
    _later_pool.submit(fn, *args)


# ---------------------------------------------------------------------------- references


class _Settled:
    """What a resolved ref carries to another process: its value or its exception."""

    def __init__(self, value: Any, exc: BaseException | None):
        self.value, self.exc = value, exc


def _resolved(settled: _Settled) -> RaftRef:
    ref = RaftRef()
    ref._settle(settled.value, settled.exc)
    return ref


class RaftRef(_RayGetProtocol):
    """The result of a replicated actor's call, once it is in: ``ray.get(ref)``,
    ``ray.get([ref, ...])``, ``await ref``, :meth:`get`, :meth:`future`, :func:`wait`.

    A call that raised raises its exception here (the one the method raised when it could be
    pickled, else a :class:`~raft_actors.errors.CommandError`); a call that could not be
    carried out raises a :class:`~raft_actors.errors.RaftError` (e.g.
    :class:`~raft_actors.errors.UnknownOutcomeError` when its deadline passed after it may have
    been applied). Pickled (inside a Ray task's or actor's arguments), a ref waits for its
    result and travels resolved; :meth:`object_ref` gives a real ``ObjectRef`` for Ray to
    resolve as a top-level argument.
    """

    # Slots, not the instance dict CompiledDAGRef gives: a ref is made per call and lives until
    # its batch is answered, and an instance dict materialised beside it (as CPython 3.11 does
    # once the class's shared keys are settled) doubles what the garbage collector tracks.
    __slots__ = ("_afut", "_call", "_callbacks", "_done", "_exc", "_kind", "_latch", "_maker", "_value")
    _value: Any
    _exc: BaseException | None
    _callbacks: list[Callable[[RaftRef], None]] | None
    _latch: threading.Lock | None  # made (held) when a thread waits for the result
    _afut: asyncio.Future | None  # the future of the (first) coroutine awaiting the result
    _kind: _Kind | None  # where the call waits to be sent and what run it joins (None: nothing to send)
    _call: tuple | None  # (method, args[, kwargs]), until it is sent
    _maker: int | None  # the thread that made the call
    _done: bool

    def __init__(self, call: tuple | None = None, kind: _Kind | None = None,
                 maker: int | None = None) -> None:  # not CompiledDAGRef's
        self._call, self._kind, self._maker = call, kind, maker
        self._value = self._exc = self._callbacks = self._latch = self._afut = None
        self._done = False

    def _settle(self, value: Any, exc: BaseException | None) -> bool:
        """The result is in (the first one given counts); whether this one counted."""
        with _callbacks_lock:
            if self._done:
                return False
            self._value, self._exc, self._done = value, exc, True
            woken = self._take_waiters()
        if woken is not None:
            _wake(self, *woken)
        return True

    def _take_waiters(self) -> tuple[threading.Lock | None, list | None, asyncio.Future | None] | None:
        """Under ``_callbacks_lock``, once ``_done`` is set: who waits, to wake outside it."""
        latch, callbacks, afut = self._latch, self._callbacks, self._afut
        if latch is None and callbacks is None and afut is None:
            return None
        self._callbacks = self._afut = None
        return latch, callbacks, afut

    def _send(self, waiting: bool = False) -> None:
        """Someone waits for the result (``waiting``: this thread, blocked): the call leaves
        now if it has not yet."""
        kind = self._kind
        if kind is not None and not self._done:
            kind.outbox.flush(self if waiting else None)

    def _on_done(self, callback: Callable[[RaftRef], None]) -> None:
        """Call ``callback(self)`` once the result is in (now, if it is)."""
        with _callbacks_lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def _on_result(self, callback: Callable[[RaftRef], None]) -> None:
        """:meth:`_on_done`, the call sent first if it has not been."""
        self._send()
        self._on_done(callback)

    def done(self) -> bool:
        return self._done

    def get(self, timeout: float | None = None) -> Any:
        """The result (what ``ray.get(ref, timeout=...)`` calls): waits up to ``timeout``
        seconds (``None``: until the call's own deadline ends it), then raises
        ``ray.exceptions.GetTimeoutError``."""
        if not self._done:
            kind = self._kind
            if kind is not None:  # it leaves now if it has not (see _send)
                kind.outbox.flush(self if timeout is None else None)  # (a lone call waited for here has no timeout of its own)
            with _callbacks_lock:
                latch = self._latch
                if latch is None and not self._done:
                    latch = self._latch = threading.Lock()
                    latch.acquire()
            if latch is not None:
                if not latch.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                    raise ray.exceptions.GetTimeoutError(f"the result was not in within {timeout} s")
                latch.release()
        if self._exc is not None:
            raise self._exc
        return self._value

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` of the result."""
        from concurrent.futures import Future

        fut: Future = Future()

        def settle(ref: RaftRef) -> None:
            with contextlib.suppress(InvalidStateError):  # the caller cancelled it: nothing to give
                if ref._exc is not None:
                    fut.set_exception(ref._exc)
                else:
                    fut.set_result(ref._value)

        self._on_result(settle)
        return fut

    def __await__(self) -> Any:
        if not self._done:
            loop = asyncio.get_running_loop()
            kind = self._kind
            if kind is not None:
                kind.outbox.flush_soon(loop)
            fut: asyncio.Future | None = loop.create_future()
            with _callbacks_lock:
                if self._done:
                    fut = None
                elif self._afut is None:
                    self._afut = fut  # resolved with the others of its run: one hand-over to the loop
                else:  # another coroutine awaits it too
                    if self._callbacks is None:
                        self._callbacks = []
                    self._callbacks.append(lambda ref, f=fut: _resolve_soon(loop, [(f, ref._value, ref._exc)]))
            if fut is not None:
                return (yield from fut.__await__())
        return self.get()

    def object_ref(self, timeout: float | None = None) -> ray.ObjectRef:
        """A real ``ObjectRef`` of the result (it waits for the result, then ``ray.put`` s it):
        for ``ray.wait`` beside other refs, or an argument Ray resolves for a task. An
        exception is put as Ray puts a task's, so ``ray.get`` raises it."""
        try:
            value = self.get(timeout)
        except ray.exceptions.GetTimeoutError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the call's own error: Ray raises it from the ref
            return ray.put(ray.exceptions.RayTaskError("replicated actor call", str(exc), exc))
        return ray.put(value)

    def __reduce__(self) -> tuple:
        try:
            value, exc = self.get(), None
        except BaseException as e:  # noqa: BLE001 - travels as the result
            value, exc = None, e
        return (_resolved, (_Settled(value, exc),))

    def __copy__(self) -> RaftRef:
        return self

    def __deepcopy__(self, memo: dict) -> RaftRef:
        return self

    def __del__(self) -> None:  # CompiledDAGRef's frees DAG buffers: nothing to do here
        pass

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("error" if self._exc is not None else "done")
        return f"RaftRef({state})"

    __str__ = __repr__


_callbacks_lock = threading.Lock()


def _wake(ref: RaftRef, latch: threading.Lock | None, callbacks: list | None, afut: asyncio.Future | None) -> None:
    if latch is not None:
        latch.release()
    if afut is not None:
        _resolve_soon(afut.get_loop(), [(afut, ref._value, ref._exc)])
    for cb in callbacks or ():
        try:
            cb(ref)
        except Exception:  # one callback's error must not keep the others (or the channel) from going on
            log.exception("a replicated actor's ref callback raised")


def _ready_any(refs: Sequence[Any], on_ready: Callable[[int], None]) -> None:
    for i, r in enumerate(refs):
        if isinstance(r, RaftRef):
            r._on_result(lambda _, i=i: on_ready(i))
        elif isinstance(r, ray.ObjectRef):
            when_done(r, lambda _, i=i: on_ready(i))
        else:
            raise TypeError(f"wait() takes RaftRefs and ObjectRefs, not {type(r).__name__}")


def wait(refs: Sequence[Any], *, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
    """``ray.wait`` for a list of :class:`RaftRef` s and ``ObjectRef`` s, mixed: returns
    ``(ready, not_ready)`` once ``num_returns`` are ready or ``timeout`` seconds passed, each
    list in the order of ``refs``."""
    refs = list(refs)
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}")
    ready: set[int] = set()
    cond = threading.Condition()

    def on_ready(i: int) -> None:
        with cond:
            ready.add(i)
            if len(ready) >= num_returns:
                cond.notify_all()

    _ready_any(refs, on_ready)
    deadline = None if timeout is None else time.monotonic() + timeout
    with cond:
        while len(ready) < num_returns:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            cond.wait(left)
        done = set(ready)
    return [r for i, r in enumerate(refs) if i in done], [r for i, r in enumerate(refs) if i not in done]


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """``ray.get`` for a :class:`RaftRef`, an ``ObjectRef``, or a list mixing them."""
    if isinstance(refs, list):
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in refs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(left) if isinstance(r, RaftRef) else ray.get(r, timeout=left))
        return out
    if isinstance(refs, RaftRef):
        return refs.get(timeout)
    return ray.get(refs, timeout=timeout)
