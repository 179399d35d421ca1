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
import tempfile
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

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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

    def start_worker(
        self, name: str, *, beat: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process; `env` adds to the cluster's (e.g. a failpoint for this worker only)."""
        argv = [str(BIN / "unlearn"), "worker"] + (["--beat"] if beat else [])
        proc = self._spawn(name, argv, env)
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


PG_BIN = Path("/usr/lib/postgresql")


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, its own port), which a fault
    test may stop and start without disturbing the machine's shared server. Runs as the `postgres` user
    (the server refuses to run as root)."""

    # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="unlearn-pg-")) / "pg")
    port: int = field(default_factory=free_port)

    @staticmethod
    def unavailable() -> str | None:
        if not list(PG_BIN.glob("*/bin/initdb")):
            return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            return "running as root without runuser, so a private PostgreSQL cannot be started"
        return None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        [bindir] = sorted(PG_BIN.glob("*/bin"))[-1:]
        cmd = [str(bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd="/")

    def init(self) -> None:
        self.folder.parent.chmod(0o755)
        self.folder.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "-A", "trust")
        self.start()

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.folder / "pg.log"),
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder.parent, ignore_errors=True)
