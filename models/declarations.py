"""A dataset's feature declaration: how the stored array becomes the tensors a model reads.

Torch-free and service-free (as ``models.manifests``): the API checks a declaration against the file's
header at registration (``service.core.features``), the worker's loader (``models.datasets``) applies it
and checks it again against the array it actually reads, and validation words its advice with it.

Images only for now. A declaration, as stored in ``datasets.features`` (JSON)::

    {"type": "image", "dtype": "uint8", "layout": "HW", "scale": 255.0,
     "mean": [0.1307], "std": [0.3081], "size": [32, 32]}

- ``dtype``: the stored array's dtype (a numpy name); it must be the file's.
- ``layout``: one stored sample's axes, ``HW`` (one channel), ``HWC`` or ``CHW``. Samples become CHW.
- ``scale``: values are divided by it (255 turns 8-bit pixels into [0, 1]). Integer data must say it;
  floats default to 1.
- ``mean``, ``std``: per channel, applied after scaling: ``(x / scale - mean[c]) / std[c]``.
- ``size``: ``[H, W]``; samples are resized to it (bilinear) after normalisation.

``None`` (no declaration) keeps the legacy behaviour: the arrays are used as they are, as float32.

Text (``jsonl`` and ``text_csv`` datasets) has a declaration of its own, which such a dataset must have::

    {"type": "text", "tokenizer": "/data/news/tokenizer.json", "max_length": 128}

- ``tokenizer``: a ``tokenizer.json`` of the Hugging Face ``tokenizers`` library (what
  ``tokenizer.save(path)`` or ``save_pretrained`` writes), read from disk only, never fetched. At
  registration its path is resolved and its sha256 stored as ``tokenizer_sha256``; the worker refuses a
  tokenizer file that changed since.
- ``max_length``: every text is truncated and padded to this many tokens.
- ``pad_token``: the padding token (default: the tokenizer's own padding token, else ``[PAD]``).

Samples become ``input_ids`` and ``attention_mask``, int64 tensors of shape (max_length,).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LAYOUTS: dict[str, int] = {"HW": 2, "HWC": 3, "CHW": 3}  # layout -> rank of one sample
INTEGER_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
FLOAT_DTYPES = ("float16", "float32", "float64")
DTYPES = INTEGER_DTYPES + FLOAT_DTYPES
MAX_SIZE = 4096  # pixels per side of a resize target
_KEYS = ("type", "dtype", "layout", "scale", "mean", "std", "size")
# What an integer dtype's full range is, for advice ("scale: 255" for uint8 pixels).
_FULL_SCALE = {"uint8": 255, "int8": 127, "uint16": 65535, "int16": 32767}


class DeclarationError(ValueError):
    """A feature declaration that cannot describe the data (or cannot be parsed at all)."""


@dataclass(frozen=True)
class ImageFeatures:
    layout: str | None = None  # required for arrays (npz); a CSV manifest's images are already CHW
    dtype: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImageFeatures:
        """Parse a stored or submitted declaration; DeclarationError naming the first problem."""
        if not isinstance(raw, Mapping):
            raise DeclarationError(f"features must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise DeclarationError(f"features has unknown field(s) {unknown}; known: {list(_KEYS)}")
        if raw.get("type", "image") != "image":
            raise DeclarationError(f"features.type must be 'image', got {raw.get('type')!r}")
        layout, dtype = raw.get("layout"), raw.get("dtype")
        if layout is not None and layout not in LAYOUTS:
            raise DeclarationError(f"features.layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if dtype is not None and dtype not in DTYPES:
            raise DeclarationError(f"features.dtype must be one of {list(DTYPES)}, got {dtype!r}")
        scale = raw.get("scale")
        if scale is not None:
            scale = _positive_number("features.scale", scale)
        mean = _numbers("features.mean", raw.get("mean"), positive=False)
        std = _numbers("features.std", raw.get("std"), positive=True)
        if mean is not None and std is not None and len(mean) != len(std):
            raise DeclarationError(
                f"features.mean has {len(mean)} value(s) but features.std has {len(std)}: one per channel"
            )
        size = raw.get("size")
        if size is not None:
            if (
                not isinstance(size, Sequence)
                or isinstance(size, str)
                or len(size) != 2
                or not all(_is_int(v) and 1 <= v <= MAX_SIZE for v in size)
            ):
                raise DeclarationError(
                    f"features.size must be [height, width], whole numbers from 1 to {MAX_SIZE}, got {size!r}"
                )
            size = (int(size[0]), int(size[1]))
        return cls(layout=layout, dtype=dtype, scale=scale, mean=mean, std=std, size=size)

    def to_dict(self) -> dict[str, Any]:
        """The declaration as stored (JSON); fields left unset are left out."""
        out: dict[str, Any] = {"type": "image"}
        for key in ("dtype", "layout", "scale", "mean", "std", "size"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def channels(self, sample_shape: Sequence[int]) -> int:
        """Channels of one sample stored in this layout (or, with no layout, already CHW)."""
        if self.layout == "HW":
            return 1
        if self.layout == "HWC":
            return int(sample_shape[-1])
        return int(sample_shape[0])

    def output_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """One sample's shape (C, H, W) once the declaration is applied."""
        if self.layout == "HW":
            c, h, w = 1, sample_shape[0], sample_shape[1]
        elif self.layout == "HWC":
            h, w, c = sample_shape
        else:
            c, h, w = sample_shape
        if self.size is not None:
            h, w = self.size
        return (int(c), int(h), int(w))

    def problems(self, sample_shape: Sequence[int], dtype: str, *, what: str = "x") -> list[str]:
        """Why this declaration cannot describe samples of `sample_shape` stored as `dtype` (empty: it
        can). `what` names the data in the messages."""
        found: list[str] = []
        shape = tuple(int(d) for d in sample_shape)
        rank = LAYOUTS.get(self.layout or "CHW", 3)
        if len(shape) != rank:
            if self.layout is None:
                found.append(f"{what} holds samples of shape {shape}, not images (C, H, W)")
            else:
                found.append(
                    f"layout {self.layout!r} means {rank} axes per sample, but {what} holds samples of "
                    f"shape {shape} ({len(shape)} axes); {_layout_hint(shape)}"
                )
            return found
        if self.dtype is not None and self.dtype != dtype:
            found.append(f"features.dtype is {self.dtype!r} but {what} is stored as {dtype!r}")
        if self.scale is None and dtype in INTEGER_DTYPES:
            found.append(
                f"{what} holds {dtype} values: declare features.scale (e.g. {_FULL_SCALE.get(dtype, 255)} "
                "to map pixels to [0, 1], or 1 to keep the raw values)"
            )
        channels = self.channels(shape)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != channels:
                found.append(
                    f"features.{name} has {len(values)} value(s) but the samples have {channels} "
                    f"channel(s) (layout {self.layout or 'CHW'}, one sample {shape})"
                )
        if 0 in shape:
            found.append(f"{what} holds empty samples (shape {shape})")
        return found

    def resolved(self, dtype: str) -> ImageFeatures:
        """The declaration to store: the file's dtype filled in, a float's scale defaulted to 1."""
        scale = self.scale if self.scale is not None else 1.0
        return ImageFeatures(self.layout, dtype, scale, self.mean, self.std, self.size)


