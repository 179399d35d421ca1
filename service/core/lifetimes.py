"""Processes that must not outlive their parent.

`unlearn run` starts its worker, and the worker starts its embedded beat. A SIGKILL leaves no `finally`
to stop either, and an orphaned beat keeps scheduling beside the one the restarted stack starts: repeated
crashes pile them up. On Linux the kernel can send a signal to a child when its parent dies
(PR_SET_PDEATHSIG); elsewhere this is a no-op and the supervisor's process-group kill is all there is."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Any

PR_SET_PDEATHSIG = 1
_prctl: Any = None
with contextlib.suppress(OSError, AttributeError):  # looked up before any fork: a child only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask for SIGKILL when this process's parent dies. With `parent_pid`, also die now if the parent is
    already gone (it may have died between the fork and this call, and the kernel only watches from
    here on)."""
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


SUPERVISOR_ENV = "UNLEARN_API_SUPERVISOR_PID"  # set by `unlearn api --workers N` for the processes it spawns


def die_with_api_supervisor() -> None:
    """An API process spawned by `unlearn api --workers N` dies with it: uvicorn's supervisor, killed
    with SIGKILL, left its processes serving the port, and the restarted API could not bind it."""
    supervisor = os.environ.pop(SUPERVISOR_ENV, None)  # read once: nothing this process starts inherits it
    if supervisor and supervisor.isdigit() and int(supervisor) != os.getpid():
        die_with_parent(int(supervisor))
