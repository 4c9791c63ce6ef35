"""A Raft cluster spread over several Ray nodes: placement by slot, a second driver, machine loss.

The scenario (``tests/multinode_scenario.py``) starts a multi-node Ray on this machine with
``ray.cluster_utils.Cluster``, so it runs in a process of its own: the rest of the suite shares
one in-process Ray session (the ``ray_session`` fixture), and a driver joins one Ray only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .waiting import scenario_passes

SCENARIO = Path(__file__).with_name("multinode_scenario.py")


@pytest.mark.timeout(240)
def test_raft_nodes_on_slots_survive_machine_loss_and_come_back() -> None:
    scenario_passes(str(SCENARIO), 180, ("ray_cluster_start", "raft_launch", "second_driver",
                                         "follower_back_after_add", "leader_back_after_add", "total"))
