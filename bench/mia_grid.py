"""The SVC attack on confidences rounded to ``MIA_GRID`` against the same attack on the exact
confidences: the score each gives and the time each fit takes, on real models.

    .venv/bin/python -m bench.mia_grid                      # digits + Fashion-MNIST 10k, seeds 1 2
    .venv/bin/python -m bench.mia_grid --settings digits --seeds 1 --cache .cache/bench

For each setting, seed and scenario (random 10%, random 1%, one class) the models scored are the
original, the UGradSL+ default and, on random 10%, the exact retrain: the three kinds of confidence
profile a job meets (saturated, freshly unlearned, never saw D_f). Members, non-members and D_f are
the service's (``mia_sets``). The table goes to stdout and bench/results/mia_grid.md (``--out``).
"""

from __future__ import annotations

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
    args = model_bench_args(__doc__, ["digits", "fashion_mem"], [1, 2], OUT)
    lines = [
        "# The MIA attack on a confidence grid (bench/mia_grid.py)",
        "",
        f"Grid {MIA_GRID:g}; fit + predict seconds; score = share of D_f called non-member.",
        "",
        "| setting | seed | scenario | model | distinct confidences exact / grid | score exact | score grid "
        "| seconds exact | seconds grid |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    worst, t_exact, t_grid = 0.0, 0.0, 0.0
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
                    exact, s_exact = timed(functools.partial(mia_efficacy_from_confidence, grid=0), *conf)
                    grid, s_grid = timed(mia_efficacy_from_confidence, *conf)
                    feats = np.concatenate(conf[:2])
                    n_exact = len(np.unique(feats))
                    n_grid = len(np.unique(np.round(feats / MIA_GRID)))
                    worst, t_exact, t_grid = max(worst, abs(exact - grid)), t_exact + s_exact, t_grid + s_grid
                    line = (
                        f"| {name} | {seed} | {scenario} | {label} | {n_exact} / {n_grid} "
                        f"| {100 * exact:.2f}% | {100 * grid:.2f}% | {s_exact:.2f} | {s_grid:.2f} |"
                    )
                    lines.append(line)
                    print(line, flush=True)
    summary = [
        "",
        f"Largest score difference: {100 * worst:.2f} points. Total fit time: exact {t_exact:.1f} s, "
        f"grid {t_grid:.1f} s.",
    ]
    print("\n".join(summary))
    args.out.write_text("\n".join(lines + summary) + "\n")


if __name__ == "__main__":
    main()
