"""`unlearn`: the one command for operators. `unlearn run` starts the embedded stack; the other verbs
start production processes or manage the database and keys. Torch is only ever imported by the worker
and demo subprocesses, never here."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from service.db import migrate
from service.db.engine import session_scope
from service.keys import SCOPES, create_key, find_key, revoke_key
from service.settings import Settings, get_settings


def _worker_argv(settings: Settings, *, beat: bool, name: str = "worker@%h") -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--loglevel=INFO",
        "-n",
        name,
        "-Q",
        settings.queue_name,
    ]
    if beat:
        argv += ["-B", "-s", str((settings.var_dir / "celerybeat-schedule").resolve())]
    return argv


def ensure_admin_key(settings: Settings) -> str:
    """Reuse the key in var/admin.key if it still works, else create one and write it there (mode 600)."""
    path = settings.var_dir / "admin.key"
    url = settings.resolved_database_url
    if path.exists():
        existing = path.read_text().strip()
        with session_scope(url) as s:
            if find_key(s, existing) is not None:
                return existing
    with session_scope(url) as s:
        _, plaintext = create_key(s, tenant="default", scopes=SCOPES, name="embedded admin")
    path.write_text(plaintext + "\n")
    path.chmod(0o600)
    return plaintext


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    key = ensure_admin_key(settings)
    print(f"Admin API key: {key}\n(also in {settings.var_dir / 'admin.key'})", flush=True)
    if settings.demo:
        subprocess.run([sys.executable, "-m", "workers.demo"], check=True)
    worker = subprocess.Popen(_worker_argv(settings, beat=True, name="embedded@%h"))
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn that into a normal exit so the
    # `finally` below stops the worker instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        from service.app import create_app

        print(f"Serving on http://{settings.host}:{settings.port}", flush=True)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        log_level="info",
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    argv = _worker_argv(settings, beat=args.beat)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_beat(settings: Settings, _args: argparse.Namespace) -> int:
    """The periodic reconciler on its own (production runs exactly one of these)."""
    schedule = str((settings.var_dir / "celerybeat-schedule").resolve())
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "beat",
        "-s",
        schedule,
        "--loglevel=INFO",
    ]
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    (migrate.upgrade if args.action == "upgrade" else migrate.check)(url)
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    with session_scope(settings.resolved_database_url) as s:
        if args.action == "create":
            try:
                key, plaintext = create_key(s, tenant=args.tenant, scopes=args.scopes, name=args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"{plaintext}\nid={key.id} tenant={key.tenant} scopes={','.join(key.scopes)}")
        else:
            if revoke_key(s, args.id) is None:
                print(f"error: no key with id {args.id}", file=sys.stderr)
                return 1
            print(f"revoked {args.id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn", description="The unlearning service.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run", help="start the embedded stack: migrations, demo model, worker and API"
    ).set_defaults(fn=cmd_run)
    api = sub.add_parser("api", help="start the API server only (production)")
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(fn=cmd_api)
    worker = sub.add_parser("worker", help="start a Celery worker (production)")
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconciler")
    worker.set_defaults(fn=cmd_worker)
    sub.add_parser("beat", help="start the periodic reconciler (production: exactly one)").set_defaults(
        fn=cmd_beat
    )
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "check"])
    db.set_defaults(fn=cmd_db)
    keys = sub.add_parser("keys", help="create or revoke API keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--scopes", nargs="+", required=True, help=f"any of: {' '.join(SCOPES)}")
    kc.add_argument("--name", default="")
    kr = ksub.add_parser("revoke")
    kr.add_argument("id")
    keys.set_defaults(fn=cmd_keys)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(get_settings(), args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
