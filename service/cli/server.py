"""The server verbs: start the embedded stack or one production process, and manage the schema and keys
straight in the configured database.

The only verbs that touch the database or the server code; they import it (and uvicorn) inside each
function, so importing this module, as the parser does, stays as light as the client verbs need.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from service.cli.errors import EXIT_CODES
from service.cli.supervise import Supervised
from service.core.lifetimes import SUPERVISOR_ENV

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.core.settings import Settings


def _worker_argv(settings: Settings, *, beat: bool, name: str) -> list[str]:
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
        # Celery's gossip and event heartbeats go unsent while a solo worker runs a job, so its peers
        # logged "missed heartbeat" and "Substantial drift ... clocks out of sync" through every long job;
        # liveness is the database's heartbeat (service.core.liveness), and remote control still works.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
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
    from service.core.db.engine import session_scope
    from service.core.keys import SCOPES, create_key, find_key

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


STARTUP_FAILURE = 3  # uvicorn's own exit code when it cannot start (a port in use, say)


def _bound(host: str, port: int) -> list[socket.socket] | None:
    """The API's sockets, listening before anything else starts (None, said why, if they cannot be): a
    second `unlearn run` on a port in use started its worker and beat, which took tasks from the shared
    broker, before uvicorn found the port taken. One socket per address the host resolves to, as asyncio
    binds them (IPv6 ones IPv6-only); connections wait in the backlog until the app serves."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # here, not later: two sockets may bind one port until one of them listens
    except OSError as exc:
        for sock in sockets:
            sock.close()
        print(
            f"error: cannot serve on {host}:{port}: {exc.strerror or exc} (another `unlearn run`? PORT=... "
            "picks another port)",
            file=sys.stderr,
        )
        return None
    return sockets


