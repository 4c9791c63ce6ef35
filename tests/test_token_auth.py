"""The README's by-hand multi-machine recipe with Ray's token authentication on: one token
generated and copied to every machine, ``RAY_AUTH_MODE=token`` everywhere, three ``ray start``
nodes each offering its own slot, a Raft cluster launched across them with
``address="auto"``; a node without the token is refused. See ``tests/token_auth_scenario.py``
(it runs in a process and session of its own: ``ray start`` leaves Ray running in the session
of whoever ran it, and the suite's own Ray must not be touched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .waiting import scenario_passes

SCENARIO = Path(__file__).with_name("token_auth_scenario.py")


@pytest.mark.timeout(240)
def test_by_hand_recipe_with_token_auth_across_three_ray_nodes() -> None:
    scenario_passes(str(SCENARIO), 180, ("ray_start", "raft_launch", "second_driver", "total"))
