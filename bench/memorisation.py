"""How much a model has to forget, measured before any unlearning: D_f's losses against held-out data's.

    .venv/bin/python -m bench.memorisation --cache .cache/bench            # digits, Fashion-MNIST 10k and 60k
    .venv/bin/python -m bench.memorisation --settings digits --seeds 0 1

A retrained model sees D_f as it sees unseen data, so the distance between D_f's losses under the original
model and the held-out losses is the distance unlearning has to cover. The UGradSL+ settings that win
differ by that distance (bench/results/tune_*_last_layers.md: the memorising models want long runs, the
60k model short ones), and by how often a run pushes each forget sample (steps x forget rows per step /
|D_f|), which the retain pool changes for small deletions. This prints both per setting, seed and scenario
(random 10%, random 1%); since stop 32 the default sizes its run from the first
(``models/unlearning/sizing.py``), so its pushes column follows the e-folds column. The held-out data is the
bench's calibration set (``Setting.load``), never the scoring half.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from scipy.stats import ks_2samp

from bench.quality import SETTINGS, forget_split, model_bench_args, trained_original
from models.datasets import SampleDataset
from models.metrics import per_sample_loss
from models.unlearning.engine import Plan, count_steps, partner_size, retain_pool
from models.unlearning.params import parse_params
from models.unlearning.sizing import measured_distance, shrunk, sized

OUT = Path(__file__).resolve().parent / "results" / "memorisation.md"
RUNS = {  # label: UGradSL+ params whose pushes per forget sample are shown
    "default": {},
    "default less one standard error": {"pushes_shrink": 1.0},
    "stop 31 default": {"pushes": 0, "train_share": 0, "p": 0.7},
    "stop 31 last layers": {"train_share": 0.7, "epochs": 3, "p": 0.75},
}
PLAN = Plan("retain", 0.7, 0.3)  # UGradSL+: D_r leads


def pushes(params: dict, n_forget: int, retain: SampleDataset, distance: float, se: float) -> float:
    """Times a UGradSL+ run draws each forget sample: its steps (as the engine counts them, after
    ``pushes`` sizing, on the distance less the params' ``pushes_shrink`` standard errors) times the
    forget rows per step, over |D_f|."""
    p = parse_params("ugradsl_plus", params)
    p = sized(p, PLAN, n_forget, len(retain), shrunk(distance, se, p.pushes_shrink))
    pool = len(retain_pool(retain, n_forget, p.retain_budget, p.seed))
    b_f = partner_size(PLAN, min(p.batch_size, pool), n_forget, p.forget_batch_ratio)
    return count_steps(PLAN, p, n_forget, pool) * b_f / n_forget


def main() -> None:
    args = model_bench_args(__doc__, ["digits", "fashion_mem", "fashion_full"], [0], OUT)
    lines = [
        "# How much there is to forget (bench/memorisation.py)",
        "",
        "Mean cross-entropy of D_f and of held-out data under the original model, their ratio (a retrain's",
        "is about 1), its e-folds (``pushes`` sizing's distance, ln of 1/ratio, at least 0, ± its standard",
        "error, which ``pushes_shrink`` takes off, 0 times by default), the KS",
        "statistic between the two loss samples, the share of D_f whose true class has probability above",
        "1/2, and the times a",
        "UGradSL+ run pushes each forget sample (" + "; ".join(f"{k}: `{v}`" for k, v in RUNS.items()) + ").",
        "",
        "| setting | seed | scenario | D_f | CE D_f | CE held-out | ratio | e-folds | KS | D_f at p(y) > 1/2 "
        "| " + " | ".join(f"pushes, {k}" for k in RUNS) + " |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(RUNS),
    ]
    print("\n".join(lines), flush=True)
    for name in args.settings:
        for seed in args.seeds:
            run = trained_original(SETTINGS[name], seed, "cpu", args.cache)
            held = per_sample_loss(run.model, run.reference)
            for scenario in ("random", "small"):
                forget, retain = forget_split(run.train, scenario, seed)
                lf = per_sample_loss(run.model, forget)
                ks = ks_2samp(lf, held).statistic
                acc = float((lf < math.log(2)).mean())  # CE below ln 2 <=> p(y) > 1/2
                distance, se = measured_distance(run.model, forget, torch.from_numpy(held))
                row = [name, str(seed), scenario, str(len(forget)), f"{lf.mean():.3f}", f"{held.mean():.3f}",
                       f"{lf.mean() / held.mean():.2f}", f"{distance:.2f} ± {se:.2f}", f"{ks:.3f}",
                       f"{acc:.3f}"]  # fmt: skip
                row += [f"{pushes(p, len(forget), retain, distance, se):.1f}" for p in RUNS.values()]
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
