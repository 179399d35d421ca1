"""Tuning grid for a method's defaults, on tuning cases only (never on the seeds the quality table reports).

    python -m bench.tune --setting fashion_mem --cases random:0 random:100 random:101 classwise:0 \
        classwise:6 --grid '{"p": [0.75, 0.8, 0.85], "lr": [0.03, 0.05, 0.08], "epochs": [0.75, 1.0],
        "schedule": ["cosine"]}' --jobs 2 --cache .cache/bench

A case is ``random:SPLIT_SEED`` (a seeded random 10%), ``small:SPLIT_SEED`` (1%) or ``classwise:CLASS``, all
on the original trained with ``--model-seed`` (0 by default; the table reports 1 2 3). For every grid point
it prints the gap closed per case, the mean and the worst case over the cases, and the run time relative to
retrain; rows are sorted by the worst case, the rule the defaults in ``models/unlearning/params.py`` were
picked by (a mean hides a setting that collapses on one split). ``--run-seeds 0 1 2`` runs every point
with each run seed (the params' ``seed``: the retain pool's draw and the batch order) and ranks a case by
the mean over them: on a model that barely memorises, a single run seed moved one setting's gap closed
from 38% to 81%. ``--floor`` also trains a second exact retrain per case (another training seed) and ranks
by the closable gap closed, (gap(original) - gap) / (gap(original) - floor), as the quality table does: on
the 60k model the floor is about 70% of the original gap, so a raw 29% can be all there is to close.
Writes JSON to bench/results/tune_<setting>_<method>.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.quality import (
    NOISE_SEED_OFFSET,
    RESULTS,
    RETRAIN,
    SCENARIOS,
    SETTINGS,
    Row,
    _cached,
    _fixed,
    _run_row,
    forget_split,
    pooled_closable,
    score,
    trained_original,
)
from models.architectures import layer_normed
from models.datasets import SampleDataset
from models.metrics import avg_gap
from models.unlearning.params import with_recipe


@dataclass(frozen=True)
class Case:
    scenario: str  # one of bench.quality.SCENARIOS: "random", "small", "quarter", "half", "subclass", ...
    value: int  # split seed (random, small) or forgotten class (classwise; subclass, most: the seed too)

    @classmethod
    def parse(cls, text: str) -> Case:
        scenario, _, value = text.partition(":")
        if scenario not in SCENARIOS or not value.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(
                "a case is random:SEED, small:SEED, subclass:CLASS, most:CLASS or classwise:CLASS, "
                f"got {text!r}"
            )
        return cls(scenario, int(value))

    def __str__(self) -> str:
        return f"{self.scenario}:{self.value}"


@dataclass
class Env:
    original: torch.nn.Module
    forget: SampleDataset
    retain: SampleDataset
    test: SampleDataset
    heldout: SampleDataset  # the setting's held-out reference, for methods that use one
    reference: dict[str, Any]  # metrics of the exact retrain
    retrained: torch.nn.Module  # the exact retrain itself (bench/loss_profile.py reads its losses)
    original_gap: float
    retrain_s: float
    recipe: dict[str, Any]  # the original's training recipe: what a method takes from it (with_recipe)
    floor: float | None = None  # a second retrain's Avg Gap from the reference (``--floor``)


@functools.cache
def environment(
    setting_name: str, model_seed: int, case: Case, device: str, cache: Path | None, floor: bool = False
) -> Env:
    """Original, split and retrained reference of one case (per process; cached on disk with --cache);
    with ``floor``, the noise floor too: a second retrain with another training seed, scored against it."""
    setting = SETTINGS[setting_name]
    run = trained_original(setting, model_seed, device, cache)
    forget, retain = forget_split(run.train, case.scenario, case.value, forgotten_class=case.value)
    make_ref = functools.partial(_run_row, RETRAIN, run.model, forget, retain, run.recipe.to_dict())
    key = f"{run.tag}-retrain-{case.scenario}-{case.value}"
    ref_model, retrain_s = _cached(cache, key, setting, device, make_ref)
    ref = score(ref_model, forget, retain, run.test)
    orig = score(run.model, forget, retain, run.test)
    floor_gap = None
    if floor:
        second = {**run.recipe.to_dict(), "seed": run.recipe.seed + NOISE_SEED_OFFSET}
        make_floor = functools.partial(_run_row, RETRAIN, run.model, forget, retain, second)
        key2 = f"{run.tag}-retrain2-{case.scenario}-{case.value}"
        floor_model, _ = _cached(cache, key2, setting, device, make_floor)
        floor_gap = avg_gap(score(floor_model, forget, retain, run.test), ref)
    return Env(run.model, forget, retain, run.test, run.reference, ref, ref_model, avg_gap(orig, ref),
               retrain_s, run.recipe.to_dict(), floor_gap)  # fmt: skip


def grid_points(grid: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values; a list of grids is the concatenation of their points (so
    the default, ``{}``, can run beside a grid of a mode it does not share)."""
    if isinstance(grid, list):
        return [p for g in grid for p in grid_points(g)]
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def evaluate_point(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """One grid point over every case (and, with --run-seeds, every run seed of each): gap, gap closed and
    time ratio per run."""
    torch.set_num_threads(args.threads)
    runs = []
    for case in args.cases:
        env = environment(args.setting, args.model_seed, case, args.device, args.cache, args.floor)
        for run_seed in args.run_seeds or [None]:
            run_params = params if run_seed is None or "seed" in params else {**params, "seed": run_seed}
            run_params = with_recipe(args.method, run_params, env.recipe,  # as the service would run it
                                     layer_norm=layer_normed(env.original))  # fmt: skip
            row = Row("tune", args.method, _fixed({}), front="kept" if args.kept_front else "computed")
            model, seconds = _run_row(row, env.original, env.forget,
                                      env.retain, run_params, env.heldout)  # fmt: skip
            metrics = score(model, env.forget, env.retain, env.test)
            gap = avg_gap(metrics, env.reference)
            closed = 1 - gap / env.original_gap if env.original_gap else 0.0
            runs.append({"case": str(case), "run_seed": run_seed, "gap": gap, "closed": closed,
                         "original_gap": env.original_gap, "floor": env.floor,
                         "time_ratio": seconds / env.retrain_s, "metrics": metrics})  # fmt: skip
    return {"params": params, **summarise(runs)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case, the mean gap closed over its run seeds and their range; over cases, the mean and the worst
    of those means. Why the mean over run seeds: on the 60k model one setting closed 38-81% of a case's gap
    across three run seeds (bench/results/tune_stop34_saturating.md), so a single run ranks settings by
    the draw of the retain pool and the batch order."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        cases.setdefault(run["case"], []).append(run)
    per_case = [
        {
            "case": name,
            "closed": statistics.fmean(r["closed"] for r in rs),
            "closed_min": min(r["closed"] for r in rs),
            "closed_max": max(r["closed"] for r in rs),
            "gap": statistics.fmean(r["gap"] for r in rs),
            "runs": rs,
        }
        for name, rs in cases.items()
    ]
    means = [c["closed"] for c in per_case]
    ratio = statistics.fmean(r["time_ratio"] for r in runs)
    floored = all(r.get("floor") is not None for r in runs)
    return {"cases": per_case, "mean_closed": statistics.fmean(means), "min_closed": min(means),
            "time_ratio": ratio, "pooled_closable": pooled_closable(runs) if floored else None}  # fmt: skip


def markdown(results: list[dict[str, Any]], cases: list[Case]) -> str:
    """Rows sorted by the worst case, or with ``--floor`` by the closable gap closed, pooled over cases and
    run seeds as the quality table pools seeds: a case whose second retrain lands as far from the reference
    as the original does (the 60k model's random:0) has no closable gap of its own to rank by."""
    floored = bool(results) and results[0].get("pooled_closable") is not None
    paired = len(results) > 1
    head = "| params | " + " | ".join(f"{c} closed" for c in cases) + " | mean | worst |"
    head += " pooled closable |" * floored + " gap - first point's (paired) |" * paired + " time / retrain |"
    lines = [head, "|" + "---|" * (len(cases) + 4 + floored + paired)]
    rank = "pooled_closable" if floored else "min_closed"
    first = _runs(results[0]) if paired else []
    for r in sorted(results, key=lambda r: r[rank], reverse=True):
        cells = [_cell(c) for c in r["cases"]]
        cells += [f"{100 * r['mean_closed']:.0f}%", f"{100 * r['min_closed']:.0f}%"]
        if floored:
            cells.append(f"{100 * r['pooled_closable']:.0f}%")
        if paired:
            diff = None if r is results[0] else paired_difference(_runs(r), first)
            cells.append("–" if diff is None else f"{diff[0]:+.2f} ± {diff[1]:.2f}")
        cells.append(f"{100 * r['time_ratio']:.1f}%")
        lines.append(f"| `{json.dumps(r['params'])}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(
    runs: list[dict[str, Any]], reference: list[dict[str, Any]]
) -> tuple[float, float] | None:
    """Mean and standard error of the Avg Gap a point leaves minus the reference point's, over runs paired by
    case and run seed (negative: closer to the retrain); None under two pairs. Why: paired runs share the
    case's original, retrains and split, and the run seed's retain pool and batch order, so the difference
    is free of that noise. On the 150-200-sample tuning cases one point's runs spread over 40 points of
    gap closed, and mean / worst cells ranked points by it."""
    ref = {(r["case"], r["run_seed"]): r["gap"] for r in reference}
    diffs = [r["gap"] - ref[key] for r in runs if (key := (r["case"], r["run_seed"])) in ref]
    if len(diffs) < 2:
        return None
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for case in result["cases"] for run in case.get("runs", [])]


def _cell(case: dict[str, Any]) -> str:
    """A case's gap closed; with several run seeds, their mean and range."""
    mean = f"{100 * case['closed']:.0f}%"
    if len(case.get("runs", ())) < 2:
        return mean
    return f"{mean} ({100 * case['closed_min']:.0f}-{100 * case['closed_max']:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="digits")
    ap.add_argument("--method", default="ugradsl_plus")
    ap.add_argument(
        "--cases", nargs="+", type=Case.parse, default=[Case("random", 100), Case("classwise", 0)]
    )
    ap.add_argument(
        "--grid",
        type=json.loads,
        default={},
        help='JSON: {"param": [values, ...], ...}, or a list of such grids (their points one after another)',
    )
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument(
        "--run-seeds",
        type=int,
        nargs="+",
        default=None,
        help="run every point with each of these run seeds (the params' seed: retain pool, batch order); a "
        "case's cell is their mean (and range), the worst case the worst of those means",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="train a second retrain per case and rank by the closable gap closed (beyond the noise floor)",
    )
    ap.add_argument(
        "--kept-front",
        action="store_true",
        help="time every run with its frozen front's outputs of every training row kept (a worker's cache, "
        "as for a model's later deletions; filled untimed); the unlearned models are the same",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--jobs", type=int, default=1, help="grid points evaluated in parallel processes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    ap.add_argument("--cache", type=Path, default=None, help="keep originals and retrains here between runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    points = grid_points(args.grid)
    for case in args.cases:  # train and cache the references once, before the pool forks copies
        env = environment(args.setting, args.model_seed, case, args.device, args.cache, args.floor)
        floor = "" if env.floor is None else f", floor {env.floor:.2f}"
        print(f"{case}: retrain {env.retrain_s:.1f}s, original gap {env.original_gap:.2f}{floor}", flush=True)
    out = args.out or RESULTS / f"tune_{args.setting}_{args.method}.json"
    if args.jobs <= 1 or args.cache is None:
        results: list[dict[str, Any]] = []
        for i, p in enumerate(points, start=1):  # written after every point: a stopped run keeps what it has
            results.append(evaluate_point(args, p))
            write_results(out, args, results, done=i == len(points))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(functools.partial(evaluate_point, args), points))
        write_results(out, args, results, done=True)


def write_results(out: Path, args: argparse.Namespace, results: list[dict[str, Any]], done: bool) -> None:
    table = markdown(results, args.cases)
    cmd = "python -m bench.tune " + " ".join(sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = "" if done else f" Partial: {len(results)} grid point(s) so far."
    seeds = f"; run seeds {' '.join(map(str, args.run_seeds))}" if args.run_seeds else ""
    order = "closable gap closed, pooled over cases and run seeds" if args.floor else "worst case"
    footer = f"\nCommand: `{cmd}`; model seed {args.model_seed}{seeds}; sorted by the {order}.{partial}"
    out.write_text(json.dumps({"command": cmd, "results": results, "markdown": table + footer}, indent=1,
                              default=float))  # fmt: skip
    out.with_suffix(".md").write_text(table + footer + "\n")
    if done:
        print(table + footer)
    else:
        print(f"{len(results)} point(s) done: {json.dumps(results[-1]['params'])}", flush=True)


if __name__ == "__main__":
    main()
