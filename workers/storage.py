"""Where checkpoint files live. (A shared volume in production; an S3-compatible store would slot in
here.) Writing and hashing a file is `models.checkpoints.save_checkpoint`, the one writer."""

from __future__ import annotations

import uuid
from pathlib import Path


def version_path(checkpoint_dir: Path, model_id: str, number: int, job_id: str | None = None) -> Path:
    """One file per publish attempt: a worker that lost its lease (and cleans up after itself) can never
    overwrite or delete the checkpoint another worker published for the same job."""
    suffix = f"-{job_id[:8]}-{uuid.uuid4().hex[:8]}" if job_id else ""
    return checkpoint_dir / model_id / f"v{number}{suffix}.safetensors"
