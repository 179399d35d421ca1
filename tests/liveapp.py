"""The API app served by a real uvicorn in a thread of the test process: real HTTP and sockets, the real
database, no worker. For tests that need the wire itself (partial bodies, concurrent clients)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from service.api.app import create_app
from service.core.settings import Settings
from tests.helpers import free_port, migrated, wait_until


@dataclass
class LiveApp:
    url: str
    port: int
    settings: Settings

    @property
    def db(self) -> str:
        return self.settings.resolved_database_url

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def connect(self, timeout: float = 10) -> socket.socket:
        """A raw TCP connection, for sending a request a piece at a time."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock


def prepared(settings: Settings) -> Settings:
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    return settings


@contextmanager
def serve(settings: Settings) -> Iterator[LiveApp]:
    """Serve `settings` (its database already migrated) until the block ends."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="uvicorn")
    try:
        yield LiveApp(f"http://127.0.0.1:{port}", port, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_toy(settings: Settings) -> Iterator[tuple[LiveApp, str]]:
    """`serve` a fresh database holding the API-only model `toy` (tests.factories), with an admin key."""
    from service.core.db.engine import session_scope
    from tests.factories import make_key, make_model

    settings = prepared(settings)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s)
    with serve(settings) as app:
        yield app, key


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]
