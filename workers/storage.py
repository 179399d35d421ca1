"""Where checkpoint files live. (A shared volume in production; an S3-compatible store would slot in
here.) Writing and hashing a file is `models.checkpoints.save_checkpoint`, the one writer."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from service.core.db.engine import session_scope
from service.core.db.tables import Model, ModelVersion
from service.core.settings import Settings
from workers import kept_scores

log = logging.getLogger(__name__)


def version_path(checkpoint_dir: Path, model_id: str, number: int, job_id: str | None = None) -> Path:
    """One file per publish attempt: a worker that lost its lease (and cleans up after itself) can never
    overwrite or delete the checkpoint another worker published for the same job."""
    suffix = f"-{job_id[:8]}-{uuid.uuid4().hex[:8]}" if job_id else ""
    return checkpoint_dir / model_id / f"v{number}{suffix}.safetensors"


# What `version_path` names (with a job) and the writer's temporary files beside it; nothing else in a
# model's folder is ever swept (but the test scores kept for such a file, `kept_scores.of_checkpoint`).
_SWEPT = re.compile(r"v\d+-[0-9a-f]{8}-[0-9a-f]{8}\.safetensors|\.v\d+.*\.safetensors\.[0-9a-f]{32}\.tmp")


def orphans(
    checkpoint_dir: Path, model_ids: Iterable[str], referenced: set[str], older_than_s: float
) -> list[Path]:
    """Checkpoint files no version points at, last written more than `older_than_s` ago: left by a
    worker killed between writing a checkpoint and committing its version (or mid-write). A publish
    commits right after its write, within one attempt, so a file older than the longest attempt can no
    longer become a version; `older_than_s` must exceed that. Only files named as `version_path` and
    the checkpoint writer name them are considered, in the folders of the models given; `referenced`
    holds the resolved paths versions point at."""
    cutoff = time.time() - older_than_s
    found = []
    for model_id in model_ids:
        folder = checkpoint_dir / model_id
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if (
                _SWEPT.fullmatch(path.name)
                and str(path.resolve()) not in referenced
                and path.stat().st_mtime < cutoff
            ):
                found.append(path)
    return sorted(found)


def sweep_orphans(settings: Settings) -> list[Path]:
    """Delete the `orphans` older than the longest attempt plus an hour, with the test scores kept beside
    them (``kept_scores``), and return them all. They are what a
    worker killed between writing a checkpoint and committing its version leaves (`runner.publish`
    deletes its own file on any failure it lives through)."""
    with session_scope(settings.resolved_database_url) as s:
        model_ids = list(s.scalars(select(Model.id)))
        kept = select(ModelVersion.checkpoint_uri).where(ModelVersion.checkpoint_retired_at.is_(None))
        referenced = {str(Path(u).resolve()) for u in s.scalars(kept)}  # a retired one's file is an orphan
        retired = s.execute(
            select(ModelVersion.model_id, ModelVersion.checkpoint_uri).where(
                ModelVersion.checkpoint_retired_at.is_not(None)
            )
        ).all()
    checkpoints = orphans(
        settings.checkpoint_dir, model_ids, referenced, settings.job_time_limit_seconds + 3600
    )
    # A retired version's file (its deletion recorded, then the call died before it deleted the file;
    # a registered v1's under uploads/ too) and the scores kept beside it, which the API's deletion
    # leaves (a probe): retired is for good, so at any age.
    storage = settings.checkpoint_dir.resolve()
    left = [
        Path(u)
        for _, u in retired
        if Path(u).is_file()
        and Path(u).resolve().is_relative_to(storage)
        and str(Path(u).resolve()) not in referenced  # never a file a live version also names
    ]
    scores = [p for m, u in retired for p in kept_scores.of_version(settings.checkpoint_dir, m, u)]
    gone = sorted(
        set(checkpoints + left + scores)
        | {kept for path in checkpoints for kept in kept_scores.of_checkpoint(path)}
    )
    for path in gone:
        path.unlink(missing_ok=True)
        log.info("deleted orphan %s (no version points at it)", path)
    return gone
