"""The wire format of client requests: commands pickled once, plain pickle for what any process
can import, cloudpickle for what is defined in the user's own script."""

from __future__ import annotations

import pickle
import threading

import pytest

from raft_actors import CommandRejectedError
from raft_actors.applier import decode_parts
from raft_actors.envelope import Outcome, decode_call, encode_results, encode_values, request_call, results_of


class Local:
    """Stands for a class defined in a user's script or notebook."""

    def __init__(self, x: int):
        self.x = x


Local.__module__ = "__main__"  # as if the user's script defined it


@pytest.mark.parametrize("command", [("put", "k", b"v"), ("cas", "k", None, [1, 2.5, {"a": (True,)}]), 42, "s"])
def test_builtin_commands_take_plain_pickle_and_round_trip(command) -> None:
    data = encode_values([command])
    assert b"cloudpickle" not in data and pickle.loads(data) == [command]
    (part,) = decode_parts(decode_call(request_call(7, 3, 2, command)))
    assert part == (7, 3, 2, [command])


def test_what_the_users_script_defines_takes_cloudpickle() -> None:
    data = encode_values([("put", "k", Local(5))])
    assert b"cloudpickle" in data
    (cmd,) = pickle.loads(data)
    assert cmd[2].x == 5
    assert pickle.loads(encode_values([lambda x: x + 1]))[0](1) == 2  # plain pickle cannot do lambdas


def test_unpicklable_command_is_rejected() -> None:
    with pytest.raises(CommandRejectedError, match="cannot be serialized"):
        encode_values([("put", "k", threading.Lock())])


def test_results_travel_as_values_and_errors_and_unpicklable_ones_become_command_errors() -> None:
    outs = [Outcome(True, 1), Outcome(False, ValueError("no")), Outcome(True, threading.Lock())]
    values, errors = pickle.loads(encode_results(outs))
    assert values[0] == 1 and values[1] is None and set(errors) == {1, 2}
    assert isinstance(errors[1], ValueError) and type(errors[2]).__name__ == "CommandError"
    assert results_of(outs[:2]) == ([1, None], {1: outs[1].value})
