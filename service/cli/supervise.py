"""`unlearn run` keeps its worker alive: a child process that dies (killed for memory, a crash, SIGKILL)
is restarted with backoff and the restart is logged, instead of leaving the API accepting requests that
nothing serves. Each child runs in a session of its own, so stopping it also stops what it started (the
worker's embedded beat), and a restart never leaves an orphan beat beside the new one."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from service.core.lifetimes import die_with_parent

FIRST_DELAY, MAX_DELAY, HEALTHY_AFTER = 1.0, 30.0, 60.0


class Supervised:
    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name, self.argv = name, list(argv)
        self.proc: subprocess.Popen[bytes] | None = None
        self.delay, self.started_at = FIRST_DELAY, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid())
        )
        self.started_at = time.monotonic()
        print(f"{self.name} started (pid {self.proc.pid})", flush=True)

    def _kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            assert self.proc is not None
            code = self.proc.poll()
            if code is None:
                continue
            self._kill_group()  # whatever it left behind (its beat) goes with it
            ran = time.monotonic() - self.started_at
            self.delay = FIRST_DELAY if ran >= HEALTHY_AFTER else self.delay
            print(
                f"{self.name} exited with code {code} after {ran:.0f}s; restarting in {self.delay:.0f}s",
                flush=True,
            )
            if self._stop.wait(self.delay):
                return
            self.delay = min(self.delay * 2, MAX_DELAY)
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM for a graceful shutdown, then SIGKILL for the whole group."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._kill_group()
