"""How a client verb fails: the exit code for each kind of failure, and the one local failure (usage).

Kept apart from the verbs so `main` can map errors to exit codes without importing any verb's helpers.
The kinds match `service.cli.client.ApiError.kind`, plus `usage` and `failed` for problems found here.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


class UsageError(Exception):
    """A problem with the command line or a local file (exit code 2)."""


def text_lines(text: str) -> list[str]:
    """A text's lines, split at newlines only (a trailing carriage return dropped). str.splitlines() also
    splits at U+2028, U+2029, U+0085 and a few controls, which an ID or a JSON string may hold: a probe's
    reference "line\u2028sep" cut its event in an export in two, and every later offline check of the
    tenant's log failed."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_user_file(path: str, what: str) -> str:
    """A text file the user named (`-`: standard input), as UTF-8 (a leading byte-order mark dropped, as
    Windows editors write one); a UsageError, one line, where it cannot be read or is not UTF-8 (PowerShell's
    `>` writes UTF-16, and the decode error had ended the command in a traceback)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        return data.decode("utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        where = "given on standard input" if path == "-" else f"file {path}"
        raise UsageError(f"the {what} {where} is not UTF-8 text; save it as UTF-8") from None
