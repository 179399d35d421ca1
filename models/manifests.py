"""Where the rows of a CSV manifest may point: only at files inside the manifest's own folder (its root).

A manifest is client input, and the worker opens every path it names, possibly long after registration.
Without this rule a manifest under a data root could make the service read any file the process can
(``/etc/...``, ``../../other-tenant/...``, or a symlink placed beside the manifest). So a path is refused
when it is absolute, has a ``..`` component, or resolves (symlinks followed) outside the root.

Torch-free and service-free: the API checks manifests at registration (service.core.dataset_ids) and the
worker's loader (models.datasets) checks them again when it reads the files (defence in depth: the
folder may have changed in between).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class ManifestPathError(ValueError):
    """A manifest row names a file outside the manifest's folder."""


def manifest_root(manifest: str | Path) -> Path:
    """The folder a manifest's paths are relative to and must stay in: its own, resolved."""
    return Path(manifest).resolve().parent


def path_problem(root: Path, raw: str) -> str | None:
    """Why `raw` (a manifest's `path` cell) may not be read from `root`, or None if it may."""
    if not raw:
        return "empty path"
    if "\x00" in raw:
        return "the path holds a NUL byte"
    pure = PurePosixPath(raw)
    if pure.is_absolute():
        return f"absolute path {raw!r} (paths must be relative to the manifest's folder)"
    if ".." in pure.parts:
        return f"path {raw!r} has a '..' component"
    try:
        target = (root / pure).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable folder
        return f"path {raw!r} cannot be resolved: {exc}"
    if not target.is_relative_to(root):
        return f"path {raw!r} resolves to {target}, outside the manifest's folder (a symlink?)"
    if not target.is_file():  # found at registration, not as a failed job's FileNotFoundError later
        return f"path {raw!r}: no file there"
    return None


def resolve_row_path(root: Path, raw: str, line: int) -> Path:
    """The file a manifest row names, or ManifestPathError naming the line."""
    problem = path_problem(root, raw)
    if problem is not None:
        raise ManifestPathError(f"line {line}: {problem}")
    return (root / raw).resolve()  # the checked target itself, not a path to re-walk later
