"""`unlearn request` through a server that is briefly unavailable: the installed console script, as a user
runs it, against a stand-in HTTP server that answers as the service does during a database failover
(503 problem bodies with Retry-After) before it answers normally."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

UNLEARN = str(Path(sys.executable).parent / "unlearn")
REQUEST = {"id": "r1", "model": "m", "sample_count": 1, "already_forgotten_count": 0, "subject_ids": [],
           "reason": "erasure", "job_id": None}  # fmt: skip


class Flaky(BaseHTTPRequestHandler):
    """Each route answers 503 (Retry-After: 1) the first time it is called, then as the service would."""

    calls: list[tuple[str, str, str | None]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any], retry_after: bool = False) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if retry_after:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(raw)

    def _first_time(self) -> bool:
        self.calls.append((self.command, self.path, self.headers.get("Idempotency-Key")))
        return sum(1 for c in self.calls if c[:2] == (self.command, self.path)) == 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self._first_time():  # it may have been acted on: the client cannot tell
            self._answer(503, {"detail": "the database is unavailable; retry shortly"}, retry_after=True)
        else:
            self._answer(202, {**REQUEST, "state": "received"})

    def do_GET(self) -> None:
        if self._first_time():
            self._answer(503, {"detail": "the database is unavailable; retry shortly"}, retry_after=True)
        else:
            self._answer(200, {**REQUEST, "state": "failed", "error": "the job failed its gates"})


@pytest.fixture
def flaky() -> Iterator[str]:
    Flaky.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_request_is_sent_again_under_one_idempotency_key_and_its_wait_outlasts_a_503(
    flaky: str, tmp_path: Path
) -> None:
    """A probe's `unlearn request --wait` gave up on the first 503 (exit 7) while the deletion went on,
    and a re-run could only send a second request: the CLI sent no Idempotency-Key."""
    ids = tmp_path / "ids.txt"
    ids.write_text("s1\n")
    done = subprocess.run(
        [UNLEARN, "request", "m", "--ids-file", str(ids), "--wait", "--url", flaky, "--api-key", "k"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # the request ended failed: reported, not a crash
    assert "request r1 failed" in done.stdout and "the job failed its gates" in done.stdout, done.stdout
    posts = [key for method, _, key in Flaky.calls if method == "POST"]
    assert len(posts) == 2 and posts[0] is not None and posts[0] == posts[1], Flaky.calls
    assert [c[0] for c in Flaky.calls].count("GET") == 2, Flaky.calls


def test_a_key_given_on_the_command_line_is_the_one_sent(flaky: str, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("s1\n")
    done = subprocess.run(
        [UNLEARN, "request", "m", "--ids-file", str(ids), "--idempotency-key", "ticket-42", "--url", flaky,
         "--api-key", "k"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [key for method, _, key in Flaky.calls if method == "POST"] == ["ticket-42", "ticket-42"]
