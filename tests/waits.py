"""Waits on a condition with a deadline, never a fixed sleep before an assertion: on two
shared cores a fixed sleep is either too short (a flaky test) or too long (a slow one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pandas as pd

from driftloop.monitoring import read_log
from driftloop.storage import Folder


def wait_until(
    condition: Callable[[], object], timeout_s: float = 30, interval_s: float = 0.05
) -> None:
    """Return once `condition()` is truthy; fail the test if it is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], object], timeout_s: float = 30, interval_s: float = 0.05
) -> None:
    """`wait_until` inside an event loop: other tasks (the load) run while it waits."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(interval_s)


def logged(
    log: Folder, until: Callable[[pd.DataFrame], bool], timeout_s: float = 30
) -> pd.DataFrame:
    """The published log once `until` holds for it (a replica publishes every flush)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = read_log(log)
        if not frame.empty and until(frame):
            return frame
        assert time.monotonic() < deadline, f"{log} never held the expected records"
        time.sleep(0.1)


def has_request_ids(request_ids: set[str]) -> Callable[[pd.DataFrame], bool]:
    """A `logged` condition: every one of `request_ids` is in the published log."""
    return lambda frame: request_ids <= set(frame["request_id"])
