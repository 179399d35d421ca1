"""API load benchmark: N concurrent clients post deletion requests and poll their status against a live
uvicorn (`unlearn api`) backed by PostgreSQL and Redis (or the embedded default with --embedded).

    .venv/bin/python bench/api_load.py --clients 20 --seconds 20

Prints requests/s and p50/p99 latency per endpoint. No worker runs: this measures the API alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.core.db import migrate  # noqa: E402
from service.core.db.engine import session_scope  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from tests.factories import make_key, make_model  # noqa: E402
from tests.helpers import free_port, wait_until  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ids-per-request", type=int, default=5)
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument(
        "--embedded", action="store_true", help="SQLite + filesystem broker instead of PG + Redis"
    )
    args = ap.parse_args()

    var = Path(tempfile.mkdtemp(prefix="unlearn-load-"))
    env = {"UNLEARN_VAR_DIR": str(var), "UNLEARN_QUEUE": f"load-{uuid.uuid4().hex[:6]}"}
    dbname = None
    if not args.embedded:
        import psycopg

        dbname = f"unlearn_load_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        env |= {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
            "BROKER_URL": "redis://127.0.0.1:6379/0",
        }
    settings = Settings(**env)  # type: ignore[arg-type]
    var.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    n_train = 20_000
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="load", n_train=n_train)
        key = make_key(s, scopes=("deletion:write", "jobs:read"))

    port = free_port()
    api = subprocess.Popen(
        [str(Path(sys.executable).parent / "unlearn"), "api", "--workers", str(args.api_workers)],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base), timeout=60, what="the API")
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: dict[str, int] = defaultdict(int)
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[str] = []
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                while time.monotonic() < deadline:
                    if not mine or rng.random() < 0.3:
                        name, t0 = "POST /v1/models/{m}/deletion-requests", time.perf_counter()
                        ids = [f"load-{rng.randrange(n_train):04d}" for _ in range(args.ids_per_request)]
                        r = c.post("/v1/models/load/deletion-requests", json={"sample_ids": ids})
                        if r.status_code == 202:
                            mine.append(r.json()["id"])
                    else:
                        name, t0 = "GET /v1/deletion-requests/{id}", time.perf_counter()
                        r = c.get(f"/v1/deletion-requests/{rng.choice(mine)}")
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies[name].append(dt)
                        if r.status_code >= 400:
                            errors[name] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        api.terminate()
        api.wait()
        if dbname:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    backend = "SQLite + filesystem broker" if args.embedded else "PostgreSQL + Redis"
    print(f"\n{args.clients} clients, {elapsed:.1f} s, {backend}, uvicorn workers={args.api_workers}\n")
    print("| endpoint | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    total = 0
    for name, vals in sorted(latencies.items()):
        total += len(vals)
        print(
            f"| {name} | {len(vals)} | {len(vals) / elapsed:.1f} | {statistics.median(vals) * 1000:.1f} | "
            f"{percentile(vals, 0.99) * 1000:.1f} | {errors[name]} |"
        )
    print(f"| all | {total} | {total / elapsed:.1f} | | | {sum(errors.values())} |")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
