"""`unlearn request`: read the sample IDs and/or data subjects, submit the deletion request and, with --wait,
follow it with a progress bar and print the new version's metrics.

The one verb that waits, so it has a module of its own; it needs the client and rich only while it runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from typing import TYPE_CHECKING, Any

from service.cli.errors import UsageError, read_user_file, text_lines
from service.cli.render import console, metrics_table, say, short
from service.core.states import RequestState

if TYPE_CHECKING:
    from service.cli.client import Client


def read_ids(path: str, noun: str = "sample IDs") -> list[str]:
    """One ID per line, exactly as written, or a JSON list; `-` reads stdin. Skipped: empty lines and lines
    whose first character is `#`. Why nothing else is trimmed: an ID may hold `#` or spaces, and cutting
    `u-1#old` at its `#` forgot a different sample, `u-1`, without a word (a probe). A text whose first
    non-blank character is `[` is the JSON form, which an ID that starts with `#` or `[`, or is all
    spaces, needs."""
    text = read_user_file(path, noun)
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path} looks like JSON but does not parse: {exc}") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise UsageError(f"{path}: a JSON {noun} file must be a list of strings")
    else:
        ids = [line for line in text_lines(text) if line.strip() and not line.startswith("#")]
    if not ids:
        raise UsageError(f"{path} holds no {noun}")
    return ids


def request_ids(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(sample IDs, subject IDs) from --ids-file, --subjects and --subjects-file; at least one is needed."""
    if args.ids_file == "-" and args.subjects_file == "-":
        raise UsageError("only one of --ids-file and --subjects-file can read stdin")
    ids = read_ids(args.ids_file) if args.ids_file else []
    subjects: list[str] = []
    if args.subjects is not None:
        subjects += [s.strip() for s in args.subjects.split(",") if s.strip()]
        if not subjects:
            raise UsageError("--subjects names no subject (give a comma-separated list, e.g. alice,bob)")
    if args.subjects_file:
        subjects += read_ids(args.subjects_file, "subject IDs")
    if not ids and not subjects:
        raise UsageError("name what to forget: --ids-file, --subjects or --subjects-file")
    return ids, subjects


