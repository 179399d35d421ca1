"""Small test utilities: polling with a deadline (never sleeping blindly), ports, service probes."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pg_url(database: str) -> str:
    """The SQLAlchemy URL of another database on the PostgreSQL server that PG_ADMIN_URL names."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def wait_until(
    fn: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call `fn` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def services_available() -> str | None:
    """None if PostgreSQL and Redis answer on 127.0.0.1, else the reason they cannot be used."""
    if not port_open(5432):
        return "PostgreSQL is not listening on 127.0.0.1:5432 (the embedded SQLite stack is tested instead)"
    if not port_open(6379):
        return "Redis is not listening on 127.0.0.1:6379 (the embedded filesystem broker is tested instead)"
    try:
        import psycopg
        import redis

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "skip, and say why"
        return f"PostgreSQL/Redis on 127.0.0.1 did not answer: {exc}"
    return None


# Migrating a fresh database costs 0.2-0.4 s and hundreds of tests start from one, so each session migrates
# one SQLite template and copies it: the same schema and rows as migrating (PostgreSQL: conftest.pg_template).
_SQLITE_TEMPLATE = Path(tempfile.mkdtemp(prefix="unlearn-schema-")) / "template.db"


def migrated(url: str) -> None:
    """Bring the database at ``url`` to the newest schema: a new SQLite file is a copy of the session's
    migrated template; anything else is migrated (a no-op where it already is)."""
    from service.core.db import migrate

    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if path is None or path.exists():
        migrate.upgrade(url)
        return
    if not _SQLITE_TEMPLATE.exists():
        migrate.upgrade(f"sqlite:///{_SQLITE_TEMPLATE}")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_SQLITE_TEMPLATE, path)
