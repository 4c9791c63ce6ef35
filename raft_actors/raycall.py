"""Completion of Ray calls by callback, as cheaply as Ray allows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray


def when_done(ref: Any, callback: Callable[[Any], None]) -> None:
    """Call ``callback(result)`` on Ray's callback thread once ``ref`` is ready: ``result`` is
    the call's value, or the :class:`ray.exceptions.RayError` it ended with (a
    :class:`~ray.exceptions.RayTaskError` when the method itself raised).

    Ray's ``ObjectRef._on_completed`` does this directly; ``ObjectRef.future()`` wraps it in a
    ``concurrent.futures.Future`` and costs about 0.05 ms more per call (measured here), so the
    former is used when this Ray has it. The callback must not block: that thread is the one
    Ray needs to answer any blocking call (``ray.get_actor`` there deadlocks).
    """
    on_completed = getattr(ref, "_on_completed", None)
    if on_completed is not None:
        on_completed(callback)
        return

    def unwrap(fut: Any) -> None:
        try:
            callback(fut.result())
        except ray.exceptions.RayError as exc:
            callback(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a cause re-raised as itself: still the call's end
            callback(ray.exceptions.RayTaskError("", "", exc))

    ref.future().add_done_callback(unwrap)


def outcome(result: Any) -> Any:
    """The value of a result :func:`when_done` gave, raising the exception it carries."""
    if isinstance(result, BaseException):
        raise result
    return result
