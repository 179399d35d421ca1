"""`unlearn`: the one command for operators and users.

Server verbs: `unlearn run` starts the embedded stack; `api`, `worker`, `beat`, `db` and `keys` start
production processes or manage the database and keys directly. Client verbs (`models`, `request`, `jobs`,
`versions`, `requests`, `certificate`, `public-key`, `audit`, `verify-certificate`) talk to a running
server over its public API with an API key (`service.cli.client`). Torch is only ever imported by the worker
and demo subprocesses, never here; the client verbs import neither the database nor the server.

Exit codes of the client verbs: 0 ok; 1 the thing checked or waited for failed (a job failed, a chain or
certificate does not verify); 2 usage; 3 server unreachable; 4 key missing, rejected or lacking a scope;
5 not found; 6 the server refused the input (409/413/422); 7 any other server error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from service.cli.client import Client

EXIT_CODES = {
    "failed": 1,
    "usage": 2,
    "unreachable": 3,
    "auth": 4,
    "forbidden": 4,
    "not_found": 5,
    "conflict": 6,
    "invalid": 6,
    "server": 7,
}
# The same names as service.core.keys.SCOPES, spelled out so the client verbs need not import the database.
SCOPE_NAMES = ("deletion:write", "jobs:read", "audit:read", "admin")


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


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from service.core.db import migrate

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
        from service.api.app import create_app

        base = f"http://{settings.host}:{settings.port}"
        print(f"Serving on {base} (dashboard: {base}/dashboard/)", flush=True)
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
        "service.api.app:create_app",
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
    from service.core.db import migrate

    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    (migrate.upgrade if args.action == "upgrade" else migrate.check)(url)
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Keys straight in the database this machine is configured for (bootstrap, other tenants)."""
    from service.core.db.engine import session_scope
    from service.core.keys import create_key, revoke_key

    if args.action == "create" and not args.tenant:
        print(
            "error: --tenant is required (or use --api to create a key in your own tenant)", file=sys.stderr
        )
        return 2
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


# -- client verbs: the public API over HTTP ------------------------------------------------------------


