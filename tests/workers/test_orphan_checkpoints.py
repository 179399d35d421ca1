"""Orphan checkpoints (a worker killed between writing a version's file and committing it) are swept once
no attempt could still commit them; files a version points at, recent files and files the service did not
name are never touched. On the embedded database with the demo model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db.engine import session_scope
from service.core.db.tables import Model, ModelVersion
from service.core.settings import Settings
from tests.helpers import migrated
from workers.demo import ensure_demo
from workers.kept_scores import path_for
from workers.storage import sweep_orphans, version_path


@pytest.fixture
def demo(tmp_path: Path) -> Settings:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_JOB_TIME_LIMIT_SECONDS="600")  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    ensure_demo(settings)
    return settings


def aged(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def test_only_old_files_no_version_points_at_are_swept(demo: Settings) -> None:
    with session_scope(demo.resolved_database_url) as s:
        model_id = s.scalars(select(Model.id)).one()
        [published] = s.scalars(select(ModelVersion.checkpoint_uri)).all()
    os.utime(published, (time.time() - 10**6, time.time() - 10**6))  # old, but v1 points at it
    limit = 600 + 3600  # the longest attempt, plus an hour
    orphan = aged(version_path(demo.checkpoint_dir, model_id, 2, "a" * 36), limit + 60)
    half_written = aged(demo.checkpoint_dir / model_id / f".{orphan.name}.{'b' * 32}.tmp", limit + 60)
    in_flight = aged(version_path(demo.checkpoint_dir, model_id, 2, "c" * 36), limit - 60)  # may commit yet
    not_ours = aged(demo.checkpoint_dir / model_id / "notes.txt", limit + 60)
    # Each checkpoint's kept test scores (workers/kept_scores.py) go with it, and only with it.
    orphan_scores, in_flight_scores = (
        aged(path_for(demo.checkpoint_dir, model_id, str(c), "k" * 32), 0) for c in (orphan, in_flight)
    )

    assert sweep_orphans(demo) == sorted([orphan, half_written, orphan_scores])
    assert not orphan.exists() and not half_written.exists() and not orphan_scores.exists()
    assert Path(published).exists() and in_flight.exists() and not_ours.exists() and in_flight_scores.exists()
    assert sweep_orphans(demo) == []


def test_a_retired_versions_file_left_behind_is_swept(demo: Settings) -> None:
    """A checkpoint deletion records the retirement before it deletes the file (so no download is cut
    short); one that died between the two left the erased samples' weights on storage for good. The
    test scores kept beside a retired checkpoint go too (the API deletes only the checkpoint: a probe)."""
    from service.core.db.tables import utcnow

    with session_scope(demo.resolved_database_url) as s:
        model_id = s.scalars(select(Model.id)).one()
        v1 = s.scalars(select(ModelVersion)).one()
        kept = aged(version_path(demo.checkpoint_dir, model_id, 2, "d" * 36), 10**6)
        s.add(
            ModelVersion(model_id=model_id, number=2, parent_number=1, checkpoint_uri=str(kept),
                         sha256=v1.sha256, forgotten_count=0)
        )  # fmt: skip
        s.get_one(Model, model_id).latest_version = 2
    scores = aged(path_for(demo.checkpoint_dir, model_id, str(kept), "k" * 32), 0)
    assert sweep_orphans(demo) == []  # v2 points at it
    with session_scope(demo.resolved_database_url) as s:
        s.scalars(select(ModelVersion).filter_by(number=2)).one().checkpoint_retired_at = utcnow()
    assert sweep_orphans(demo) == sorted([kept, scores]) and not kept.exists() and not scores.exists()
    retired_after = aged(path_for(demo.checkpoint_dir, model_id, str(kept), "j" * 32), 0)  # the API's case
    assert sweep_orphans(demo) == [retired_after]  # its checkpoint file already deleted
    # v1, registered: its file is not in the model's folder, its scores are (a review)
    v1_scores = aged(path_for(demo.checkpoint_dir, model_id, v1.checkpoint_uri, "v" * 32), 0)
    with session_scope(demo.resolved_database_url) as s:
        s.scalars(select(ModelVersion).filter_by(number=1)).one().checkpoint_retired_at = utcnow()
    assert Path(v1.checkpoint_uri).parent.name != model_id  # the demo's v1 is in a folder of its own
    assert sweep_orphans(demo) == sorted([v1_scores, Path(v1.checkpoint_uri)])
    assert not v1_scores.exists() and not Path(v1.checkpoint_uri).exists()
