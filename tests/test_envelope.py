"""The wire format of client requests: plain pickle for built-in commands, cloudpickle for the rest."""

from __future__ import annotations

import pickle
import threading

import pytest

from raft_actors import CommandRejectedError
from raft_actors.envelope import decode_request, encode_query, encode_request


class Local:
    """Stands for a class defined in a user's script or notebook."""

    def __init__(self, x: int):
        self.x = x


@pytest.mark.parametrize("command", [("put", "k", b"v"), ("cas", "k", None, [1, 2.5, {"a": (True,)}]), 42, "s"])
def test_builtin_commands_take_plain_pickle_and_round_trip(command) -> None:
    data = encode_request(7, 3, 2, command)
    assert pickle.loads(data) == (7, 3, 2, command)  # a plain tuple: no class to import
    req = decode_request(data)
    assert (req.client_id, req.seq, req.ack, req.command) == (7, 3, 2, command)


def test_other_commands_take_cloudpickle() -> None:
    req = decode_request(encode_request(7, 1, 1, ("put", "k", Local(5))))
    assert isinstance(req.command[2], Local) and req.command[2].x == 5
    assert pickle.loads(encode_query(("get", "k"))) == ("get", "k")


def test_unpicklable_command_is_rejected() -> None:
    with pytest.raises(CommandRejectedError, match="cannot be serialized"):
        encode_request(7, 1, 1, ("put", "k", threading.Lock()))
