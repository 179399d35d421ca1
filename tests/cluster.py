"""A production-shaped cluster for fault tests: PostgreSQL, a private redis-server we can stop and start,
an API process (`unlearn api`) and any number of separate worker processes (`unlearn worker`), each a
real process that a test may restart or SIGKILL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import free_port, port_open, wait_until

BIN = Path(sys.executable).parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class Cluster:
    tmp: Path
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "UNLEARN_VAR_DIR": str(self.tmp / "var"),
            "DATABASE_URL": self.database_url,
            "BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PORT": str(self.api_port),
            "PYTHONUNBUFFERED": "1",
            # Fast failure detection, so the fault tests take seconds, not minutes.
            "UNLEARN_LEASE_SECONDS": "6",
            "UNLEARN_HEARTBEAT_SECONDS": "0.5",
            "UNLEARN_RECONCILE_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
            **self.extra_env,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # --- services ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis = self._spawn(
            "redis",
            [
                REDIS_SERVER,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        wait_until(lambda: port_open(self.redis_port), timeout=20, what="redis-server")

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()
        wait_until(lambda: not port_open(self.redis_port), timeout=10, what="redis to stop")

    def setup(self) -> str:
        """Migrate, register the demo model, and return an admin key."""
        (self.tmp / "var").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BIN / "unlearn"), "db", "upgrade"], env=self.env, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "workers.demo"], env=self.env, check=True, capture_output=True)
        out = subprocess.run(
            [str(BIN / "unlearn"), "keys", "create", "--tenant", "default", "--scopes", "admin"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.splitlines()[0].strip()

    def start_api(self) -> None:
        self.api = self._spawn("api", [str(BIN / "unlearn"), "api"])

        def up() -> bool:
            assert self.api is not None
            if self.api.poll() is not None:
                raise AssertionError(f"API exited: {self.log('api')}")
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="the API")

    def stop_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGTERM)
        self.api.wait(timeout=30)

    def start_worker(self, name: str, *, beat: bool = False) -> subprocess.Popen[bytes]:
        argv = [str(BIN / "unlearn"), "worker"] + (["--beat"] if beat else [])
        proc = self._spawn(name, argv)
        self.workers[name] = proc
        return proc

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.workers.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def close(self) -> None:
        for name in list(self.workers):
            self.kill_worker(name)
        for proc in (self.api, self.redis):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
