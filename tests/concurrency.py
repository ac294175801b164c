"""Releasing calls on many threads at once, for the race tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

HANG_GUARD = 60.0  # seconds; only there so that a deadlock fails instead of hanging forever


def run_at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run each call on its own thread, released together; re-raises the first error."""
    barrier = threading.Barrier(len(calls))

    def released(call: Callable[[], T]) -> T:
        barrier.wait(timeout=HANG_GUARD)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(released, call) for call in calls]
        return [future.result(timeout=HANG_GUARD) for future in futures]
