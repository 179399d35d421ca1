"""API load benchmark, measured the way a product meets the service: a live `unlearn api` (uvicorn, N
worker processes) backed by PostgreSQL and Redis (or the embedded default with --embedded), driven over
keep-alive connections by `wrk` (a C load generator, Debian's `wrk`), so the generator costs the server
little CPU. No unlearning worker runs: this measures the API alone.

    .venv/bin/python -m bench.api_load --connections 16 --seconds 10

Each row is one wrk run. The baseline is a bare FastAPI app answering `GET /healthz` on the same uvicorn
setup, run first and last so the table shows the noise between two runs of the reference. The last
column is each row as a share of the first baseline. After the POST row, the broker messages that the
API sent are counted (the queue is not consumed) and divided by the requests accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.core.db import migrate
from service.core.db.engine import session_scope
from service.core.settings import Settings
from tests.factories import make_key, make_model
from tests.helpers import free_port, wait_until

N_TRAIN = 20_000
MODEL = "load"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}

BARE_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
"""

POST_SCRIPT = """
local key, ids_per_request, n = "%(key)s", %(ids)d, %(n)d
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
request = function()
  local ids = {}
  for i = 1, ids_per_request do ids[i] = string.format('"load-%%04d"', math.random(0, n - 1)) end
  local body = '{"sample_ids":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", "/v1/models/load/deletion-requests", headers, body)
end
"""

# POST_SCRIPT's bodies, `batch` at a time, to the batch route.
BATCH_SCRIPT = """
local key, ids_per_request, n, batch = "%(key)s", %(ids)d, %(n)d, %(batch)d
local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
request = function()
  local items = {}
  for j = 1, batch do
    local ids = {}
    for i = 1, ids_per_request do ids[i] = string.format('"%(model)s-%%04d"', math.random(0, n - 1)) end
    items[j] = '{"sample_ids":[' .. table.concat(ids, ",") .. ']}'
  end
  local body = '{"requests":[' .. table.concat(items, ",") .. ']}'
  return wrk.format("POST", "/v1/models/%(model)s/deletion-requests/batch", headers, body)
end
"""

GET_SCRIPT = """
local headers = {["Authorization"] = "Bearer %(key)s"}
local paths = {%(paths)s}
request = function()
  return wrk.format("GET", paths[math.random(1, #paths)], headers)
end
"""

REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %f %f %f %f\\n", summary.requests, errors,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3))
end
"""


@dataclass
class Row:
    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def in_flight(self) -> float:
        """Requests in flight on average by Little's law (rate x mean latency). A closed loop of N
        connections can never exceed N: where this does, wrk's latency figures are not per-request wall
        times (seen at high rates on this VM while the server's own histogram had no tail), so the row's
        p50/p99 are flagged rather than trusted."""
        return self.rate * self.mean_ms / 1e3


def wrk(name: str, url: str, script: str, args: argparse.Namespace, warm_up: bool = True) -> Row:
    """One wrk run after a short warm-up (connections opened, caches and pools filled); the Lua `done`
    hook prints the numbers, so nothing is scraped from prose."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script + REPORT)
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-s", fh.name, url]
    if warm_up:
        subprocess.run([*base, "-d2s"], capture_output=True, check=True)
    out = subprocess.run([*base, f"-d{args.seconds}s"], capture_output=True, text=True, check=True).stdout
    os.unlink(fh.name)
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    assert m, out
    n, errors, seconds, p50, p99, mean = m.groups()
    return Row(name, int(n), int(errors), float(seconds), float(p50), float(p99), float(mean))


@contextmanager
def server(argv: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(base), timeout=60, what=" ".join(argv[:3]))
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bare_baseline(args: argparse.Namespace, label: str) -> Row:
    folder = Path(tempfile.mkdtemp(prefix="unlearn-bare-"))
    (folder / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning",
            "--workers", str(args.api_workers), "--app-dir", str(folder)]  # fmt: skip
    with server(argv, {}, port) as base:
        return wrk(label, f"{base}/healthz", "", args)


@contextmanager
def load_backend(env: dict[str, str], embedded: bool, prefix: str) -> Iterator[dict[str, str]]:
    """``env`` on PostgreSQL + Redis, in a database of its own dropped at the end, unless ``embedded``."""
    if embedded:
        yield env
        return
    import psycopg

    admin = "host=127.0.0.1 user=postgres dbname=test"
    dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield env | {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
            "BROKER_URL": "redis://127.0.0.1:6379/0",
        }
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def broker_messages(settings: Settings, queue: str) -> int:
    """Messages waiting in the API's queue (nobody consumes it during the bench)."""
    if settings.broker_url:
        import redis

        return int(redis.Redis.from_url(settings.broker_url).llen(queue))
    return sum(1 for _ in (settings.broker_folder / "out").glob("*"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--seconds", type=int, default=10, help="per row")
    ap.add_argument("--ids-per-request", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100, help="requests per call in the batch-route row")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker, not PG + Redis")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    var = Path(tempfile.mkdtemp(prefix="unlearn-load-"))
    queue = f"load-{uuid.uuid4().hex[:6]}"
    env = {
        "UNLEARN_VAR_DIR": str(var),
        "UNLEARN_QUEUE": queue,
        "UNLEARN_DEMO": "false",
        # One key drives ~1000 writes/s: a limit far above that, so the limiter is measured (its cost is
        # part of each write) but never refuses, and the bench measures throughput.
        "UNLEARN_WRITE_RATE_PER_KEY": "1000000",
        "UNLEARN_WRITE_BURST_PER_KEY": "1000000",
    }
    with load_backend(env, args.embedded, "unlearn_load") as env:
        settings = Settings(**env)  # type: ignore[arg-type]
        migrate.upgrade(settings.resolved_database_url)
        with session_scope(settings.resolved_database_url) as s:
            make_model(s, name=MODEL, n_train=N_TRAIN)
            key = make_key(s, scopes=("deletion:write", "jobs:read", "audit:read"))

        rows = [bare_baseline(args, "bare FastAPI GET /healthz (baseline, first)")]
        port = free_port()
        argv = [str(Path(sys.executable).parent / "unlearn"), "api", "--workers", str(args.api_workers)]
        accepted = messages = 0
        batch_rate = 0.0
        with server(argv, {**env, "PORT": str(port)}, port) as base:
            rows.append(wrk("GET /healthz", f"{base}/healthz", "", args))
            post = POST_SCRIPT % {"key": key, "ids": args.ids_per_request, "n": N_TRAIN}
            before = broker_messages(settings, queue)
            rows.append(wrk("POST /v1/models/{m}/deletion-requests", base, post, args))
            accepted = rows[-1].requests - rows[-1].errors
            messages = broker_messages(settings, queue) - before
            auth = {"Authorization": f"Bearer {key}"}
            page = httpx.get(f"{base}/v1/deletion-requests", params={"limit": 200}, headers=auth).json()
            ids = [r["id"] for r in page["items"]]
            for name, paths in (
                ("GET /v1/deletion-requests/{id}", [f"/v1/deletion-requests/{i}" for i in ids]),
                ("GET /v1/models/{m}", [f"/v1/models/{MODEL}"]),
                ("GET /v1/audit/head", ["/v1/audit/head"]),
            ):
                lua = GET_SCRIPT % {"key": key, "paths": ", ".join(f'"{p}"' for p in paths)}
                rows.append(wrk(name, base, lua, args))
            # Last: its 100x backlog would slow the rows that read pending work (GET model, audit head).
            fill = {
                "key": key,
                "ids": args.ids_per_request,
                "n": N_TRAIN,
                "batch": args.batch,
                "model": MODEL,
            }
            batch = BATCH_SCRIPT % fill
            rows.append(
                wrk(f"POST .../deletion-requests/batch ({args.batch} requests per call)", base, batch, args)
            )
            batch_rate = rows[-1].rate * args.batch
    rows.append(bare_baseline(args, "bare FastAPI GET /healthz (baseline, last)"))

    backend = "SQLite + filesystem broker" if args.embedded else "PostgreSQL + Redis"
    setup = f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, keep-alive; {backend}"
    print(f"\n{setup}; uvicorn workers={args.api_workers}; {os.cpu_count()} CPUs for server, database, wrk\n")
    print("| endpoint | requests | req/s | p50 ms | p99 ms | errors | vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ref = rows[0].rate
    suspect = [r for r in rows if r.in_flight() > 1.1 * args.connections]
    for r in rows:
        p99 = f"{r.p99_ms:.1f}" + (" (*)" if r in suspect else "")
        print(f"| {r.name} | {r.requests} | {r.rate:,.0f} | {r.p50_ms:.1f} | {p99} | {r.errors} | "
              f"{r.rate / ref:.1%} |")  # fmt: skip
    for r in suspect:
        print(
            f"(*) {r.name}: rate x mean latency = {r.in_flight():.0f} requests in flight on "
            f"{args.connections} connections, impossible for a closed loop: wrk's latency figures for "
            "this row are not per-request times; its rate stands."
        )
    noise = abs(rows[-1].rate - rows[0].rate) / ref
    print(f"\nbaseline noise (first vs last run): {noise:.1%}")
    print(f"batch route: {batch_rate:,.0f} deletion requests/s ({args.batch} per call)")
    print(f"broker messages sent: {messages} for {accepted} requests accepted "
          f"({messages / max(accepted, 1):.4f} per request)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"rate": r.rate} for r in rows], indent=2))


if __name__ == "__main__":
    main()
