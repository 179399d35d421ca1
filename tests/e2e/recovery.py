"""Recovery times measured by the fault tests, printed as one table at the end of the run (see
`pytest_terminal_summary` in tests/conftest.py). Measured, never asserted: a wall-clock threshold would
make the suite flaky on a loaded machine."""

from __future__ import annotations

import time

RECORDED: list[tuple[str, str, float]] = []


class Stopwatch:
    """Seconds since a fault ended (the moment recovery starts)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def record(self, scenario: str, until: str) -> float:
        took = time.monotonic() - self.started
        RECORDED.append((scenario, until, took))
        return took


def table() -> list[str]:
    if not RECORDED:
        return []
    width = max(len(s) for s, _, _ in RECORDED)
    lines = [f"{'scenario':<{width}}  {'recovered when':<44}  seconds"]
    lines += [f"{s:<{width}}  {u:<44}  {t:7.1f}" for s, u, t in RECORDED]
    return lines
