"""The SVC attack on confidences rounded to a grid (``MIA_GRID``, or each of ``--grids``) against the
same attack on the exact confidences: the score each gives and the time each fit takes, on real models.

    .venv/bin/python -m bench.mia_grid                      # digits + Fashion-MNIST 10k, seeds 1 2
    .venv/bin/python -m bench.mia_grid --settings digits --seeds 1 --cache .cache/bench
    .venv/bin/python -m bench.mia_grid --grids 1e-4 1e-3    # compare grids

For each setting, seed and scenario (random 10%, random 1%, one class) the models scored are the
original, the UGradSL+ default and, on random 10%, the exact retrain: the three kinds of confidence
profile a job meets (saturated, freshly unlearned, never saw D_f). Members, non-members and D_f are
the service's (``mia_sets``). The table goes to stdout and bench/results/mia_grid.md (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from pathlib import Path

import numpy as np

from bench.quality import (
    RETRAIN,
    SETTINGS,
    _cached,
    _run_row,
    forget_split,
    model_bench_args,
    trained_original,
)
from models.metrics import MIA_GRID, mia_efficacy_from_confidence, mia_sets, true_label_confidence
from models.unlearning import run_method
from models.unlearning.params import parse_params

OUT = Path(__file__).resolve().parent / "results" / "mia_grid.md"


def timed(fn, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    def grids(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--grids", nargs="+", type=float, default=[MIA_GRID], help="grids to compare")

    args = model_bench_args(__doc__, ["digits", "fashion_mem"], [1, 2], OUT, grids)
    names = [f"{g:g}" for g in args.grids]
    lines = [
        "# The MIA attack on a confidence grid (bench/mia_grid.py)",
        "",
        f"Grids {', '.join(names)}; fit + predict seconds; score = share of D_f called non-member.",
        "",
        "| setting | seed | scenario | model | distinct confidences exact / "
        + " / ".join(names)
        + " | score exact | "
        + " | ".join(f"score {n}" for n in names)
        + " | seconds exact | "
        + " | ".join(f"seconds {n}" for n in names)
        + " |",
        "|---|---:|---|---|---:|---:|" + "---:|" * (2 * len(names) + 1),
    ]
    print("\n".join(lines), flush=True)
    worst = dict.fromkeys(args.grids, 0.0)
    seconds = dict.fromkeys([0.0, *args.grids], 0.0)
    for name in args.settings:
        setting = SETTINGS[name]
        for seed in args.seeds:
            run = trained_original(setting, seed, "cpu", args.cache)
            for scenario in ("random", "small", "classwise"):
                forget, retain = forget_split(run.train, scenario, seed)
                models = {"original": run.model}
                models["default"] = run_method(
                    "ugradsl_plus", copy.deepcopy(run.model), forget, retain,
                    parse_params("ugradsl_plus", {}), heldout=run.reference,
                )  # fmt: skip
                if scenario == "random":
                    make = functools.partial(
                        _run_row, RETRAIN, run.model, forget, retain, run.recipe.to_dict()
                    )
                    models["retrain"], _ = _cached(
                        args.cache, f"{run.tag}-retrain-{scenario}", setting, "cpu", make
                    )
                members, non_members = mia_sets(retain, run.test, 0)
                for label, model in models.items():
                    conf = [true_label_confidence(model, d) for d in (members, non_members, forget)]
                    feats = np.concatenate(conf[:2])
                    scores, took, distinct = {}, {}, {}
                    for g in [0.0, *args.grids]:
                        fit = functools.partial(mia_efficacy_from_confidence, grid=g)
                        scores[g], took[g] = timed(fit, *conf)
                        distinct[g] = len(np.unique(np.round(feats / g) if g else feats))
                        seconds[g] += took[g]
                    for g in args.grids:
                        worst[g] = max(worst[g], abs(scores[g] - scores[0.0]))
                    line = (
                        f"| {name} | {seed} | {scenario} | {label} | "
                        + " / ".join(str(distinct[g]) for g in [0.0, *args.grids])
                        + " | "
                        + " | ".join(f"{100 * scores[g]:.2f}%" for g in [0.0, *args.grids])
                        + " | "
                        + " | ".join(f"{took[g]:.2f}" for g in [0.0, *args.grids])
                        + " |"
                    )
                    lines.append(line)
                    print(line, flush=True)
    summary = [
        "",
        "Largest score difference from the exact fit: "
        + ", ".join(f"grid {n}: {100 * worst[g]:.2f} points" for n, g in zip(names, args.grids, strict=True))
        + ". Total fit time: exact "
        + f"{seconds[0.0]:.1f} s, "
        + ", ".join(f"grid {n}: {seconds[g]:.1f} s" for n, g in zip(names, args.grids, strict=True))
        + ".",
    ]
    print("\n".join(summary))
    args.out.write_text("\n".join(lines + summary) + "\n")


if __name__ == "__main__":
    main()
