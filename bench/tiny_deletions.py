"""Deletions of one to a few rows from a model that does not memorise: how far one job moves it.

    .venv/bin/python -m bench.tiny_deletions                  # 12 single rows, 4 three-row deletions
    .venv/bin/python -m bench.tiny_deletions --rows 20 --sizes 1 5

A client's weak CNN (4 classes of 1x16x16 images, a faint class pattern under heavy noise; 3,000 training
rows, test accuracy ~0.69, trained with Adam and registered without a recipe, as a client probe did) lost
up to 3.4 points of test accuracy to a one-row erasure, and later erasures of one or two rows failed the
"since the last exact version" gate. A retrain, which never saw the row, lands within its seed noise of
the original. This prints, per deletion, how the default (UGradSL+ as the worker runs it) moves test and
retain accuracy, the run's steps and retain pool, beside exact retrains (the original's recipe, two seeds)
of the same deletions: the spread a retrain itself has. Generated data only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from models.architectures import build_model
from models.datasets import SampleDataset
from models.hooks import Hooks
from models.metrics import accuracy
from models.training import TrainRecipe, train
from models.unlearning import run_method
from models.unlearning.params import parse_params

RECIPE = TrainRecipe(epochs=15, lr=1e-3, batch_size=64, weight_decay=0.0, optimizer="adam", seed=0)
CLASSES, SIDE = 4, 16


def images(n: int, prefix: str, protos: torch.Tensor, gen: torch.Generator) -> SampleDataset:
    """``n`` images: 12% of their class's prototype under Gaussian noise (a weak signal), in [0, 1]."""
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = (0.12 * protos[y] + torch.normal(128 * 0.88, 60.0, (n, SIDE, SIDE), generator=gen)).clamp(0, 255)
    return SampleDataset((x / 255.0)[:, None].float(), y, [f"{prefix}-{i:05d}" for i in range(n)])


def setting() -> tuple[SampleDataset, SampleDataset, SampleDataset, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    protos = torch.randint(0, 256, (CLASSES, SIDE, SIDE), generator=gen).float()
    train_ds, test, heldout = (images(n, p, protos, gen) for n, p in ((3000, "t"), (800, "s"), (400, "h")))
    torch.manual_seed(RECIPE.seed)
    model = build_model("small_cnn", in_channels=1, image_size=SIDE, num_classes=CLASSES)
    return train_ds, test, heldout, train(model, train_ds, RECIPE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=12, help="deletions of each size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--retrains", type=int, default=2, help="exact retrains per deletion (seed 0, 1000, ...)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train_ds, test, heldout, original = setting()
    ta0, ra0 = accuracy(original, test), accuracy(original, train_ds)
    print(f"original: test accuracy {ta0:.4f}, training accuracy {ra0:.4f}\n")
    print("| rows | deletion | default ΔTA | default ΔRA | steps | retain pool | retrains' ΔTA | s |")
    print("|---|---|---|---|---|---|---|---|")
    moved: dict[int, list[float]] = {n: [] for n in args.sizes}
    spread: dict[int, list[float]] = {n: [] for n in args.sizes}
    for n in args.sizes:
        for k in range(args.rows):
            picked = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(k))[:n]
            forget, retain = train_ds.split_by_ids([train_ds.ids[i] for i in picked.tolist()])
            runs: list[dict] = []
            start = time.perf_counter()
            model = run_method(
                "ugradsl_plus", copy.deepcopy(original), forget, retain, parse_params("ugradsl_plus", {}),
                Hooks(on_plan=runs.append), heldout=heldout,
            )  # fmt: skip
            took = time.perf_counter() - start
            d_ta, d_ra = accuracy(model, test) - ta0, accuracy(model, retain) - ra0
            exact = []
            for r in range(args.retrains):
                recipe = {**RECIPE.to_dict(), "seed": RECIPE.seed + 1000 * r}
                params = parse_params("retrain", recipe)
                again = run_method("retrain", copy.deepcopy(original), forget, retain, params)
                exact.append(accuracy(again, test) - ta0)
            moved[n].append(d_ta)
            spread[n] += exact
            run = runs[0] if runs else {}
            print(
                f"| {n} | {k} | {100 * d_ta:+.2f} | {100 * d_ra:+.2f} | {run.get('steps')} | "
                f"{run.get('retain_rows')} | {', '.join(f'{100 * e:+.2f}' for e in exact)} | {took:.2f} |",
                flush=True,
            )
    print("\n| rows | default ΔTA: mean, sd, lowest | retrains' ΔTA: mean, sd, lowest |\n|---|---|---|")
    for n in args.sizes:
        cells = [
            f"{100 * statistics.mean(v):+.2f}, {100 * statistics.stdev(v):.2f}, {100 * min(v):+.2f}"
            for v in (moved[n], spread[n])
        ]
        print(f"| {n} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
