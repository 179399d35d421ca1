"""`unlearn datasets [upload|register]` and `unlearn models register`: bring a dataset and a model to a
running server through its public API, with a progress bar while a file uploads, and (with --wait) until
a worker has validated the model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from models.declarations import UPLOAD_SUFFIXES
from service.cli.errors import UsageError, read_user_file
from service.cli.render import console, datasets_table, models_table, say

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.cli.client import Client


def json_arg(text: str | None, what: str) -> Any:
    """A JSON value given on the command line, or `@file` to read it from a file."""
    if text is None:
        return None
    raw = read_user_file(text[1:], what) if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


class ProgressReader:
    """A file that reports how many bytes were read, so an upload can drive a progress bar. Everything
    else (fileno, seek, tell) is the file's own, so the client still knows the length to send."""

    def __init__(self, fh: BinaryIO, advance: Callable[[int], object]) -> None:
        self._fh, self._advance = fh, advance

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._advance(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def upload(
    client: Client,
    path: str,
    url_path: str,
    field: str,
    form: dict[str, str],
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST `path` as the multipart part `field` (with `form`, and the files `extra` as the parts they are
    keyed by), showing one progress bar over all their bytes on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    parts = {field: Path(path), **{name: Path(p) for name, p in (extra or {}).items()}}
    for file in parts.values():
        if not file.is_file():
            raise UsageError(f"no file at {file}")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    total = sum(file.stat().st_size for file in parts.values())
    # Only on a terminal: piped, the bar it clears was a blank line before the one-line error (a probe)
    shown = console(stderr=True)
    with Progress(*columns, console=shown, transient=True, disable=not shown.is_terminal) as progress:
        task = progress.add_task(f"uploading {parts[field].name}", total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        with ExitStack() as stack:
            files = {
                name: (file.name, ProgressReader(stack.enter_context(open(file, "rb")), advance))
                for name, file in parts.items()
            }
            return client.upload(url_path, form, files)


TEXT_KINDS = ("jsonl", "text_csv")  # the kinds a tokenizer goes with (models.declarations.TEXT_KINDS)


def upload_kind(file: str, kind: str | None) -> str:
    """--kind, else the kind the file's suffix says; a usage error when it says none."""
    if kind is not None:
        return kind
    suffix = Path(file).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        known = ", ".join(f"{s} ({k})" for s, k in UPLOAD_SUFFIXES.items())
        raise UsageError(
            f"cannot tell the kind of {Path(file).name} from its suffix (known: {known}); pass --kind"
        )
    return UPLOAD_SUFFIXES[suffix]


def dataset_id(client: Client, ref: str) -> str:
    """A dataset named by id, or by a name that only one of the tenant's datasets has."""
    datasets = client.datasets()
    if any(d["id"] == ref for d in datasets):
        return ref
    named = [d["id"] for d in datasets if d["name"] == ref]
    if len(named) == 1:
        return named[0]
    if not named:
        raise UsageError(f"no dataset has the id or name {ref!r} (see `unlearn datasets`)")
    raise UsageError(f"{len(named)} datasets are named {ref!r}; give its id instead: {', '.join(named)}")


def cmd_datasets(client: Client, args: argparse.Namespace) -> int:
    if args.action == "upload":
        kind = upload_kind(args.file, args.kind)
        if args.tokenizer is not None and kind not in TEXT_KINDS:
            raise UsageError(
                f"--tokenizer applies to text datasets (kind {' or '.join(TEXT_KINDS)}), not to {kind}"
            )
        form = {"name": args.name, "kind": kind}
        if args.features is not None:
            form["features"] = json.dumps(json_arg(args.features, "--features"))
        extra = {"tokenizer": args.tokenizer} if args.tokenizer is not None else None
        ds = upload(client, args.file, "/v1/datasets/upload", "file", form, extra)
    elif args.action == "register":
        body: dict[str, Any] = {"name": args.name, "kind": args.kind, "uri": args.uri}
        if args.features is not None:
            body["features"] = json_arg(args.features, "--features")
        ds = client.post("/v1/datasets", body)
    else:
        console().print(datasets_table(client.datasets()))
        return 0
    say(
        f"dataset {ds['id']} {ds['name']!r} ({ds['kind']}): {ds['num_samples']} samples, "
        f"sha256 {ds.get('sha256') or '-'}"
    )
    return 0


def model_spec(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The spec from --spec (JSON or @file), overridden by the flags that were given."""
    spec: dict[str, Any] = json_arg(args.spec, "--spec") or {}
    if not isinstance(spec, dict):
        raise UsageError("--spec must be a JSON object")
    flags = {
        "name": args.name,
        "architecture": args.architecture,
        "num_classes": args.num_classes,
        "default_method": args.method,
        "arch_kwargs": json_arg(args.arch_kwargs, "--arch-kwargs"),
        "default_params": json_arg(args.params, "--params"),
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    if getattr(args, "config", None):
        config = json_arg(f"@{args.config}", "--config")
        if not isinstance(config, dict):
            raise UsageError("--config must be a JSON object (a config.json)")
        spec["arch_kwargs"] = {**spec.get("arch_kwargs", {}), "config": config}
    for field, ref in (("train_dataset", args.train), ("test_dataset", args.test)):
        if ref is not None:
            spec[field] = dataset_id(client, ref)
    missing = [
        f for f in ("name", "architecture", "num_classes", "train_dataset", "test_dataset") if f not in spec
    ]
    if missing:
        raise UsageError(f"the model spec lacks {', '.join(missing)} (flags or --spec)")
    return spec


def cmd_register_model(client: Client, args: argparse.Namespace) -> int:
    spec = model_spec(client, args)
    model = upload(client, args.checkpoint, "/v1/models", "checkpoint", {"spec": json.dumps(spec)})
    say(f"model {model['name']!r} registered ({model['status']}): a worker now loads and scores v1")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while model["status"] == "validating":
        if time.monotonic() > deadline:
            raise UsageError(f"model {model['name']!r} still validating after {args.timeout:.0f}s")
        time.sleep(args.interval)
        model = client.get(f"/v1/models/{model['name']}")
    console().print(models_table([model]))
    if model["status"] != "ready":  # an error, where errors go: it had gone to stdout, stderr empty
        say(
            f"error: model {model['name']!r} is {model['status']}: {model.get('status_detail')}",
            file=sys.stderr,
        )
        return 1
    return 0
