"""Failpoints: named places in the worker where a fault test can make it pause, so that a SIGKILL, a
database restart or a full disk lands exactly there rather than wherever a timer happens to fall (in the
manner of FreeBSD's fail(9) and TiKV's fail-rs). Inert unless the environment variable
`UNLEARN_FAILPOINTS` names one, e.g. `publish.before_commit=sleep(30)`; nothing in production sets it."""

from __future__ import annotations

import os
import re
import time
from functools import lru_cache

_SPEC = re.compile(r"^sleep\((\d+(?:\.\d+)?)\)$")


@lru_cache(maxsize=8)
def _parse(raw: str) -> dict[str, float]:
    """`name=sleep(seconds)`, comma-separated; anything else is refused loudly (a typo must not
    silently turn a fault test into a test of nothing)."""
    points: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, action = item.partition("=")
        match = _SPEC.match(action.strip())
        if not name or match is None:
            raise ValueError(f"UNLEARN_FAILPOINTS: cannot parse {item!r}; expected name=sleep(seconds)")
        points[name.strip()] = float(match.group(1))
    return points


def hit(name: str) -> None:
    """Pause here if a failpoint of this name is set."""
    pause = _parse(os.environ.get("UNLEARN_FAILPOINTS", "")).get(name)
    if pause:
        time.sleep(pause)
