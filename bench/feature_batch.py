"""Inference throughput against batch size on this machine's CPU, for the passes an unlearning job makes
without gradients: the frozen front's features (``models/unlearning/last_layers.py``) and scoring
(``models/metrics.py``).

    .venv/bin/python -m bench.feature_batch                  # every model, 2 threads
    .venv/bin/python -m bench.feature_batch --models small_cnn_28 --repeats 3

For each model (freshly initialised: speed does not depend on the weights) and each batch size, rows per
second of the front (the split at ``train_share`` 0.7) and of the whole model, over --rows random inputs,
channels-last as the runs are. Each size is timed --repeats times in rotation, so drift over the run
shows as spread and not as a difference between sizes. The ``rule`` column marks the batch
``models.layout.cpu_batch`` chooses; ``before`` marks the fixed sizes used until stop 35 (512 for the
front, 256 for scoring).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from models.architectures import build_model
from models.layout import CPU_ACTIVATION_BYTES, cpu_batch, cpu_channels_last, largest_activation
from models.unlearning.last_layers import FEATURE_BATCH, split_last_layers

MODELS: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "small_cnn_28": ("small_cnn", {"image_size": 28}, (1, 28, 28)),  # Fashion-MNIST
    "small_cnn_8": ("small_cnn", {"image_size": 8}, (1, 8, 8)),  # scikit-learn digits
    "resnet18_cifar": ("resnet18_cifar", {"num_classes": 10}, (3, 32, 32)),
    "mlp_784": ("mlp", {"in_features": 784, "hidden": (512, 256)}, (784,)),
}
SIZES = (16, 32, 64, 128, 256, 512, 1024)
BEFORE = {"front": FEATURE_BATCH, "model": 256}


def rows_per_s(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            fn(x[i : i + batch])
    return len(x) / (time.perf_counter() - start)


def measure(name: str, rows: int, repeats: int) -> list[dict[str, Any]]:
    arch, kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x = torch.randn(rows, *shape)
    out = []
    with cpu_channels_last(model):
        split = split_last_layers(model, 0.7)
        parts = {"model": model} | ({"front": split.front.eval()} if split is not None else {})
        for part, net in parts.items():
            times: dict[int, list[float]] = {b: [] for b in SIZES}
            rows_per_s(net, x, 64)  # warm-up: oneDNN builds its kernels on first use
            for _ in range(repeats):
                for b in SIZES:
                    times[b].append(rows_per_s(net, x, b))
            per_row = largest_activation(net, x[:1])
            cap = BEFORE[part]  # the fixed size the pass used until stop 35 is the rule's cap
            rule = cpu_batch(net, x, cap)
            best = max(SIZES, key=lambda b: statistics.mean(times[b]))
            for b in SIZES:
                out.append({"model": name, "part": part, "batch": b, "rows_s": times[b],
                            "per_row_kb": per_row / 1024, "rule": b == rule, "before": b == BEFORE[part],
                            "best": b == best, "rule_batch": rule, "cap": cap})  # fmt: skip
            if rule not in SIZES:  # the rule's own size, timed the same way
                rule_times = [rows_per_s(net, x, rule) for _ in range(repeats)]
                out.append({"model": name, "part": part, "batch": rule, "rows_s": rule_times,
                            "per_row_kb": per_row / 1024, "rule": True, "before": False, "best": False,
                            "rule_batch": rule, "cap": cap})  # fmt: skip
    return out


def markdown(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Inference rows/s against batch size (CPU, {args.threads} threads, {args.rows} rows, "
        f"{args.repeats} repeats: mean, min-max)",
        "",
        f"Budget: the largest activation of a batch within {CPU_ACTIVATION_BYTES / 2**20:.0f} MiB "
        "(`models.layout.cpu_batch`).",
        "",
        "| model | pass | largest activation per row | batch | rows/s | | vs before |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model, part), group in _groups(records).items():
        before = statistics.mean(next(r["rows_s"] for r in group if r["before"]))
        for r in sorted(group, key=lambda r: r["batch"]):
            v = r["rows_s"]
            marks = ", ".join(k for k in ("rule", "before", "best") if r[k])
            lines.append(
                f"| {model} | {part} | {r['per_row_kb']:.0f} KB | {r['batch']} | "
                f"{statistics.mean(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) | {marks} | "
                f"{statistics.mean(v) / before:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["model"], r["part"]), []).append(r)
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = [r for name in args.models for r in measure(name, args.rows, args.repeats)]
    print(markdown(records, args))


if __name__ == "__main__":
    main()