TEXT_KINDS = ("jsonl", "text_csv")
# An uploaded file's kind, by its name's suffix, where the client does not say it (the API and the CLI).
UPLOAD_SUFFIXES = {".npz": "npz", ".tar": "webdataset", ".jsonl": "jsonl", ".csv": "text_csv"}
MAX_TEXT_LENGTH = 8192  # tokens per sample
_TEXT_KEYS = ("type", "tokenizer", "tokenizer_sha256", "max_length", "pad_token")
DEFAULT_PAD_TOKEN = "[PAD]"


@dataclass(frozen=True)
class TextFeatures:
    tokenizer: str  # path of a tokenizers `tokenizer.json`
    max_length: int = 128
    tokenizer_sha256: str | None = None  # filled in at registration
    pad_token: str | None = None  # None: the tokenizer's padding token, else DEFAULT_PAD_TOKEN

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TextFeatures:
        """Parse a stored or submitted text declaration; DeclarationError naming the first problem."""
        if not isinstance(raw, Mapping):
            raise DeclarationError(f"features must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_TEXT_KEYS))
        if unknown:
            raise DeclarationError(f"features has unknown field(s) {unknown}; known: {list(_TEXT_KEYS)}")
        if raw.get("type") != "text":
            raise DeclarationError(f"features.type must be 'text', got {raw.get('type')!r}")
        tokenizer = raw.get("tokenizer")
        if not isinstance(tokenizer, str) or not tokenizer or "\x00" in tokenizer:
            raise DeclarationError(
                f"features.tokenizer must be the path of a tokenizer.json, got {tokenizer!r}"
            )
        max_length = raw.get("max_length", 128)
        if not _is_int(max_length) or not 1 <= max_length <= MAX_TEXT_LENGTH:
            raise DeclarationError(
                f"features.max_length must be a whole number from 1 to {MAX_TEXT_LENGTH}, got {max_length!r}"
            )
        digest = raw.get("tokenizer_sha256")
        if digest is not None and (not isinstance(digest, str) or len(digest) != 64):
            raise DeclarationError(f"features.tokenizer_sha256 must be a sha256 hex digest, got {digest!r}")
        pad = raw.get("pad_token")
        if pad is not None and (not isinstance(pad, str) or not pad):
            raise DeclarationError(f"features.pad_token must be a non-empty string, got {pad!r}")
        return cls(tokenizer=tokenizer, max_length=int(max_length), tokenizer_sha256=digest, pad_token=pad)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "text", "tokenizer": self.tokenizer, "max_length": self.max_length}
        if self.tokenizer_sha256 is not None:
            out["tokenizer_sha256"] = self.tokenizer_sha256
        if self.pad_token is not None:
            out["pad_token"] = self.pad_token
        return out


