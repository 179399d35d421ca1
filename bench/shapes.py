"""Generated 32x32 colour images of four classes (horizontal bars, vertical bars, a disc, a diagonal;
random colours and noise): real-looking image data for a ResNet that ships with no download."""

from __future__ import annotations

import numpy as np
import torch

from models.datasets import SampleDataset

CLASSES = ("horizontal", "vertical", "disc", "diagonal")


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, 32, 32, 3), HWC, and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    masks = (
        (yy // 4) % 2 == 0,
        (xx // 4) % 2 == 0,
        (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 100,
        np.abs(yy - xx) < 5,
    )
    labels = rng.integers(0, len(CLASSES), n)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = np.where(masks[label][..., None], fg, bg) + rng.normal(0, 40, (32, 32, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, labels.astype(np.int64)


def as_model_input(x: np.ndarray) -> torch.Tensor:
    """What the service's loader makes of them with the declaration {"layout": "HWC", "scale": 255}."""
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


def dataset(n: int, seed: int, prefix: str) -> SampleDataset:
    x, y = images(n, seed)
    return SampleDataset(as_model_input(x), torch.from_numpy(y), [f"{prefix}-{i:05d}" for i in range(n)])
