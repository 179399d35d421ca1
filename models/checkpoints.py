"""Checkpoints: safetensors (never unpickled) with a JSON header in the safetensors metadata that says how
to rebuild the model from the architecture registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from models.architectures import build_model

FORMAT_VERSION = 1
HEADER_KEY = "unlearning_header"


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ChecksumMismatch(ValueError):
    """The file on disk is not the one its version recorded (changed, truncated or swapped)."""


class CheckpointWriteFailed(OSError):
    """A checkpoint could not be written (its ``errno`` kept, where there was one): what a worker treats as
    an outage of its storage when the volume is full or failing, and as the job's failure otherwise."""


def _errno(exc: BaseException) -> int | None:
    """An OSError's errno, or the one a safetensors error quotes ("... (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc))
    return int(found.group(1)) if found else None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry, not only the file, must reach the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    architecture: str,
    kwargs: dict[str, Any],
    num_classes: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """The one checkpoint writer. Weights and buffers (BatchNorm statistics included; tied tensors stored
    once) go to a unique temporary name beside ``path``, which is fsynced, renamed over ``path`` and
    made durable with an fsync of the directory, so a crash leaves the old file or the new one, never
    half of one. Returns the sha256 hex of the bytes written (read once, before the rename)."""
    header = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_model(model, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
        with open(tmp, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, SafetensorError) as exc:
        # safetensors' writer names neither the file nor the errno's meaning in its own terms ("I/O error:
        # No space left on device"): a failed job should say which disk to look at. The errno is kept, so
        # a caller can tell a full disk from a broken file.
        failure = CheckpointWriteFailed(f"could not write checkpoint {path}: {exc}")
        failure.errno = _errno(exc)
        raise failure from exc
    finally:
        with contextlib.suppress(OSError):  # on a read-only volume it raised again and hid why (a probe)
            tmp.unlink(missing_ok=True)
    return digest


def load_weights(
    model: nn.Module, path: str | Path, *, sha256: str | None, device: str | torch.device = "cpu"
) -> None:
    """The one loader: refuse a file whose sha256 is not ``sha256`` (the hash on its version record;
    None only for files no record vouches for, such as a bench cache), then load strictly: every tensor
    of the architecture must be in the file with its shape, and nothing else. Never unpickles."""
    if sha256 is not None and (actual := file_sha256(path)) != sha256:
        raise ChecksumMismatch(
            f"checkpoint {path} has sha256 {actual[:16]}..., but its version records {sha256[:16]}...: "
            "the file was changed or replaced after it was published; refusing to load it"
        )
    if (misfit := _misshapen(model, path) or _mistyped(model, path)) is not None:
        raise ValueError(f"checkpoint does not fit the architecture: {misfit}")
    missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}{_prefix_hint(missing, unexpected)}"
        )


def _misshapen(model: nn.Module, path: str | Path) -> str | None:
    """The tensors the file and the architecture both name but shape differently, said plainly: loading
    raised torch's 'size mismatch for classifier.weight: copying a param with shape ...', which never
    says that num_classes (or an arch_kwarg) is what differs."""
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys() if k in wanted}  # noqa: SIM118 - not a dict
    differ = [f"{k} is {stored[k]} in the file, {wanted[k]} in the architecture"
              for k in stored if stored[k] != wanted[k]]  # fmt: skip
    if not differ:
        return None
    return "; ".join(differ[:3]) + " (do num_classes and arch_kwargs match the model that was saved?)"


def _mistyped(model: nn.Module, path: str | Path) -> str | None:
    """Weights the architecture holds as floats that the file stores as integers or booleans: copied in,
    they loaded as whole numbers without a word (a probe's int32 classifier.weight made a model `ready` at
    22% test accuracy). A float of another width is cast, as a half-precision upload should be (every
    safetensors float type is named F... or BF...). Buffers are left alone: a float mask stored as
    booleans loads as 0 and 1, as it always did."""
    floats = {k for k, v in model.named_parameters() if v.is_floating_point()}
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys() if k in floats}  # noqa: SIM118 - not a dict
    differ = [f"{k} is {dtype} in the file, a float in the architecture"
              for k, dtype in stored.items() if not dtype.startswith(("F", "BF"))]  # fmt: skip
    return "; ".join(differ[:3]) if differ else None


def _prefix_hint(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """Where every unexpected name is a missing one behind one prefix (``module.`` from DataParallel or
    DistributedDataParallel, ``_orig_mod.`` from torch.compile), say so."""
    missing, unexpected = set(missing), set(unexpected)
    prefixes = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(prefixes) != 1 or not missing:
        return ""
    (prefix,) = prefixes
    if not {k.split(".", 1)[-1] for k in unexpected} & missing:
        return ""
    return (
        f": the file's tensor names start with '{prefix}.', as a wrapper (DataParallel, torch.compile) "
        f"saves them; save the wrapped model's own state_dict, or strip '{prefix}.' from the names"
    )


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
    path: str | Path, *, device: str | torch.device = "cpu", sha256: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture named in the header and load the weights (strict: every tensor must match).
    The model is returned in eval mode on ``device``, with the header."""
    header = read_header(path)
    model = build_model(header["architecture"], **header["kwargs"])
    load_weights(model, path, sha256=sha256, device=device)
    model.to(device).eval()
    return model, header
