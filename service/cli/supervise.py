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
        self._stopping = threading.Event()  # restart nothing from now on
        self._done = threading.Event()  # the child is gone: the watcher may end
        self._lock = threading.Lock()  # a restart and a stop never cross
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
        """Restarts the child from this thread until a stop. Linux sends a child's parent-death signal
        when the *thread* that forked it ends, not the process: so this thread outlives every child it
        started, or a stop after a restart would SIGKILL the worker before its SIGTERM could hand its
        job back (and the job would count a death)."""
        while not self._done.wait(0.5):
            assert self.proc is not None
            code = self.proc.poll()
            if code is None or self._stopping.is_set():
                continue
            self._kill_group()  # whatever it left behind (its beat) goes with it
            ran = time.monotonic() - self.started_at
            self.delay = FIRST_DELAY if ran >= HEALTHY_AFTER else self.delay
            print(
                f"{self.name} exited with code {code} after {ran:.0f}s; restarting in {self.delay:.0f}s",
                flush=True,
            )
            if self._stopping.wait(self.delay):
                continue
            self.delay = min(self.delay * 2, MAX_DELAY)
            with self._lock:
                if not self._stopping.is_set():
                    self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM for a graceful shutdown, then SIGKILL for the whole group; the watcher ends last."""
        with self._lock:
            self._stopping.set()
        try:
            if self.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                self._kill_group()
        finally:
            self._done.set()
            if self._thread.is_alive():
                self._thread.join(timeout=5)
