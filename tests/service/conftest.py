"""A fresh, migrated SQLite database per test: the domain transitions without the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.db import migrate
from service.core.db.engine import engine_for


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 't.db'}"
    migrate.upgrade(url)
    yield url
    engine_for(url).dispose()
