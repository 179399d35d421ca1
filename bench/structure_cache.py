"""What keeping a model's cut and batch size per structure saves (``models/structure.py``): a split of the
last layers and a CPU batch measure, each timed on a model of a structure seen before (kept) and with the
kept entries emptied first (as every call was before stop 51), median over 30 copies of one model.

    .venv/bin/python bench/structure_cache.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import layout  # noqa: E402
from models.architectures import build_model  # noqa: E402
from models.unlearning import last_layers  # noqa: E402

MODELS = [("small_cnn", {"image_size": 8}, (1, 8, 8)), ("resnet18_cifar", {"num_classes": 10}, (3, 32, 32))]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    torch.set_num_threads(2)
    head = ("model", "split, traced anew", "split, cut kept", "batch measured anew", "batch kept")
    print("| " + " | ".join(f"{h} (ms)" if i else h for i, h in enumerate(head)) + " |")
    print("|---|---:|---:|---:|---:|")
    for name, kwargs, shape in MODELS:
        x = torch.randn(64, *shape)
        times: list[list[float]] = [[], [], [], []]
        for model in (copy.deepcopy(m) for m in [build_model(name, **kwargs)] * 30):
            split = lambda m=model: last_layers.split_last_layers(m, 0.7)  # noqa: E731
            size = lambda m=model, x=x: layout.cpu_batch(m, x, 256)  # noqa: E731
            last_layers._CUTS.clear()
            times[0].append(timed(split))
            times[1].append(timed(split))
            layout._PER_ROW.clear()
            times[2].append(timed(size))
            times[3].append(timed(size))
        print(f"| {name} | " + " | ".join(f"{statistics.median(t) * 1000:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
