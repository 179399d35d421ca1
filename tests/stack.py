"""A live stack for integration tests: `unlearn run` (the launcher a user starts with `make run`) in a
subprocess, with real uvicorn, a real Celery worker process, and the chosen database and broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import free_port, wait_until

UNLEARN = str(Path(sys.executable).parent / "unlearn")


@dataclass
class LiveStack:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def var_dir(self) -> Path:
        return Path(self.env["UNLEARN_VAR_DIR"])

    def start(self, timeout: float = 300) -> None:
        env = {**os.environ, **self.env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [UNLEARN, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_until(
            self._healthy,
            timeout=timeout,
            interval=0.5,
            what=f"the stack on {self.base_url} ({self.log_path})",
        )

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"`unlearn run` exited with {self.proc.returncode}; log:\n{self.log()}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as Ctrl-C or a service manager would; SIGKILL the group if it does not exit in time."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        # The worker is a child in the same session; make sure nothing outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def client(self) -> httpx.Client:
        key = (self.var_dir / "admin.key").read_text().strip()
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def wait_for_request(client: httpx.Client, request_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/deletion-requests/{request_id}").json()
        return body if body["state"] in ("completed", "failed", "cancelled") else None

    return wait_until(done, timeout=timeout, interval=0.5, what=f"request {request_id} to finish")
