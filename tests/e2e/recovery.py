"""Recovery times measured by the fault tests, printed as one table at the end of the run (see
`pytest_terminal_summary` in tests/conftest.py). Measured, never asserted: a wall-clock threshold would
make the suite flaky on a loaded machine.

Tests may run in several processes (pytest-xdist), and the table is printed by the one that started them:
each time is appended as a line of JSON to the file that process named in ``RECOVERY_LOG`` (set in
tests/conftest.py before any test process starts, so every one inherits it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RECOVERY_LOG = "UNLEARN_TEST_RECOVERY_LOG"


class Stopwatch:
    """Seconds since a fault ended (the moment recovery starts)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def record(self, scenario: str, until: str) -> float:
        took = time.monotonic() - self.started
        with open(os.environ[RECOVERY_LOG], "a") as f:  # one short line per write: appends do not interleave
            f.write(json.dumps([scenario, until, took]) + "\n")
        return took


def table() -> list[str]:
    path = Path(os.environ[RECOVERY_LOG])
    recorded = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if not recorded:
        return []
    width = max(len(s) for s, _, _ in recorded)
    lines = [f"{'scenario':<{width}}  {'recovered when':<44}  seconds"]
    lines += [f"{s:<{width}}  {u:<44}  {t:7.1f}" for s, u, t in recorded]
    return lines