def signing_key_refused(settings: Settings) -> bool:
    """Print why the API must not start on its signing key (``signing.key_problem``: it must have signed
    each tenant's latest head) and return True. A database not migrated yet holds no heads; one that cannot
    be reached cannot say, and then only a missing key is refused: the API would make one, and a review's
    did, with the database locked at its start."""
    from sqlalchemy import func, select, text
    from sqlalchemy.exc import SQLAlchemyError

    from service.core.db.engine import session_scope
    from service.core.db.tables import AuditHead
    from service.core.signing import key_problem

    path = settings.signing_key_path
    try:
        with session_scope(settings.resolved_database_url) as s:
            s.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        if path.exists():
            return False  # its heads are checked again before each signature (transparency.sign_head)
        print(f"error: no signing key at {path}, and the database cannot be read to tell whether the audit "
              f"log holds heads another key signed ({_driver_said(exc)}); start it with the database up",
              file=sys.stderr)  # fmt: skip
        return True
    try:
        with session_scope(settings.resolved_database_url) as s:
            latest = select(func.max(AuditHead.id)).group_by(AuditHead.tenant)
            keys = set(s.scalars(select(AuditHead.public_key).where(AuditHead.id.in_(latest))))
    except SQLAlchemyError:
        keys = set()  # not migrated yet: no heads
    problem = key_problem(path, keys)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
    return problem is not None


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from service.core.db import migrate

    os.environ.pop(SUPERVISOR_ENV, None)  # one process serves: a stale one would kill it at start
    sockets = _bound(settings.host, settings.port)
    if sockets is None:
        return STARTUP_FAILURE
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    if signing_key_refused(settings):
        return EXIT_CODES["usage"]
    key = ensure_admin_key(settings)
    print(f"Admin API key: {key}\n(also in {settings.var_dir / 'admin.key'})", flush=True)
    # The demo's registration (a Python start and its torch and scikit-learn imports: ~7 s on 2 cores)
    # runs beside the worker's start and this process's import of the app, not before them. It commits the
    # model in one transaction after its checkpoint is written, so a worker never sees half of it, and the
    # API serves only once it is done: the first GET /v1/models already lists it.
    demo = subprocess.Popen([sys.executable, "-m", "workers.demo"]) if settings.demo else None
    worker = Supervised("worker", _worker_argv(settings, beat=True, name="embedded@%h"))
    worker.start()
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turn that into a normal exit so the
    # `finally` below stops the worker (and its beat) instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        from service.api.app import served_app

        app = served_app(settings)
        if demo is not None and demo.wait() != 0:
            print(f"the demo model could not be registered (exit code {demo.returncode})", file=sys.stderr)
            return 1
        base = f"http://{settings.host}:{settings.port}"
        print(f"Serving on {base} (dashboard: {base}/dashboard/)", flush=True)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=sockets)
        if not server.started:
            return STARTUP_FAILURE
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
        worker.stop()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import uvicorn

    if signing_key_refused(settings):
        return EXIT_CODES["usage"]
    # Several processes share /metrics: each keeps its counters in files under this folder and a scrape
    # sums them (service.api.observability.server_wide). Set before uvicorn spawns them; a folder the
    # operator set (a gunicorn deployment's) is theirs to manage.
    own_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="unlearn-metrics-")
    os.environ.pop(SUPERVISOR_ENV, None)  # a stale one (an operator's shell) would kill a lone server
    if args.workers > 1:
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
    try:
        uvicorn.run(
            "service.api.app:served_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            log_level="info",
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # exec keeps the pid: the node name is one per process, also for several workers on one host, which
    # Celery's inspect and remote control could not tell apart as `worker@host` each
    if args.beat:  # its beat writes its schedule there: without the folder it died, the worker ran on
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    argv = _worker_argv(settings, beat=args.beat, name=f"worker-{os.getpid()}@%h")
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_beat(settings: Settings, _args: argparse.Namespace) -> int:
    """The periodic reconciler on its own (production runs exactly one of these)."""
    settings.var_dir.mkdir(parents=True, exist_ok=True)  # it died writing its schedule there (a probe)
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
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from service.core.db import migrate

    url = settings.resolved_database_url
    where = make_url(url).render_as_string(hide_password=True)
    if url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    if not _reachable(url, where):
        return EXIT_CODES["unreachable"]
    applied: list[str] = []
    try:
        if args.action == "upgrade":
            applied = migrate.upgrade(url)
        else:
            migrate.check(url)
    except DBAPIError as exc:  # a statement the schema refused (PostgreSQL: ProgrammingError): no outage
        print(f"error: {args.action} of the database {where} failed: {_driver_said(exc)}", file=sys.stderr)
        return EXIT_CODES["failed"]
    except CommandError as exc:  # check: "Target database is not up to date."
        hint = " (run `unlearn db upgrade`)" if "not up to date" in str(exc) else ""
        print(f"error: {args.action} of the database {where}: {exc}{hint}", file=sys.stderr)
        return EXIT_CODES["failed"]
    # Silence read as "did anything happen?" to an operator running the migration step by hand.
    if args.action == "check":
        print(f"{where}: schema matches the tables")
    elif applied:  # "up to date" alone did not say whether this run changed the schema, or how
        print(f"{where}: schema up to date, applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print(f"{where}: schema up to date at {migrate.current(url)}, nothing to apply")
    return 0


def _reachable(url: str, where: str) -> bool:
    """Whether the database answers a connection; if not, says so in one line (it was a 118-line
    traceback for a database not yet created)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from service.core.db.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect():
            return True
    except (OperationalError, InterfaceError) as exc:
        hint = "(is it up, and created?)"
        print(f"error: cannot use the database {where}: {_driver_said(exc)} {hint}", file=sys.stderr)
        return False
    finally:
        engine.dispose()


def _driver_said(exc: Exception) -> str:
    """The first line of what the database driver said, without SQLAlchemy's statement and links."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _change_keys(s: Session, args: argparse.Namespace) -> tuple[int, str]:
    """Create or revoke the key ``args`` name in session ``s``: (exit code, what to print once committed)."""
    from service.core import events
    from service.core.db.tables import ApiKey
    from service.core.events import OPERATOR
    from service.core.keys import create_key, is_utf8, revoke_key

    if args.action == "create":
        try:
            key, plaintext = create_key(s, tenant=args.tenant, scopes=args.scopes, name=args.name)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2, ""
        events.key_created(s, key, actor=OPERATOR)  # the trail had only the API's keys (a probe)
        return 0, f"{plaintext}\nid={key.id} tenant={key.tenant} scopes={','.join(key.scopes)}"
    held = s.get(ApiKey, args.id) if is_utf8(args.id) else None
    if held is None:
        print(f"error: no key with id {args.id}", file=sys.stderr)
        return EXIT_CODES["not_found"], ""  # as `--api` answers it
    if held.revoked_at is None:  # a second revoke is no second event
        revoke_key(s, args.id)
        events.key_revoked(s, held, actor=OPERATOR)
    return 0, f"revoked {args.id}"


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Keys straight in the database this machine is configured for (bootstrap, other tenants)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from service.core.db.engine import session_scope

    if args.action == "create" and not args.tenant:
        print(
            "error: --tenant is required (or use --api to create a key in your own tenant)", file=sys.stderr
        )
        return 2
    url = settings.resolved_database_url
    where = make_url(url).render_as_string(hide_password=True)
    # one line and an exit code, as `db upgrade`: a database down or not migrated was a 157-line traceback
    # quoting the INSERT and its key hash (a probe, bootstrapping against a full server)
    if not _reachable(url, where):
        return EXIT_CODES["unreachable"]
    try:
        with session_scope(url) as s:
            code, shown = _change_keys(s, args)
    except DBAPIError as exc:  # reached: a schema that refuses it (not migrated), or an outage since
        hint = "(has `unlearn db upgrade` run on it?)"
        print(f"error: the database {where} refused it: {_driver_said(exc)} {hint}", file=sys.stderr)
        return EXIT_CODES["failed"]
    if code:
        return code
    # Printed once committed: printed inside the transaction, a reader that stopped early (`| head -1`)
    # broke the pipe and rolled the key back after its secret was shown (a probe)
    try:
        print(shown, flush=True)
    except BrokenPipeError:  # the rest is the reader's to drop; the key is stored as printed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
