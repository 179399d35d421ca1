"""Checkpoints: safetensors (never unpickled) with a JSON header in the safetensors metadata that says how
to rebuild the model from the architecture registry."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from models.architectures import build_model

FORMAT_VERSION = 1
HEADER_KEY = "unlearning_header"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    architecture: str,
    kwargs: dict[str, Any],
    num_classes: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write weights and buffers (BatchNorm statistics included; tied tensors stored once) to ``path``
    through a temporary file and an atomic rename; return the sha256 hex of the file's bytes."""
    header = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "extra": extra or {},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
    os.replace(tmp, path)
    return file_sha256(path)


def read_header(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if HEADER_KEY not in meta:
        raise ValueError(f"{path}: not an unlearning-service checkpoint (no {HEADER_KEY!r} metadata)")
    header: dict[str, Any] = json.loads(meta[HEADER_KEY])
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {header.get('format_version')!r}")
    return header


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture named in the header and load the weights (strict: every tensor must match).
    The model is returned in eval mode on ``device``, with the header."""
    header = read_header(path)
    model = build_model(header["architecture"], **header["kwargs"])
    missing, unexpected = load_model(model, str(path), strict=True, device=str(device))
    model.to(device).eval()
    return model, header
