"""A burst of deletion requests for one model, then a worker drains them: is anything lost, how many broker
messages and jobs did it take? The demo model (`digits`) is registered, `unlearn api` takes requests from
wrk (keep-alive, random IDs) for `--seconds` while no worker runs, then one `unlearn worker --beat`
starts and the table counts every request's final state.

    .venv/bin/python -m bench.intake_drain --seconds 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select

from bench.api_load import BATCH_SCRIPT, POST_SCRIPT, broker_messages, server, wrk
from service.core.db import migrate
from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest, Job
from service.core.settings import Settings
from service.core.states import PENDING, RequestState
from tests.factories import make_key
from tests.helpers import free_port, wait_until
from workers.demo import ensure_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30, help="how long wrk sends requests")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ids-per-request", type=int, default=3)
    ap.add_argument(
        "--id-pool",
        type=int,
        default=700,
        help="IDs are drawn from the first N of the model's 1,437 samples, so the jobs always keep a retain "
        "set (drawn from all of them, a long burst forgets the whole model and its later jobs fail)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="deletion requests per POST: 1 uses the single-request route, more the batch route "
        "(POST .../deletion-requests/batch), as a product erasing in bulk would",
    )
    ap.add_argument("--drain-timeout", type=float, default=1200)
    args = ap.parse_args()

    import psycopg

    dbname = f"unlearn_drain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    var = Path(tempfile.mkdtemp(prefix="unlearn-drain-"))
    queue = f"drain-{uuid.uuid4().hex[:6]}"
    env = {
        "UNLEARN_VAR_DIR": str(var),
        "UNLEARN_QUEUE": queue,
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
        "BROKER_URL": "redis://127.0.0.1:6379/0",
        # One key sends the whole burst: the per-key write limit (100/s by default) would answer most of it
        # 429, and this bench measures intake and draining, not the limiter (bench.api_load does the same).
        "UNLEARN_WRITE_RATE_PER_KEY": "1000000",
        "UNLEARN_WRITE_BURST_PER_KEY": "1000000",
    }
    settings = Settings(**env)  # type: ignore[arg-type]
    url = settings.resolved_database_url
    try:
        migrate.upgrade(url)
        ensure_demo(settings)
        with session_scope(url) as s:
            key = make_key(s, scopes=("deletion:write",))
        port = free_port()
        api = [str(Path(sys.executable).parent / "unlearn"), "api", "--workers", "2"]
        with server(api, {**env, "PORT": str(port)}, port) as base:
            lua = POST_SCRIPT.replace("/v1/models/load/", "/v1/models/digits/").replace('"load-', '"digits-')
            lua = lua if args.batch == 1 else BATCH_SCRIPT
            lua %= {
                "key": key,
                "ids": args.ids_per_request,
                "n": min(args.id_pool, 1437),
                "batch": args.batch,
                "model": "digits",
            }
            row = wrk("POST (no worker running)", base, lua, args, warm_up=False)
        messages = broker_messages(settings, queue)
        started = time.monotonic()
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "unlearn"), "worker", "--beat"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def drained() -> bool:
                with session_scope(url) as s:
                    busy = select(func.count()).where(
                        DeletionRequest.state.in_([*PENDING, RequestState.PROCESSING])
                    )
                    return s.scalar(busy) == 0

            wait_until(drained, timeout=args.drain_timeout, interval=1.0, what="every request to finish")
            took = time.monotonic() - started
        finally:
            worker.terminate()
            stopping = time.monotonic()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            stop_s = time.monotonic() - stopping
        with session_scope(url) as s:
            states = dict(
                s.execute(select(DeletionRequest.state, func.count()).group_by(DeletionRequest.state)).all()
            )
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            errors = sorted(
                {(e or "")[:160] for e in s.scalars(select(Job.error).where(Job.error.is_not(None)))}
            )
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    accepted = (row.requests - row.errors) * args.batch
    stored = sum(states.values())
    setup = f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, PostgreSQL + Redis, 2 API workers"
    pool = min(args.id_pool, 1437)
    print(f"\n{setup}, then 1 worker; model digits, IDs drawn from {pool} of its samples\n")
    print("| measure | value |")
    print("|---|---:|")
    route = "single-request POSTs" if args.batch == 1 else f"batch POSTs of {args.batch} requests"
    print(
        f"| requests accepted ({route}) / wrk errors (non-2xx, socket, timeout) | {accepted} / {row.errors} |"
    )
    rate = row.rate * args.batch
    print(
        f"| intake rate (requests), HTTP p50 / p99 | {rate:,.0f}/s, {row.p50_ms:.1f} / {row.p99_ms:.1f} ms |"
    )
    print(f"| requests stored | {stored} |")
    print(f"| broker messages sent by the API | {messages} ({messages / args.seconds:.2f} per second) |")
    print(f"| final states | {', '.join(f'{k} {v}' for k, v in sorted(states.items()))} |")
    print(f"| jobs | {sum(jobs.values())} ({', '.join(f'{k} {v}' for k, v in sorted(jobs.items()))}) |")
    print(f"| requests per job | {stored / max(sum(jobs.values()), 1):.0f} |")
    print(f"| time to drain | {took:.1f} s |")
    print(f"| worker stop after SIGTERM (killed at 60 s) | {stop_s:.1f} s |")
    unfinished = sum(states.get(state, 0) for state in (*PENDING, RequestState.PROCESSING))
    print(f"| stored but not counted by wrk (answered after it stopped) | {max(stored - accepted, 0)} |")
    print(f"| lost (accepted but not stored, or never finished) | {max(accepted - stored, 0) + unfinished} |")
    for error in errors:
        print(f"\nfailed job: {error}")


if __name__ == "__main__":
    main()
