"""`unlearn api --workers N`, the production command (README, docker-compose): several API processes behind
one port, and one /metrics for all of them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
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
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [UNLEARN, "api", "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def both_up() -> bool:
            text = (tmp_path / "api.log").read_text(errors="replace")
            return text.count("Application startup complete") == 2

        wait_until(both_up, timeout=120, interval=0.5, what=f"two API processes ({tmp_path / 'api.log'})")
        served = 40
        for _ in range(served):  # a new connection each time: the kernel hands them to both processes
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        scrapes = [served_count(url) for _ in range(8)]
        assert scrapes == [served] * 8, scrapes
        # killed with SIGKILL, its processes go with it (they kept serving the port, orphaned)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not group_alive(proc.pid), timeout=60, interval=0.2, what="the API processes")
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