def _wait_for_request(client: Client, req: dict[str, Any], timeout: float, interval: float) -> dict[str, Any]:
    """Poll the request (and its job, when the key may read jobs) with a progress bar on stderr."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from service.cli.client import TERMINAL_REQUEST_STATES, ApiError, retried

    can_read_jobs = True
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console(stderr=True)) as progress:
        task = progress.add_task(f"request {short(req['id'])}", total=1.0, phase=req["state"])
        while True:
            done, followed = req["state"] in TERMINAL_REQUEST_STATES, False
            if req["state"] == RequestState.COMPLETED:
                progress.update(task, completed=1.0, phase=RequestState.COMPLETED)
                return req
            if req.get("job_id") and can_read_jobs:
                try:
                    job = retried(functools.partial(client.job, req["job_id"]), deadline - time.monotonic())
                except ApiError as exc:
                    if exc.kind != "forbidden" and not done:
                        raise  # a request that has ended is reported whatever its job's read gave
                    can_read_jobs = False  # a product key: follow the request's state only
                else:  # a failed job's bar ends where the job stopped, not where the last poll saw it
                    where = f"{job['phase']} (attempt {job['attempts']})"
                    progress.update(
                        task,
                        completed=job["progress"],
                        description=f"job {short(job['id'])} {job['method']}",
                        phase=f"{req['state']} in {where}" if done else where,
                    )
                    followed = True
            if not followed:
                progress.update(task, phase=req["state"])
            if done:
                return req
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {req['id']} is still {req['state']} after {timeout:.0f}s")
            time.sleep(interval)
            # a database failover or an API restart answers 503 or nothing for a while: the deletion goes
            # on, so the wait does too, as the server's Retry-After says (a probe's gave up at once)
            req = retried(functools.partial(client.request, req["id"]), deadline - time.monotonic())


def _print_result(client: Client, req: dict[str, Any]) -> None:
    from service.cli.client import ApiError

    out = console()
    out.print(
        f"request {req['id']} {req['state']}: model {req['model']}, {req['sample_count']} sample(s)"
        + (f", {req['already_forgotten_count']} already forgotten" if req["already_forgotten_count"] else "")
    )
    if req["state"] != RequestState.COMPLETED:
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
    if job is None or new is None or new.get("job_id") != job["id"]:  # its samples were gone already
        out.print(f"version: {req['model_version']} (no new version was needed)")
        return
    base, result = job["metrics"].get("base") or {}, job["metrics"].get("result") or new["metrics"]
    out.print(
        f"new version {new['version']} of {req['model']} (parent {new['parent']}), job {job['id']}, "
        f"{how_published(job)}"
    )
    for line in [*refusals(job), *published_notes(job)]:
        out.print(line)
    table = metrics_table(req["model"], job, new, base, result)
    counts = ", ".join(
        f"{k.removesuffix('_count')} {result[k]}"
        for k in ("forget_count", "retain_count", "test_count")
        if k in result
    )
    out.print(table)
    if counts:
        out.print(f"samples measured: {counts}")
    out.print(f"checkpoint sha256: {new['checkpoint_sha256']}")


CREATE_RETRY_S = 60.0  # how long `unlearn request` sends its POST again while the server is unavailable


def cmd_request(client: Client, args: argparse.Namespace) -> int:
    ids, subjects = request_ids(args)
    req = client.create_request(
        args.model,
        ids,
        args.reference,
        subject_ids=subjects,
        reason=args.reason,
        idempotency_key=getattr(args, "idempotency_key", None),  # the parser sets it; callers may not
        retry_for=CREATE_RETRY_S,
    )
    note = f", {req['already_forgotten_count']} already forgotten" if req["already_forgotten_count"] else ""
    of = f" of {len(req['subject_ids'])} subject(s)" if req.get("subject_ids") else ""
    why = " (mislabeled)" if req.get("reason") == "mislabeled" else ""
    say(
        f"request {req['id']} accepted: {req['sample_count']} sample(s){of}{why} for {req['model']}{note}; "
        f"state {req['state']}",
        flush=True,
    )
    if not args.wait:
        return 0
    req = _wait_for_request(client, req, args.timeout, args.interval)
    _print_result(client, req)
    return 0 if req["state"] == "completed" else 1


def how_published(job: dict[str, Any]) -> str:
    """The method that published, the methods tried before it, and the worker runs when more than one:
    "1 attempt(s)" read as one method while the job's attempts held two (a client's finding); the job's
    `attempts` counts worker runs (a worker died or stopped mid-job), its `metrics.attempts` methods."""
    tried = [a.get("method") for a in (job.get("metrics") or {}).get("attempts") or []]
    said = f"method {job['method']}"
    if len(tried) > 1:
        said += f" (methods tried in order: {', '.join(str(m) for m in tried)})"
    if (job.get("attempts") or 1) > 1:
        said += f", {job['attempts']} worker runs"
    return said


def published_notes(job: dict[str, Any]) -> list[str]:
    """What the published attempt says beside its metrics: its warnings (a forgotten class still predicted,
    rows sent as mislabeled still holding their label) and the classes an earlier job deleted whole, which
    this version keeps switched off. The API and the dashboard showed them; `--wait` did not (a review)."""
    lines = []
    for a in (job.get("metrics") or {}).get("attempts") or []:
        if a.get("passed"):
            lines += [f"  warning: {w}" for w in a.get("warnings") or []]
            if a.get("silenced_classes"):
                named = ", ".join(str(c) for c in a["silenced_classes"])
                lines.append(f"  switched off (deleted by an earlier job): class {named}")
    return lines


def refusals(job: dict[str, Any]) -> list[str]:
    """Why each method before the one that published was refused: the line above named them only."""
    return [
        f"  {a.get('method')} refused: {'; '.join(a.get('gate_failures') or [a.get('error') or 'failed'])}"
        for a in (job.get("metrics") or {}).get("attempts") or []
        if not a.get("passed")
    ]
