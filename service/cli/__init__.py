"""`unlearn`: the one command for operators and users.

Server verbs: `unlearn run` starts the embedded stack; `api`, `worker`, `beat`, `db` and `keys` start
production processes or manage the database and keys directly. Client verbs (`models`, `request`, `jobs`,
`versions`, `requests`, `certificate`, `public-key`, `audit`, `verify-certificate`) talk to a running
server over its public API with an API key (`service.cli.client`). Torch is only ever imported by the worker
and demo subprocesses, never here; the client verbs import neither the database nor the server.

Exit codes of the client verbs: 0 ok; 1 the thing checked or waited for failed (a job failed, a chain or
certificate does not verify); 2 usage; 3 server unreachable; 4 key missing, rejected or lacking a scope;
5 not found; 6 the server refused the input (409/413/422); 7 any other server error; 141 the reader of
its output went away (a cut pipe).

The package: `parser` (the command line), `server` (server verbs), `verbs`, `request` and `documents`
(client verbs), `render` (rich output), `errors` (exit codes), `client` (the HTTP client). This module
holds only `main`, the console script's entry point (`service.cli:main`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service.cli.errors import EXIT_CODES, UsageError
from service.cli.parser import SCOPE_NAMES, build_parser
from service.cli.verbs import client_verb, cmd_keys_api

__all__ = ["SCOPE_NAMES", "build_parser", "main"]


SERVING = ("run", "api", "worker", "beat")  # a broken pipe there is a socket's or a child's, not stdout's


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in SERVING:
        return _run(args)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe is "Exception ignored" and exit 120
    except BrokenPipeError:
        # The reader went away (`unlearn audit export | head`): what it wanted it has; not a traceback.
        # Python's recipe: stdout to /dev/null, so the flush at exit has nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process SIGPIPE ended (128 + 13): what shells expect of a cut pipe
    return code


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "api", False):  # `unlearn keys ... --api`
        args.client_fn = client_verb(cmd_keys_api)
    if not hasattr(args, "client_fn"):
        if getattr(args, "url", None) or getattr(args, "api_key", None):  # they would be ignored
            hint = " (add --api to go through a server)" if args.command == "keys" else ""
            command = f"`{args.command}`{hint}"
            print(f"error: --url and --api-key are for the client commands, not {command}", file=sys.stderr)
            return EXIT_CODES["usage"]
        return _server_verb(args)
    from service.cli.client import ApiError
    from service.cli.render import say

    try:
        return int(args.client_fn(args) or 0)
    except ApiError as exc:  # the server's words, which may quote the client's (sample IDs, a reference)
        say(f"error: {exc.message}", file=sys.stderr)
        return EXIT_CODES.get(exc.kind, 1)
    except UsageError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    except TimeoutError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _server_verb(args: argparse.Namespace) -> int:
    """A server verb, on the settings the environment gives: a setting it cannot read, or a var folder it
    cannot make, is one line naming it and exit 2, not a traceback (a probe's PORT=abc). The folder is
    made by the verbs that need it, after their own checks (a port in use is told before it is made)."""
    from pydantic import ValidationError

    from service.core.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = _variable(".".join(str(part) for part in error["loc"]).upper())
            print(f"error: setting {name}{_shown(name, error.get('input'))}: {error['msg']}", file=sys.stderr)
        return EXIT_CODES["usage"]
    try:
        return int(args.fn(settings, args) or 0)
    except OSError as exc:  # making the var folder: it, or a folder above it, could not be made
        where = Path(str(exc.filename)).resolve() if exc.filename else None
        if where is None or not settings.var_dir.resolve().is_relative_to(where):
            raise
        said = exc.strerror or exc
        print(f"error: cannot make UNLEARN_VAR_DIR {settings.var_dir}: {said}", file=sys.stderr)
        return EXIT_CODES["usage"]


def _variable(name: str) -> str:
    """The variable the environment holds: `PORT` where the user set that form of `UNLEARN_PORT`."""
    bare = name.removeprefix("UNLEARN_")
    return bare if name not in os.environ and bare in os.environ else name


def _shown(name: str, value: object) -> str:
    """`=value` for the error line, but never a secret: a database URL's password is hidden and a secret
    is left out (a review saw `mysql://root:hunter2@db/x` printed back)."""
    if any(word in name.split("_") for word in ("SECRET", "SECRETS", "PASSWORD", "TOKEN")):
        return ""
    if "URL" in name and isinstance(value, str):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return "=" + repr(make_url(value).render_as_string(hide_password=True))
        except ArgumentError:
            return ""
    return f"={value!r}"