def is_text(raw: Any) -> bool:
    """A declaration (as stored or submitted) for text rather than images."""
    return isinstance(raw, TextFeatures) or (isinstance(raw, Mapping) and raw.get("type") == "text")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise DeclarationError(f"{name} must be a finite number, got {v!r}")
    if v <= 0:
        raise DeclarationError(f"{name} must be positive, got {v!r}")
    return float(v)


def _numbers(name: str, values: Any, *, positive: bool) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise DeclarationError(f"{name} must be a non-empty list, one number per channel, got {values!r}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DeclarationError(f"{name}[{i}] must be a finite number, got {v!r}")
        if positive and v <= 0:
            raise DeclarationError(f"{name}[{i}] must be positive, got {v!r}")
        out.append(float(v))
    return tuple(out)


def _layout_hint(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return 'declare layout "HW" for one-channel images stored (H, W)'
    if len(shape) == 3:
        return 'declare layout "HWC" or "CHW" for images with channels'
    return "images are stored with 2 axes (HW) or 3 (HWC, CHW) per sample"


def parse(raw: Mapping[str, Any] | None) -> ImageFeatures | None:
    return None if raw is None else ImageFeatures.from_dict(raw)


# ---------------------------------------------------------------- advice, in a product engineer's words


def describe(d: Mapping[str, Any]) -> str:
    """`{layout: "HW", scale: 255}`: a mapping as the advice quotes it."""
    return "{" + ", ".join(f"{k}: {json.dumps(_plain(v))}" for k, v in d.items()) + "}"


def _plain(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def guess_layout(shape: Sequence[int], channels: int | None = None) -> str | None:
    """The layout that reads a stored sample of `shape` as images (with `channels` channels, if known)."""
    shape = tuple(shape)
    if len(shape) == 2:
        return "HW" if channels in (None, 1) else None
    if len(shape) != 3:
        return None
    if channels is not None:
        if shape[-1] == channels:
            return "HWC"
        if shape[0] == channels:
            return "CHW"
        return None
    if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return "HWC"
    if shape[0] in (1, 3, 4):
        return "CHW"
    return None


def undeclared_problem(sample_shape: Sequence[int], dtype: str, *, what: str = "x") -> str | None:
    """Why integer images may not be registered without a declaration (None: legacy use is fine).
    Integer arrays of images would be read as raw values (0..255 for 8-bit pixels) where models expect
    floats, and silently score as noise; integer vectors (one axis per sample) stay legacy."""
    shape = tuple(int(d) for d in sample_shape)
    if dtype not in INTEGER_DTYPES or len(shape) not in (2, 3):
        return None
    layout = guess_layout(shape)
    full = _FULL_SCALE.get(dtype, 255)
    which = (
        f'"{layout}": one sample is stored {shape}' if layout else f'"HWC" or "CHW": one sample is {shape}'
    )
    example = {"layout": layout or "HWC", "scale": full}
    return (
        f"{what} holds {dtype} pixels without a declaration: declare features.scale (the pixels' "
        f"full-scale value, e.g. {full} for 8-bit images) and features.layout ({which}), "
        f"e.g. features: {describe(example)}"
    )


def suggest(
    stored_shape: Sequence[int],
    dtype: str,
    expected: Sequence[int],
    current: ImageFeatures | None,
) -> dict[str, Any] | None:
    """A declaration that turns samples stored as (`stored_shape`, `dtype`) into `expected` (C, H, W),
    keeping what `current` already declares; None when no declaration can (e.g. the model expects a
    vector, or the channel counts differ)."""
    stored, want = tuple(stored_shape), tuple(expected)
    if len(want) != 3:
        return None
    layout = current.layout if current is not None else None
    if layout is None or len(stored) != LAYOUTS[layout] or ImageFeatures(layout).channels(stored) != want[0]:
        layout = guess_layout(stored, want[0])
    if layout is None:
        return None
    probe = ImageFeatures(layout=layout)
    if probe.channels(stored) != want[0]:
        return None
    out: dict[str, Any] = {"layout": layout}
    if current is not None and current.scale is not None:
        out["scale"] = current.scale
    elif dtype in INTEGER_DTYPES:
        out["scale"] = _FULL_SCALE.get(dtype, 255)
    for key in ("mean", "std"):
        values = getattr(current, key, None) if current is not None else None
        if values is not None and len(values) == want[0]:
            out[key] = list(values)
    if probe.output_shape(stored)[1:] != want[1:]:
        out["size"] = [want[1], want[2]]
    return out


def fits(sample_shape: Sequence[int], expected: Sequence[int]) -> bool:
    """Whether samples of `sample_shape` fit a model expecting `expected`: the same shape, or as many
    values as a model that flattens its input (one axis expected, e.g. ``mlp``) reads."""
    got, want = tuple(sample_shape), tuple(expected)
    return got == want or (len(want) == 1 and math.prod(got) == want[0])
