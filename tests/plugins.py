"""Installing the test plugin (tests/data/plugin) for this test session only: its entry points are written
as real package metadata (a `*.dist-info` folder) to a temporary folder put on sys.path, so
`importlib.metadata.entry_points(group="unlearn.architectures")` finds them exactly as it finds an
installed package's. No mocks, and nothing is left in the virtual environment."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PLUGIN = Path(__file__).parent / "data" / "plugin"


@contextmanager
def installed_plugin(folder: Path) -> Iterator[dict[str, str]]:
    """Install tests/data/plugin's metadata under `folder`; yields its entry points (name -> target)."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    points: dict[str, str] = project["entry-points"]["unlearn.architectures"]
    dist = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in points.items())
    (dist / "entry_points.txt").write_text(f"[unlearn.architectures]\n{lines}")
    added = [str(folder), str(PLUGIN)]
    sys.path[:0] = added
    try:
        yield points
    finally:
        for entry in added:
            sys.path.remove(entry)