def cmd_keys_api(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        key = client.create_key(args.scopes, args.name, args.tenant)
        print(f"{key['key']}\nid={key['id']} tenant={key['tenant']} scopes={','.join(key['scopes'])}")
    else:
        client.revoke_key(args.id)
        print(f"revoked {args.id}")
    return 0


class UsageError(Exception):
    """A problem with the command line or a local file (exit code 2)."""


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A pipe or a log file has no width: print whole rows (hashes, ids) rather than rich's default 80.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, highlight=False, width=width)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short(ident: str | None) -> str:
    return ident[:8] if ident else "-"


METRIC_ROWS = (
    ("unlearning_accuracy", "UA  unlearning accuracy (1 - acc. on forget set)"),
    ("mia_score", "MIA membership-inference score on forget set"),
    ("mia_loss_score", "MIA-L loss-threshold attack on forget set"),
    ("retain_accuracy", "RA  retain accuracy"),
    ("test_accuracy", "TA  test accuracy"),
    ("runtime_s", "run time (s)"),
)


def read_ids(path: str) -> list[str]:
    """One sample ID per line (blank lines and `#` comments ignored), or a JSON list; `-` reads stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the ids file {path}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path} looks like JSON but does not parse: {exc}") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise UsageError(f"{path}: a JSON ids file must be a list of strings")
    else:
        ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        ids = [i for i in ids if i]
    if not ids:
        raise UsageError(f"{path} holds no sample IDs")
    return ids


def _wait_for_request(client: Client, req: dict[str, Any], timeout: float, interval: float) -> dict[str, Any]:
    """Poll the request (and its job, when the key may read jobs) with a progress bar on stderr."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from service.cli.client import TERMINAL_REQUEST_STATES, ApiError

    can_read_jobs = True
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_console(stderr=True)) as progress:
        task = progress.add_task(f"request {_short(req['id'])}", total=1.0, phase=req["state"])
        while True:
            if req["state"] in TERMINAL_REQUEST_STATES:
                if req["state"] == "completed":
                    progress.update(task, completed=1.0, phase="completed")
                else:
                    progress.update(task, phase=req["state"])
                return req
            if req.get("job_id") and can_read_jobs:
                try:
                    job = client.job(req["job_id"])
                except ApiError as exc:
                    if exc.kind != "forbidden":
                        raise
                    can_read_jobs = False  # a product key: follow the request's state only
                else:
                    progress.update(
                        task,
                        completed=job["progress"],
                        description=f"job {_short(job['id'])} {job['method']}",
                        phase=f"{job['phase']} (attempt {job['attempts']})",
                    )
            else:
                progress.update(task, phase=req["state"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {req['id']} is still {req['state']} after {timeout:.0f}s")
            time.sleep(interval)
            req = client.request(req["id"])


def _print_result(client: Client, req: dict[str, Any]) -> None:
    from rich.table import Table

    from service.cli.client import ApiError

    out = _console()
    out.print(
        f"request {req['id']} {req['state']}: model {req['model']}, {req['sample_count']} sample(s)"
        + (f", {req['already_forgotten_count']} already forgotten" if req["already_forgotten_count"] else "")
    )
    if req["state"] != "completed":
        if req.get("error"):
            out.print(f"error: {req['error']}")
        return
    try:
        job = client.job(req["job_id"]) if req.get("job_id") else None
        versions = {v["version"]: v for v in client.versions(req["model"])}
    except ApiError as exc:
        if exc.kind != "forbidden":
            raise
        out.print(f"new version: {req['model_version']} (metrics need a key with jobs:read)")
        return
    new = versions.get(req["model_version"] or "")
    if job is None or new is None:
        out.print(f"version: {req['model_version']} (no new job was needed)")
        return
    base, result = job["metrics"].get("base") or {}, job["metrics"].get("result") or new["metrics"]
    out.print(
        f"new version {new['version']} of {req['model']} (parent {new['parent']}), job {job['id']}, "
        f"method {job['method']}, {job['attempts']} attempt(s)"
    )
    table = Table(title=f"metrics of {req['model']} {new['version']}", title_justify="left")
    table.add_column("metric")
    table.add_column(f"{job['base_version']} (before)", justify="right")
    table.add_column(f"{new['version']} (after)", justify="right")
    for key, label in METRIC_ROWS:
        if key in result or key in base:
            table.add_row(label, _fmt(base.get(key)), _fmt(result.get(key)))
    counts = ", ".join(
        f"{k.removesuffix('_count')} {result[k]}"
        for k in ("forget_count", "retain_count", "test_count")
        if k in result
    )
    out.print(table)
    if counts:
        out.print(f"samples measured: {counts}")
    out.print(f"checkpoint sha256: {new['checkpoint_sha256']}")


def cmd_request(client: Client, args: argparse.Namespace) -> int:
    ids = read_ids(args.ids_file)
    req = client.create_request(args.model, ids, args.reference)
    note = f", {req['already_forgotten_count']} already forgotten" if req["already_forgotten_count"] else ""
    print(
        f"request {req['id']} accepted: {req['sample_count']} sample(s) for {req['model']}{note}; "
        f"state {req['state']}",
        flush=True,
    )
    if not args.wait:
        return 0
    req = _wait_for_request(client, req, args.timeout, args.interval)
    _print_result(client, req)
    return 0 if req["state"] == "completed" else 1


def _jobs_table(jobs: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="jobs (newest first)", title_justify="left")
    for col, justify in (
        ("job", "left"),
        ("model", "left"),
        ("state", "left"),
        ("phase", "left"),
        ("progress", "right"),
        ("method", "left"),
        ("attempts", "right"),
        ("versions", "left"),
        ("requests", "right"),
        ("heartbeat", "right"),
        ("error", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    colour = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow"}
    for j in jobs:
        age = j.get("heartbeat_age_s")
        table.add_row(
            _short(j["id"]),
            j["model"],
            f"[{colour.get(j['state'], 'white')}]{j['state']}[/]",
            j["phase"],
            f"{j['progress'] * 100:.0f}%",
            j["method"],
            str(j["attempts"]),
            f"{j['base_version']} -> {j['result_version'] or '?'}",
            str(len(j["request_ids"])),
            f"{age:.0f}s ago" if age is not None and j["state"] == "running" else "-",
            (j.get("error") or "")[:60],
        )
    return table


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    def fetch() -> list[dict[str, Any]]:
        return client.jobs(model=args.model, state=args.state, limit=args.limit)

    out = _console()
    if not args.watch:
        jobs = fetch()
        out.print(_jobs_table(jobs) if jobs else "no jobs yet")
        return 0
    try:
        if out.is_terminal:
            from rich.live import Live

            with Live(_jobs_table(fetch()), console=out, refresh_per_second=4) as live:
                while True:
                    time.sleep(args.interval)
                    live.update(_jobs_table(fetch()))
        last = None
        while True:  # not a terminal (a pipe, a log): print the table each time it changes
            jobs = fetch()
            snapshot = json.dumps([(j["id"], j["state"], j["phase"], round(j["progress"], 2)) for j in jobs])
            if snapshot != last:
                out.print(_jobs_table(jobs))
                sys.stdout.flush()
                last = snapshot
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_models(client: Client, _args: argparse.Namespace) -> int:
    from rich.table import Table

    table = Table(title="models", title_justify="left")
    for col in ("model", "architecture", "status", "latest", "pending", "train", "test", "method", "gates"):
        table.add_column(col)
    for m in client.models():
        gates = ", ".join(f"{k}={v}" for k, v in m["gates"].items()) or "-"
        method = " -> ".join([m["default_method"], *m["fallback_methods"]])
        table.add_row(
            m["name"],
            m["architecture"],
            m["status"],
            m["latest_version"],
            str(m["pending_requests"]),
            str(m["train_samples"]),
            str(m["test_samples"]),
            method,
            gates,
        )
    _console().print(table)
    return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    from rich.table import Table

    versions = client.versions(args.model)
    table = Table(title=f"versions of {args.model}", title_justify="left")
    for col, justify in (
        ("version", "left"),
        ("parent", "left"),
        ("forgotten", "right"),
        ("UA", "right"),
        ("MIA", "right"),
        ("RA", "right"),
        ("TA", "right"),
        ("run time", "right"),
        ("job", "left"),
        ("created", "left"),
        ("checkpoint sha256", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=col == "checkpoint sha256")  # type: ignore[arg-type]
    for v in versions:
        m = v["metrics"]
        runtime = m.get("runtime_s")
        table.add_row(
            v["version"],
            v["parent"] or "-",
            str(v["forgotten_count"]),
            _fmt(m.get("unlearning_accuracy")),
            _fmt(m.get("mia_score")),
            _fmt(m.get("retain_accuracy")),
            _fmt(m.get("test_accuracy")),
            f"{runtime:.1f}s" if runtime is not None else "-",
            _short(v["job_id"]),
            v["created_at"][:19].replace("T", " "),
            v["checkpoint_sha256"] if args.full else v["checkpoint_sha256"][:16],
        )
    _console().print(table)
    return 0


def cmd_requests(client: Client, args: argparse.Namespace) -> int:
    from rich.table import Table

    if args.id:
        items = [client.request(args.id)]
    else:
        items = client.requests(
            model=args.model, state=args.state, reference=args.reference, limit=args.limit
        )
    table = Table(title="deletion requests (newest first)", title_justify="left")
    for col in ("request", "model", "state", "samples", "reference", "job", "version", "created", "error"):
        table.add_column(col, no_wrap=col == "request")
    for r in items:
        table.add_row(
            r["id"],
            r["model"],
            r["state"],
            str(r["sample_count"]),
            r["reference"] or "-",
            _short(r["job_id"]),
            r["model_version"] or "-",
            r["created_at"][:19].replace("T", " "),
            (r["error"] or "")[:60],
        )
    _console().print(table if items else "no deletion requests match")
    return 0


def _write_output(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_certificate(client: Client, args: argparse.Namespace) -> int:
    signed = client.certificate(args.request_id)
    _write_output(args.output, json.dumps(signed, indent=2, ensure_ascii=False) + "\n")
    if args.output != "-":
        print(f"wrote the signed certificate of request {args.request_id} to {args.output}")
    return 0


def cmd_public_key(client: Client, args: argparse.Namespace) -> int:
    key = client.public_key()
    _write_output(args.output, key["pem"])
    if args.output != "-":
        print(f"wrote the service's {key['algorithm']} public key to {args.output}")
    return 0


def cmd_audit_export(client: Client, args: argparse.Namespace) -> int:
    filters = {"since": args.since, "until": args.until, "model": args.model}
    if args.output == "-":
        client.audit_export(args.format, sys.stdout.buffer, **filters)
        return 0
    tmp = Path(args.output + ".part")
    try:
        with open(tmp, "wb") as fh:
            size = client.audit_export(args.format, fh, **filters)
        tmp.replace(args.output)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    with open(args.output, newline="") as fh:
        rows = sum(1 for _ in (csv.reader(fh) if args.format == "csv" else fh))
    events = max(rows - 1, 0) if args.format == "csv" else rows
    print(f"wrote {events} audit event(s) ({size} bytes, {args.format}) to {args.output}")
    return 0


def cmd_audit_verify(client: Client, _args: argparse.Namespace) -> int:
    result = client.audit_verify()
    if result["ok"]:
        print(f"audit chain OK: {result['events']} event(s), head {result['head']}")
        return 0
    print(
        f"audit chain BROKEN at event seq {result['first_broken_seq']} "
        f"({result['events']} event(s) before it verify)",
        file=sys.stderr,
    )
    return 1


def cmd_verify_certificate(args: argparse.Namespace) -> int:
    """Offline: no server, no key. Checks the Ed25519 signature over the certificate's canonical JSON."""
    from service.core.signing import public_key_b64_from_pem, verify_document

    try:
        signed = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        print(f"certificate INVALID: {args.file} is not JSON ({exc})", file=sys.stderr)
        return 1
    trusted = None
    if args.public_key:
        try:
            trusted = public_key_b64_from_pem(Path(args.public_key).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {args.public_key}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"{args.public_key} is not an Ed25519 public key in PEM: {exc}") from None
    if not isinstance(signed, dict):
        print("certificate INVALID: malformed certificate: not a JSON object", file=sys.stderr)
        return 1
    ok, reason = verify_document(signed, trusted)
    if not ok:
        print(f"certificate INVALID: {reason}", file=sys.stderr)
        return 1
    cert = signed["certificate"]
    before, after = cert.get("version_before") or {}, cert.get("version_after") or {}
    print(
        f"certificate valid: request {cert.get('request_id')} ({cert.get('reference') or 'no reference'}), "
        f"{cert.get('sample_count')} sample(s) forgotten by {cert.get('model')} "
        f"{before.get('version')} -> {after.get('version')}, signed by {signed['signature']['public_key']}"
    )
    if trusted is None:
        print(
            "note: checked against the key embedded in the certificate only; pass --public-key with the "
            "service's PEM (`unlearn public-key -o key.pem`) to check who signed it"
        )
    return 0


def _client_verb(fn: Callable[[Client, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from service.cli.client import Client

        with Client(args.url, args.api_key, timeout=args.http_timeout) as client:
            return fn(client, args)

    return run


# -- the parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearn",
        description="The unlearning service: start it (run, api, worker, beat, db, keys) or use it "
        "(models, request, jobs, versions, requests, certificate, public-key, audit, verify-certificate).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Server verbs (they read the settings: UNLEARN_VAR_DIR, DATABASE_URL, ...).
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

    # Connection flags of the client verbs (they talk to a running server).
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="server URL (env UNLEARN_URL, default http://127.0.0.1:8000)")
    conn.add_argument(
        "--api-key",
        help="API key (prefer env UNLEARN_API_KEY; else, for a local server, $UNLEARN_VAR_DIR/admin.key)",
    )
    conn.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)

    keys = sub.add_parser(
        "keys", help="create or revoke API keys (in the configured database, or --api through a server)"
    )
    ksub = keys.add_subparsers(dest="action", required=True)
    api_help = (
        "through the API of a running server with an admin key (its own tenant) instead of the database"
    )
    kc = ksub.add_parser("create", parents=[conn])
    kc.add_argument("--tenant", help="required without --api; with --api, defaults to the admin key's tenant")
    kc.add_argument("--scopes", nargs="+", required=True, choices=SCOPE_NAMES, metavar="SCOPE")
    kc.add_argument("--name", default="")
    kc.add_argument("--api", action="store_true", help=api_help)
    kr = ksub.add_parser("revoke", parents=[conn])
    kr.add_argument("id")
    kr.add_argument("--api", action="store_true", help=api_help)
    keys.set_defaults(fn=cmd_keys)

    def client_parser(name: str, fn: Callable[[Client, argparse.Namespace], int], **kw: Any) -> Any:
        sp = sub.add_parser(name, parents=[conn], **kw)
        sp.set_defaults(client_fn=_client_verb(fn))
        return sp

    client_parser("models", cmd_models, help="list models: latest version, pending requests, gates")

    rq = client_parser("request", cmd_request, help="ask a model to forget training samples")
    rq.add_argument("model")
    rq.add_argument("--ids-file", required=True, help="one sample ID per line (or a JSON list); - for stdin")
    rq.add_argument("--reference", help="your reference, e.g. a ticket number")
    rq.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar, then show metrics"
    )
    rq.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    rq.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    jb = client_parser("jobs", cmd_jobs, help="list jobs with state and progress")
    jb.add_argument("--model")
    jb.add_argument("--state", choices=["running", "completed", "failed", "cancelled"])
    jb.add_argument("--limit", type=int, default=20)
    jb.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    jb.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

    vs = client_parser("versions", cmd_versions, help="a model's version line with metrics and hashes")
    vs.add_argument("model")
    vs.add_argument("--full", action="store_true", help="print whole checkpoint hashes")

    rs = client_parser("requests", cmd_requests, help="find deletion requests by id, reference, state")
    rs.add_argument("id", nargs="?", help="one request id")
    rs.add_argument("--model")
    rs.add_argument("--reference")
    rs.add_argument(
        "--state", choices=["received", "queued", "processing", "completed", "failed", "cancelled"]
    )
    rs.add_argument("--limit", type=int, default=50)

    ce = client_parser(
        "certificate", cmd_certificate, help="download a completed request's signed certificate"
    )
    ce.add_argument("request_id")
    ce.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")

    pk = client_parser("public-key", cmd_public_key, help="download the key that signs certificates (PEM)")
    pk.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")

    au = sub.add_parser("audit", help="export or verify the hash-chained audit trail")
    asub = au.add_subparsers(dest="action", required=True)
    ae = asub.add_parser("export", parents=[conn], help="stream the audit trail to a file")
    ae.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ae.add_argument("-o", "--output", required=True, help="file to write (- for stdout)")
    ae.add_argument("--since", help="ISO time with a timezone, e.g. 2026-01-01T00:00:00Z")
    ae.add_argument("--until", help="ISO time with a timezone")
    ae.add_argument("--model")
    ae.set_defaults(client_fn=_client_verb(cmd_audit_export))
    av = asub.add_parser("verify", parents=[conn], help="recompute the chain on the server")
    av.set_defaults(client_fn=_client_verb(cmd_audit_verify))

    vc = sub.add_parser(
        "verify-certificate", help="check a certificate's Ed25519 signature offline (no server needed)"
    )
    vc.add_argument("file", help="the signed certificate (JSON, as served by the API)")
    vc.add_argument("--public-key", help="the service's public key (PEM); without it only self-consistency")
    vc.set_defaults(client_fn=cmd_verify_certificate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "api", False):  # `unlearn keys ... --api`
        args.client_fn = _client_verb(cmd_keys_api)
    if not hasattr(args, "client_fn"):
        return int(args.fn(get_settings(), args) or 0)
    from service.cli.client import ApiError

    try:
        return int(args.client_fn(args) or 0)
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.kind, 1)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
