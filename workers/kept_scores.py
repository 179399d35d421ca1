"""A version's per-sample scores on its model's scoring data, kept beside its checkpoint so that the next
job reads them instead of scoring the base version's test pass again.

A model's scores on a fixed set depend on nothing a deletion changes (``models.metrics.SetScores``), and
the job that publishes a version has just computed them, so scoring that version again as the next job's
base only repeats the pass. The file is named after the checkpoint and what else the scores depend on (the
scoring data and the device kind) and vouched for like the checkpoint: its sha256 is on the version record
(``metrics.test_scores_sha256``, in the audit event of the publish too), and a file that is missing, changed
or of another length is not read: the base is scored instead. A job records which it was
(``metrics.data.base_test_scores``: ``kept`` or ``scored``). A registered model's v1 gets them from the
worker that validates it (``workers.validate.keep_v1_scores``); a v1 registered without that validation
(``workers.demo``) has none, and its first job scores it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load, save

from models.calibration import HeldOut
from models.image_modes import DECODING
from models.metrics import SetScores
from workers.datasets import DatasetRef

log = logging.getLogger(__name__)

FOLDER = "scores"  # under a model's checkpoint folder; swept only with an orphan checkpoint (workers.storage)
RECORD_KEY = "test_scores_sha256"  # on a version's metrics
# safetensors inside, but never named like a checkpoint: what lists `*.safetensors` lists weights only.
SUFFIX = ".scores"


def scoring_key(test: DatasetRef, parts: HeldOut, device: torch.device) -> str:
    """What a version's scores on ``parts.scoring`` depend on besides its weights: the test set as
    registered (its files' hash and how they are read), which of its samples score (IDs and labels) and
    the device kind (a GPU's float32 kernels round differently from a CPU's)."""
    h = hashlib.sha256()
    read = [test.kind, test.uri, test.sha256, test.features, device.type, DECODING]  # DECODING: image files
    h.update(json.dumps(read, default=str).encode())
    h.update("\n".join(parts.scoring.ids).encode())
    h.update(parts.scoring.y.numpy().astype("<i8").tobytes())
    return h.hexdigest()[:32]


def path_for(checkpoint_dir: Path, model_id: str, checkpoint_uri: str, key: str) -> Path:
    """Named after the checkpoint file, which is unique to one publish attempt (``version_path``): a
    refused attempt that removes its own files never removes another's."""
    return checkpoint_dir / model_id / FOLDER / f"{Path(checkpoint_uri).stem}.{key}{SUFFIX}"


def of_version(checkpoint_dir: Path, model_id: str, checkpoint_uri: str) -> list[Path]:
    """The kept scores of a version's checkpoint, wherever the checkpoint is (a registered v1's is under
    ``uploads/``, its scores in the model's folder: ``path_for``)."""
    folder = checkpoint_dir / model_id / FOLDER
    return sorted(folder.glob(f"{glob.escape(Path(checkpoint_uri).stem)}.*{SUFFIX}"))


def of_checkpoint(checkpoint: Path) -> list[Path]:
    """The kept scores named after ``checkpoint`` (one per scoring data and device kind it was scored on)."""
    return sorted((checkpoint.parent / FOLDER).glob(f"{checkpoint.stem}.*{SUFFIX}"))


def read(path: Path, rows: int, sha256: str | None) -> SetScores | None:
    """The scores kept at ``path`` if its bytes hash to ``sha256`` (the version record's) and hold
    ``rows`` rows; else None, and the caller scores instead."""
    if sha256 is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        log.info("no kept scores at %s; scoring the base version", path)
        return None
    if hashlib.sha256(raw).hexdigest() != sha256:
        log.warning("kept scores %s do not hash to their version record's; scoring the base version", path)
        return None
    try:
        arrays = load(raw)
        scores = SetScores(arrays["correct"], arrays["log_confidence"])
    except (SafetensorError, KeyError) as exc:
        log.warning("kept scores %s unreadable (%s); scoring the base version", path, exc)
        return None
    if not (len(scores.correct) == len(scores.log_confidence) == rows):
        log.warning(
            "kept scores %s have %d rows, the scoring data %d; scoring again", path, len(scores), rows
        )
        return None
    return scores


def write(path: Path, scores: SetScores) -> str | None:
    """Keep ``scores`` at ``path`` (a temporary file renamed over it, so a reader sees all of one or
    none) and return the sha256 of its bytes, for the version record. A failure is logged and returns
    None: the version is published without kept scores, and the next job scores its base."""
    raw = save(
        {
            "correct": np.ascontiguousarray(scores.correct, dtype=np.float32),
            "log_confidence": np.ascontiguousarray(scores.log_confidence, dtype=np.float32),
        }
    )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep scores at %s (%s); the next job scores its base", path, exc)
        tmp.unlink(missing_ok=True)
        return None
    return hashlib.sha256(raw).hexdigest()
