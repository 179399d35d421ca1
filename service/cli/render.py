"""How the client verbs look: rich consoles sized for terminals and pipes, the tables they print, and the
small formatters those share.

rich is imported inside each function, never at module level, so commands that print plain lines (and
`import service.cli`) do not pay for it.
"""

from __future__ import annotations

import functools
import os
import sys
import unicodedata
from typing import TYPE_CHECKING, Any

from service.core.states import JobState

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

METRIC_ROWS = (
    ("unlearning_accuracy", "UA  unlearning accuracy (1 - acc. on forget set)"),
    ("mia_score", "MIA membership-inference score on forget set"),
    ("mia_loss_score", "MIA-L loss-threshold attack on forget set"),
    ("retain_accuracy", "RA  retain accuracy"),
    ("test_accuracy", "TA  test accuracy"),
    ("runtime_s", "run time (s)"),
)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on written as its escape (``\\x1b``), line breaks
    and tabs kept (``_acts``). What the client prints comes from other people: a request's ``reference``, an
    error naming sample IDs, a certificate handed to an auditor. A probe's reference cleared the screen and
    retitled the terminal of whoever listed the requests."""
    return "".join(c.encode("unicode_escape").decode() if _acts(c) else c for c in text)


# Bidirectional embeddings, overrides and isolates: they reorder what follows ("exe.txt" shown as "txt.exe")
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _acts(c: str) -> bool:
    """A control character (C0, DEL, C1) but a line break or a tab, a bidi control or a lone surrogate:
    not a zero-width joiner, a non-breaking space or another character text in many scripts needs."""
    return (unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t") or c in _BIDI


def say(*parts: object, **kwargs: Any) -> None:
    """``print``, each part made ``printable``: the client verbs' plain lines carry other people's text."""
    print(*(printable(str(p)) for p in parts), **kwargs)


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class PlainConsole(Console):
        """Every string it prints, a table's cells included, made ``printable``."""

        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(printable(text), **kwargs)

    return PlainConsole


def console(stderr: bool = False) -> Console:
    """A rich console that reads no markup (a reference of ``[bold red]x[/]`` printed as ``x``, restyled)
    and prints every string ``printable``."""
    stream = sys.stderr if stderr else sys.stdout
    # A pipe or a log file has no width: print whole rows (hashes, ids) rather than rich's default 80.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return _console_class()(stderr=stderr, highlight=False, markup=False, emoji=False, width=width)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def short(ident: str | None) -> str:
    return ident[:8] if ident else "-"


def metrics_table(
    model: str, job: dict[str, Any], new: dict[str, Any], base: dict[str, Any], result: dict[str, Any]
) -> Table:
    """A finished request's metrics: the job's base version against the new one."""
    from rich.table import Table

    table = Table(title=f"metrics of {model} {new['version']}", title_justify="left")
    table.add_column("metric")
    table.add_column(f"{job['base_version']} (before)", justify="right")
    table.add_column(f"{new['version']} (after)", justify="right")
    for key, label in METRIC_ROWS:
        if key in result or key in base:
            table.add_row(label, fmt(base.get(key)), fmt(result.get(key)))
    return table


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    from rich.table import Table
    from rich.text import Text

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
    colour = {
        JobState.RUNNING: "cyan",
        JobState.COMPLETED: "green",
        JobState.FAILED: "red",
        JobState.CANCELLED: "yellow",
    }
    for j in jobs:
        age = j.get("heartbeat_age_s")
        table.add_row(
            short(j["id"]),
            j["model"],
            Text(printable(j["state"]), style=colour.get(j["state"], "white")),
            j["phase"],
            f"{j['progress'] * 100:.0f}%",
            j["method"],
            str(j["attempts"]),
            f"{j['base_version']} -> {j['result_version'] or '?'}",
            str(len(j["request_ids"])),
            f"{age:.0f}s ago" if age is not None and j["state"] == JobState.RUNNING else "-",
            (j.get("error") or "")[:60],
        )
    return table


def models_table(models: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="models", title_justify="left")
    for col in ("model", "architecture", "status", "latest", "pending", "train", "test", "method", "gates"):
        table.add_column(col)
    for m in models:
        gates = ", ".join(f"{k}={v}" for k, v in m["gates"].items()) or "-"
        method = " -> ".join([m["default_method"], *m["fallback_methods"]])
        table.add_row(
            m["name"],
            m["architecture"],
            m["status"],
            m["latest_version"],
            f"{m['pending_requests']}{'+' if m.get('pending_requests_capped') else ''}",
            str(m["train_samples"]),
            str(m["test_samples"]),
            method,
            gates,
        )
    return table


def datasets_table(datasets: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="datasets", title_justify="left")
    for col in ("id", "name", "kind", "samples", "sha256", "uri"):
        table.add_column(col)
    for d in datasets:
        table.add_row(
            d["id"], d["name"], d["kind"], str(d["num_samples"]), (d.get("sha256") or "-")[:16], d["uri"]
        )
    return table


def versions_table(model: str, versions: list[dict[str, Any]], *, full: bool) -> Table:
    """A model's version line; `full` prints whole checkpoint hashes instead of their first 16 digits."""
    from rich.table import Table

    table = Table(title=f"versions of {model}", title_justify="left")
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
            fmt(m.get("unlearning_accuracy")),
            fmt(m.get("mia_score")),
            fmt(m.get("retain_accuracy")),
            fmt(m.get("test_accuracy")),
            f"{runtime:.1f}s" if runtime is not None else "-",
            short(v["job_id"]),
            v["created_at"][:19].replace("T", " "),
            v["checkpoint_sha256"] if full else v["checkpoint_sha256"][:16],
        )
    return table


def requests_table(items: list[dict[str, Any]]) -> Table:
    from rich.table import Table

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
            short(r["job_id"]),
            r["model_version"] or "-",
            r["created_at"][:19].replace("T", " "),
            (r["error"] or "")[:60],
        )
    return table
