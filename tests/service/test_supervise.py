"""`Supervised`: a worker the supervisor restarted is stopped as gracefully as the first one. Linux sends a
child's parent-death signal when the *thread* that forked it ends; restarts are forked by the watcher
thread, and a stop that ended that thread first SIGKILLed the restarted worker before its SIGTERM (a
deploy's stop counted as a death, and three of them failed a job)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from service.cli.supervise import Supervised
from tests.helpers import wait_until

CHILD = """
import os, signal, sys
from pathlib import Path
out = Path(sys.argv[1])
def graceful(signum, frame):
    (out / f"term-{os.getpid()}").write_text("")
    sys.exit(0)
signal.signal(signal.SIGTERM, graceful)
(out / f"started-{os.getpid()}").write_text("")
while True:
    signal.pause()  # until the supervisor's SIGTERM (or a SIGKILL)
"""


def started(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("started-*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_restarted_child_gets_the_stop_s_sigterm(tmp_path: Path) -> None:
    sup = Supervised("child", [sys.executable, "-c", CHILD, str(tmp_path)])
    sup.start()
    try:
        [first] = wait_until(lambda: started(tmp_path), timeout=30, what="the child to start")
        os.kill(first, signal.SIGKILL)
        [second] = wait_until(
            lambda: [p for p in started(tmp_path) if p != first], timeout=30, what="the restart"
        )
    finally:
        sup.stop(timeout=30)
    assert (tmp_path / f"term-{second}").exists(), "the restarted child was killed, not stopped"
    assert sup.proc is not None and sup.proc.returncode == 0
    assert not (tmp_path / f"term-{first}").exists()
