"""Turning stored samples into the float32 (N, C, H, W) tensors a model reads, as a dataset's feature
declaration (``models.declarations``) says: one array at a time, so the in-memory loaders
(``models.datasets``) apply it to a whole file and the streamed ones (``models.streamed``) to each batch,
with the same result."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.declarations import DeclarationError, ImageFeatures
from models.image_modes import FULL_SCALE, decoded_mode


def apply_features(x: np.ndarray, decl: ImageFeatures | None, *, what: str = "x") -> torch.Tensor:
    """``x`` (N, ...) as the declaration says: float32, CHW, divided by ``scale``, normalised per channel
    (``mean``, ``std``), resized to ``size``. No declaration: float32 as stored (the legacy behaviour).
    The declaration is checked against the array first (DeclarationError naming the problem): the API
    checked it against the file's header at registration, but the file is read again here."""
    if decl is None:
        return torch.from_numpy(x.astype(np.float32))
    problems = decl.problems(x.shape[1:], x.dtype.name, what=what)
    if decl.layout is None:
        problems.insert(0, f"{what}: an array's declaration needs features.layout (HW, HWC or CHW)")
    if problems:
        raise DeclarationError("; ".join(problems))
    t = torch.from_numpy(x.astype(np.float32))
    if decl.layout == "HW":
        t = t[:, None]
    elif decl.layout == "HWC":
        t = t.permute(0, 3, 1, 2)
    if decl.scale is not None and decl.scale != 1:
        t = t / decl.scale
    return normalise_and_resize(t, decl)


def normalise_and_resize(t: torch.Tensor, decl: ImageFeatures) -> torch.Tensor:
    """(N, C, H, W) float32: ``(t - mean[c]) / std[c]``, then resized (bilinear) to ``decl.size``."""
    channels = t.shape[1]
    for name, values in (("mean", decl.mean), ("std", decl.std)):
        if values is not None and len(values) != channels:
            raise DeclarationError(
                f"features.{name} has {len(values)} value(s) but the samples have {channels} channel(s)"
            )
    if decl.mean is not None:
        t = t - torch.tensor(decl.mean, dtype=t.dtype).view(1, -1, 1, 1)
    if decl.std is not None:
        t = t / torch.tensor(decl.std, dtype=t.dtype).view(1, -1, 1, 1)
    if decl.size is not None and tuple(t.shape[-2:]) != decl.size:
        t = torch.nn.functional.interpolate(t, size=decl.size, mode="bilinear", align_corners=False)
    return t.contiguous()


class UnreadableImage(ValueError):
    """An image file or member that cannot be decoded, named: the decoder's own message names a buffer
    ("cannot identify image file <_io.BytesIO object at 0x7f...>") or nothing ("Truncated File Read")."""


# The most pixels an image file may hold: 25 megapixels decode to 400 MB of float32 RGBA. Pillow only warns
# below 179 MP, and a probe's 164 KB PNG of 13000x13000 grew a worker by 1.5 GB per image
MAX_PIXELS = 25_000_000


def decode_image(data: bytes | Path, ext: str) -> np.ndarray:
    """One image as (C, H, W) float32 in [0, 1] (an ``.npy`` array as stored, as float32): greyscale as
    one channel and colour as three RGB ones, whatever mode the file stores, alpha as one more
    (``models.image_modes``); 16-bit greyscale scaled by 65535, floating-point pixels as stored."""
    if ext == "npy":
        arr: np.ndarray = np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False)
        arr = arr.astype(np.float32)
        return arr[None] if arr.ndim == 2 else arr
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        if img.width * img.height > MAX_PIXELS:  # from the header, before a pixel is decoded
            raise ValueError(
                f"it is {img.width}x{img.height} pixels; images here hold at most {MAX_PIXELS:,} "
                "(resize them before registering)"
            )
        mode = decoded_mode(img)
        shown = img.convert(mode) if mode != img.mode else img
        pixels = np.asarray(shown, dtype=np.float32) / FULL_SCALE.get(shown.mode, 255.0)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_image(data: bytes | Path, ext: str, name: str, decl: ImageFeatures | None) -> np.ndarray:
    """``decode_image``, its failure named by ``name`` (a file, or a shard's sample), resized to
    ``decl.size`` where one is declared: images of different sizes are stacked only once each is the
    declared size (a probe's manifest of 16, 20 and 24 px images was refused, told to declare the size it
    had declared). Bilinear per image is what the batch's resize computes, and commutes with mean/std."""
    try:
        arr = decode_image(data, ext)
    except Exception as exc:  # noqa: BLE001 - any decoder's failure is this file's, said with its name
        said = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(exc))  # ours, not the file
        raise UnreadableImage(f"{name} cannot be read as an image ({type(exc).__name__}: {said})") from exc
    if decl is None or decl.size is None or arr.ndim != 3 or tuple(arr.shape[-2:]) == decl.size:
        return arr
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(arr))[None],
        size=decl.size,
        mode="bilinear",
        align_corners=False,
    )
    return resized[0].numpy()


def stack_images(arrays: Sequence[np.ndarray], what: str, names: Sequence[str] | None = None) -> torch.Tensor:
    """Images of one shape stacked to (N, C, H, W); otherwise a ValueError naming the first image unlike
    the first one (``names``: each image's file or sample, since in a large set the shapes alone found
    nothing) and the fix that fits: one colour mode where the channels differ, ``features.size`` where
    only the height and width do."""
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is None:
        return torch.from_numpy(np.stack(arrays))
    first, other = arrays[0].shape, arrays[odd].shape
    named = f"{names[odd]} is {other}, {names[0]} {first}" if names else f"{sorted({first, other})}"
    fix = (
        "store every image in one colour mode (all RGB, or all greyscale)"
        if first[0] != other[0]
        else "declare features.size at registration to resize them"
    )
    raise ValueError(f"{what}: images differ in shape ({named}, as C, H, W); {fix}")


def post_only(x: torch.Tensor, decl: ImageFeatures | None) -> torch.Tensor:
    """A declaration for samples a loader has already made CHW floats: only ``mean``, ``std``, ``size``."""
    if decl is None:
        return x
    fixed = [k for k in ("layout", "dtype", "scale") if getattr(decl, k) is not None]
    if fixed:
        raise DeclarationError(
            f"features.{', features.'.join(fixed)} cannot apply here: these images are read as CHW floats "
            "already; declare only mean, std and size"
        )
    if x.ndim != 4:
        raise DeclarationError(f"features apply to images (C, H, W); these samples are {tuple(x.shape[1:])}")
    return normalise_and_resize(x, decl)
