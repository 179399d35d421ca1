"""How a client verb fails: the exit code for each kind of failure, and the one local failure (usage).

Kept apart from the verbs so `main` can map errors to exit codes without importing any verb's helpers.
The kinds match `service.cli.client.ApiError.kind`, plus `usage` and `failed` for problems found here.
"""

from __future__ import annotations

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
