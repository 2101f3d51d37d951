"""Polling with a deadline, the one way tests wait for something to become true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

#: Generous: a loaded 2-core CI machine; a passing probe returns as soon as it holds.
DEADLINE_S = 30.0


def wait_for(what: str, probe: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """Poll until `probe` returns something truthy; fail with the last value after the deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")
