"""Checkpoint files: written under a temporary name, hashed, then renamed, so a crash leaves no half
version. (A shared volume in production; an S3-compatible store would slot in here.)"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from models.checkpoints import file_sha256, save_checkpoint


def version_path(checkpoint_dir: Path, model_id: str, number: int, job_id: str | None = None) -> Path:
    """One file per publish attempt: a worker that lost its lease (and cleans up after itself) can never
    overwrite or delete the checkpoint another worker published for the same job."""
    suffix = f"-{job_id[:8]}-{uuid.uuid4().hex[:8]}" if job_id else ""
    return checkpoint_dir / model_id / f"v{number}{suffix}.safetensors"


def write_checkpoint(
    model: torch.nn.Module,
    final: Path,
    *,
    architecture: str,
    kwargs: dict,
    num_classes: int,
    extra: dict | None = None,
) -> str:
    """Write `model` to `final` atomically and return its sha256."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_checkpoint(
            model, tmp, architecture=architecture, kwargs=kwargs, num_classes=num_classes, extra=extra
        )
        digest = file_sha256(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return digest
    finally:
        tmp.unlink(missing_ok=True)
