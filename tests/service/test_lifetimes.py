"""`die_with_parent`: a child whose parent died before it asked to die with it (the window between a fork
and the call, which a loaded machine widens: the worker's embedded beat was left running that way) still
dies, instead of living on re-parented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until

CHILD = """
import os, select, signal, sys, time
from service.core.lifetimes import die_with_parent
parent = os.getpid()
gone_r, gone_w = os.pipe()  # closes in the child when the parent exits: no timing involved
pid = os.fork()
if pid == 0:
    os.close(gone_w)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # let the caller's pipe close with the parent
    os.dup2(devnull, 2)
    select.select([gone_r], [], [], 20)  # the parent is exiting (its files close before it is gone) ...
    deadline = time.monotonic() + 20
    while os.getppid() == parent and time.monotonic() < deadline:  # ... and now re-parented: too late
        select.select([], [], [], 0.01)
    die_with_parent(parent if sys.argv[1] == "checked" else None)
    signal.pause()
    os._exit(0)
print(pid, flush=True)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_whose_parent_is_already_gone_dies_when_it_asks_to_die_with_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "checked"], capture_output=True, text=True, timeout=30
    )
    child = int(done.stdout)
    wait_until(lambda: not alive(child), timeout=20, what="the orphaned child to kill itself")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_without_the_parent_check_the_late_child_lives_on() -> None:
    """What the check is for: the kernel only watches from the call on, so this one is orphaned."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "unchecked"], capture_output=True, text=True, timeout=30
    )
    child = int(done.stdout)
    try:
        with pytest.raises(AssertionError):
            wait_until(lambda: not alive(child), timeout=3, what="the orphaned child to die")
    finally:
        subprocess.run(["kill", "-9", str(child)], check=False)


def test_an_api_process_reads_its_supervisor_once_and_passes_it_on_to_nothing() -> None:
    """Left in the environment, anything an API process started would have died with the API's
    supervisor, or at once where that is not its parent (a review)."""
    import os

    code = (
        "import os; from service.core.lifetimes import die_with_api_supervisor; die_with_api_supervisor(); "
        "print(os.environ.get('UNLEARN_API_SUPERVISOR_PID'))"
    )
    env = {**os.environ, "UNLEARN_API_SUPERVISOR_PID": str(os.getpid())}  # this process is its parent
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "None"), done.stderr
