"""The architecture's rules, checked: the API never loads torch, the layers import in one direction,
and the migrations describe exactly the tables the code uses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from service.core.db import migrate
from tests.conftest import Backend

ROOT = Path(__file__).resolve().parents[1]


def test_api_process_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from service.api.app import create_app; import service.cli; create_app(); "
        "bad = [m for m in ('torch', 'transformers', 'workers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {"UNLEARN_VAR_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_migrations_match_the_tables(backend: Backend) -> None:
    settings = backend.settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    migrate.check(settings.resolved_database_url)  # raises if autogenerate would emit anything
