"""Where node actors run: one Raft node per machine, pinned by a custom resource.

A Ray node (a machine) that may host Raft nodes offers one custom resource named
``raft_slot_<name>``, with a ``<name>`` unique to that machine (``cluster.yaml`` uses the host
name)::

    ray start --address=<head>:6379 --resources='{"raft_slot_db1": 1}'

A Raft node takes a sliver of one slot's resource (:data:`SLOT_SHARE`), so Ray puts it on that
machine and nowhere else: after a crash, or after the machine is replaced by one that offers the
same slot, Ray restarts the actor where its disk is. A slot is a name, not a Ray node id (which
dies with its node). Two Raft nodes of one cluster never share a slot; many clusters may.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

import ray

from .errors import PlacementError

#: prefix of the custom resource that names a machine able to host Raft nodes
SLOT_PREFIX = "raft_slot_"
#: how much of a slot's resource one Raft node takes (many clusters may share a machine)
SLOT_SHARE = 0.001

Placement = Literal["auto", "slots"] | None


def slot_resource(slot: str) -> str:
    """The custom resource that pins an actor to the machine offering ``slot``."""
    return SLOT_PREFIX + slot


def available_slots() -> list[str]:
    """The slots offered by the Ray cluster's live nodes, sorted by name."""
    return sorted(k[len(SLOT_PREFIX):] for k in ray.cluster_resources() if k.startswith(SLOT_PREFIX))


def choose_slots(count: int, taken: Collection[str], placement: Placement) -> list[str | None]:
    """Slots for ``count`` new Raft nodes, none of them in ``taken`` (used by live members).

    ``placement``: ``"slots"`` requires a free slot for each node (:class:`PlacementError`
    otherwise); ``"auto"`` uses slots when the Ray cluster offers enough of them and leaves the
    nodes unpinned when it offers none (a single machine, e.g. the embedded local Ray);
    ``None`` never pins.
    """
    if placement not in ("auto", "slots", None):
        raise ValueError(f"placement must be 'auto', 'slots' or None, not {placement!r}")
    if placement is None:
        return [None] * count
    offered = available_slots()
    free = [s for s in offered if s not in set(taken)]
    if len(free) >= count:
        return list(free[:count])
    if placement == "auto" and not offered:
        return [None] * count
    raise PlacementError(
        f"{count} Raft node(s) need a machine each, but the Ray cluster offers {len(free)} free slot(s) "
        f"(offered: {offered or 'none'}, in use: {sorted(taken) or 'none'}); start each Ray node with "
        f"--resources='{{\"{SLOT_PREFIX}<name>\": 1}}' (cluster.yaml does), or pass placement=None"
    )


def slot_options(slot: str | None) -> dict[str, Any]:
    """The ``ray.remote`` options that pin a node actor to ``slot`` (none for ``None``)."""
    return {} if slot is None else {"resources": {slot_resource(slot): SLOT_SHARE}}
