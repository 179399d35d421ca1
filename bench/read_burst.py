"""A burst of concurrent reads on a live `unlearn api`, the way a product polling many requests at once
meets it: N requests sent at the same moment, each on its own connection, against PostgreSQL + Redis (or
the embedded default with --embedded). Prints what came back and how long the burst took, beside the
same burst on a bare FastAPI app on the same uvicorn setup (run first and last: the noise between two
runs of the reference).

    .venv/bin/python -m bench.read_burst --requests 300

Before stop 64 a burst of 300 on one API process took about three minutes and most answers were 503s
at the database pool's 30 s timeout (sync routes held their connection while waiting for a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from bench.api_load import BARE_APP, load_backend, server
from service.core.db import migrate
from service.core.db.engine import session_scope
from service.core.settings import Settings
from tests.factories import make_key, make_model
from tests.helpers import free_port


async def _burst(url: str, n: int, headers: dict[str, str]) -> tuple[Counter[int | str], float]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers=headers, timeout=300, limits=limits) as client:

        async def one() -> int | str:
            try:
                return (await client.get(url)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        start = time.perf_counter()
        answers = await asyncio.gather(*(one() for _ in range(n)))
        return Counter(answers), time.perf_counter() - start


def burst(url: str, n: int, headers: dict[str, str] | None = None) -> tuple[Counter[int | str], float]:
    return asyncio.run(_burst(url, n, headers or {}))


def bare(n: int, workers: int) -> tuple[Counter[int | str], float]:
    folder = Path(tempfile.mkdtemp(prefix="unlearn-bare-"))
    (folder / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning",
            "--workers", str(workers), "--app-dir", str(folder)]  # fmt: skip
    with server(argv, {}, port) as base:
        return burst(f"{base}/healthz", n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--api-workers", type=int, default=1, help="one process: the burst lands on one pool")
    ap.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker, not PG + Redis")
    args = ap.parse_args()
    var = Path(tempfile.mkdtemp(prefix="unlearn-burst-"))
    env = {
        "UNLEARN_VAR_DIR": str(var),
        "UNLEARN_QUEUE": f"burst-{uuid.uuid4().hex[:6]}",
        "UNLEARN_DEMO": "false",
    }
    with load_backend(env, args.embedded, "unlearn_burst") as env:
        settings = Settings(**env)  # type: ignore[arg-type]
        migrate.upgrade(settings.resolved_database_url)
        with session_scope(settings.resolved_database_url) as s:
            make_model(s, name="burst")
            key = make_key(s, scopes=("jobs:read",))
        rows = [("bare FastAPI GET /healthz (baseline, first)", *bare(args.requests, args.api_workers))]
        port = free_port()
        argv = [str(Path(sys.executable).parent / "unlearn"), "api", "--workers", str(args.api_workers)]
        with server(argv, {**env, "PORT": str(port)}, port) as base:
            auth = {"Authorization": f"Bearer {key}"}
            rows.append(("GET /v1/models/{m}", *burst(f"{base}/v1/models/burst", args.requests, auth)))
            rows.append(("GET /healthz", *burst(f"{base}/healthz", args.requests)))
    rows.append(("bare FastAPI GET /healthz (baseline, last)", *bare(args.requests, args.api_workers)))

    backend = "SQLite + filesystem broker" if args.embedded else "PostgreSQL + Redis"
    print(f"\n{args.requests} requests at once, one connection each; {backend}; uvicorn workers="
          f"{args.api_workers}; {os.cpu_count()} CPUs for server, database, client\n")  # fmt: skip
    print("| endpoint | answers | burst s |")
    print("|---|---|---:|")
    for name, answers, seconds in rows:
        said = ", ".join(f"{n} x {code}" for code, n in sorted(answers.items(), key=str))
        print(f"| {name} | {said} | {seconds:.2f} |")
    first, last = rows[0][2], rows[-1][2]
    print(f"\nbaseline noise (first vs last burst): {abs(last - first) / first:.1%}")


if __name__ == "__main__":
    main()
