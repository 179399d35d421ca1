"""`unlearn run` supervises its worker: one killed with SIGKILL mid-flight is restarted (with whatever it
had started, its beat, gone with it), and requests are served again without anyone stepping in."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_until
from tests.stack import LiveStack, wait_for_request

pytestmark = pytest.mark.slow


def worker_pids(stack: LiveStack) -> list[int]:
    return [int(p) for p in re.findall(r"worker started \(pid (\d+)\)", stack.log_path.read_text())]


def ready(stack: LiveStack) -> bool:
    return httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_is_restarted_and_leaves_no_orphan(tmp_path: Path) -> None:
    stack = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp_path / "var")}, log_path=tmp_path / "stack.log")
    stack.start()
    try:
        [first] = wait_until(lambda: worker_pids(stack), timeout=30, what="the worker to start")
        wait_until(lambda: ready(stack), timeout=60, what="/readyz to see the worker's heartbeat")
        os.kill(first, signal.SIGKILL)
        restarted = wait_until(
            lambda: [p for p in worker_pids(stack) if p != first], timeout=60, what="the worker to restart"
        )
        assert len(restarted) == 1
        wait_until(lambda: not group_alive(first), timeout=30, what="the killed worker's beat to be gone")
        assert "worker exited with code -9" in stack.log_path.read_text()
        with stack.client() as c:
            r = c.post("/v1/models/digits/deletion-requests", json={"sample_ids": ["digits-0007"]})
            assert r.status_code == 202, r.text
            done = wait_for_request(c, r.json()["id"], timeout=300)
        assert done["state"] == "completed", done
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
    # SIGTERM (a service manager, Ctrl-C) stops the worker and its beat too.
    wait_until(lambda: not group_alive(restarted[0]), timeout=30, what="the worker and its beat to stop")


def test_a_killed_supervisor_takes_its_worker_with_it(tmp_path: Path) -> None:
    stack = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp_path / "var")}, log_path=tmp_path / "stack.log")
    stack.start()
    try:
        [worker] = wait_until(lambda: worker_pids(stack), timeout=30, what="the worker to start")
        assert stack.proc is not None
        os.kill(stack.proc.pid, signal.SIGKILL)  # no `finally` runs: only the kernel can clean up
        stack.proc.wait(timeout=30)
        wait_until(lambda: not group_alive(worker), timeout=30, what="the orphaned worker to die")
    finally:
        stack.stop()
