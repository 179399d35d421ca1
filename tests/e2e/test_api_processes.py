"""`unlearn api --workers N`, the production command (README, docker-compose): several API processes behind
one port, and one /metrics for all of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.core.settings import Settings
from tests.helpers import free_port, group_alive, migrated, wait_until
from tests.stack import UNLEARN

pytestmark = pytest.mark.slow

SERIES = re.compile(
    r'^unlearn_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.M
)


@contextmanager
def two_api_processes(
    env: dict[str, str], log_path: Path, workers: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """`unlearn api --workers 2` (or ``workers``) in a process group of its own, once every process has
    started; the group is killed at the end if anything of it is left."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [UNLEARN, "api", "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def both_up() -> bool:
            return log_path.read_text(errors="replace").count("Application startup complete") == workers

        wait_until(both_up, timeout=120, interval=0.5, what=f"{workers} API processes ({log_path})")
        yield proc
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def stopping_api(tmp_path: Path, grace_s: float) -> tuple[dict[str, str], Settings]:
    """The environment of an API on its own port and migrated embedded database, whose stop gives requests
    under way ``grace_s`` (its checkpoint folder made)."""
    env = {**os.environ, "UNLEARN_VAR_DIR": str(tmp_path / "var"), "PORT": str(free_port())}
    env |= {"UNLEARN_SHUTDOWN_GRACE_SECONDS": str(grace_s)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = Settings(UNLEARN_VAR_DIR=env["UNLEARN_VAR_DIR"])  # type: ignore[call-arg]
    settings.checkpoint_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    return env, settings


def served_count(url: str) -> float:
    """The /healthz counter, as one scrape (a new connection, so any process may answer) reads it."""
    found = SERIES.search(httpx.get(f"{url}/metrics", timeout=10).text)
    return float(found.group(1)) if found else 0.0


def test_every_scrape_of_a_multi_process_api_counts_what_all_its_processes_served(tmp_path: Path) -> None:
    """Each process used to answer with its own counters: 58, 217, 58 for one series from one scrape to
    the next, which Prometheus reads as counter resets."""
    env = {**os.environ, "UNLEARN_VAR_DIR": str(tmp_path / "var"), "PORT": str(free_port())}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = Settings(UNLEARN_VAR_DIR=env["UNLEARN_VAR_DIR"])  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    url = f"http://127.0.0.1:{env['PORT']}"
    with two_api_processes(env, tmp_path / "api.log") as proc:
        served = 40
        for _ in range(served):  # a new connection each time: the kernel hands them to both processes
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        scrapes = [served_count(url) for _ in range(8)]
        assert scrapes == [served] * 8, scrapes
        # killed with SIGKILL, its processes go with it (they kept serving the port, orphaned)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not group_alive(proc.pid), timeout=60, interval=0.2, what="the API processes")


def test_a_stopping_api_waits_for_a_stalled_download_only_its_grace_period(tmp_path: Path) -> None:
    """SIGTERMed while a client held a download open without reading it, `unlearn api` never stopped,
    still bound to its port and answering no one (a probe's waited 41 s): requests under way get
    UNLEARN_SHUTDOWN_GRACE_SECONDS, then the processes exit."""
    import hashlib
    import socket

    from sqlalchemy import select

    from service.core.db.engine import session_scope
    from service.core.db.tables import ModelVersion
    from tests.factories import make_key, make_model

    env, settings = stopping_api(tmp_path, grace_s=2)
    big = settings.checkpoint_dir / "big.safetensors"
    big.write_bytes(bytes(64 << 20))
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s)
        v1 = s.scalars(select(ModelVersion)).one()
        v1.checkpoint_uri, v1.sha256 = str(big), hashlib.sha256(big.read_bytes()).hexdigest()
    with two_api_processes(env, tmp_path / "api.log") as proc, socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        stalled.connect(("127.0.0.1", int(env["PORT"])))
        path = "/v1/models/toy/versions/v1/checkpoint"
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        assert stalled.recv(32).startswith(b"HTTP/1.1 200")  # under way; never read again
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_until(lambda: not group_alive(proc.pid), timeout=30, interval=0.2, what="the API processes")


def test_a_request_whose_body_outlasts_the_shutdown_grace_is_a_503_to_retry(tmp_path: Path) -> None:
    """A deletion request (or an upload) still arriving when the grace ran out got uvicorn's plain-text
    500 (a probe's upload at 400 bytes/s): the server's own stop is a 503 the client may retry."""
    import json
    import socket

    from service.core.db.engine import session_scope
    from tests.factories import make_key, make_model
    from tests.liveapp import read_response

    env, settings = stopping_api(tmp_path, grace_s=1)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s)
    body = json.dumps({"sample_ids": ["toy-0001"], "reference": "x" * 500}).encode()
    with two_api_processes(env, tmp_path / "api.log", workers=1) as proc, socket.socket() as slow:
        slow.settimeout(60)
        slow.connect(("127.0.0.1", int(env["PORT"])))
        head = (
            f"POST /v1/models/toy/deletion-requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        slow.sendall(head.encode() + body[:10])  # the rest never comes
        # one process, one event loop: a request sent after the head is answered after the head was read,
        # so the stop finds the request under way (a stop before it would close the idle connection)
        assert httpx.get(f"http://127.0.0.1:{env['PORT']}/healthz", timeout=30).status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        status, headers, answer = read_response(slow)
        assert status == 503, (status, answer)
        assert headers.get("content-type", "").startswith("application/problem+json"), headers
        assert headers.get("retry-after") == "2" and "nothing of it was done" in json.loads(answer)["detail"]
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # one process: uvicorn re-raises the signal
    # a planned stop is no crash: no "Exception in ASGI application" traceback per request it cut off
    assert "Exception in ASGI application" not in (tmp_path / "api.log").read_text(errors="replace")


def test_a_beat_started_before_anything_made_its_folder_makes_it(tmp_path: Path) -> None:
    """`unlearn beat` (and a worker's `--beat`) died writing its schedule into an UNLEARN_VAR_DIR nothing
    had made yet (PostgreSQL deployments: `db upgrade` makes it only for SQLite; a probe)."""
    from tests.helpers import REDIS_URL, pg_url, services_available

    if reason := services_available():
        pytest.skip(reason)  # the embedded broker makes the folder first
    var = tmp_path / "fresh" / "var"
    env = {**os.environ, "UNLEARN_VAR_DIR": str(var), "DATABASE_URL": pg_url("test"), "BROKER_URL": REDIS_URL}
    proc = subprocess.Popen(
        [UNLEARN, "beat"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: proc.poll() is None and any(var.glob("celerybeat-schedule*")),
            timeout=60,
            interval=0.2,
            what=f"the beat's schedule in {var} (exit code {proc.poll()})",
        )
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
