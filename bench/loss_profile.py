"""Where the per-sample losses of D_f, held-out data, the test set and D_r sit under the original, an
unlearning run and the exact retrain, on tuning cases: a diagnostic for why a method's gap stays open.

    python -m bench.loss_profile --setting digits --cases random:0 random:100 --params '{}'

For each case and model it prints the share of each set with a loss above ln 2 (about where a sample
stops being classified right with confidence) and the loss quantiles. The gap columns of bench.tune say
*that* a run under- or over-forgets; this says *where*: in the bulk of confident samples or in the tail.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.quality import SETTINGS, Row, _fixed, _run_row
from bench.tune import Case, environment
from models import batches as B
from models.datasets import SampleDataset

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


@torch.no_grad()
def losses(model: torch.nn.Module, ds: SampleDataset) -> torch.Tensor:
    """(N,) cross-entropy of every sample, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        F.cross_entropy(model(B.to(B.take(ds.x, i), device)), ds.y[i].to(device), reduction="none").cpu()
        for i in torch.arange(len(ds)).split(512)  # type: ignore[no-untyped-call]
    ]
    return torch.cat(parts)


def profile_line(name: str, loss: torch.Tensor) -> str:
    q = torch.quantile(loss, torch.tensor(QUANTILES)).tolist()
    high = 100 * float((loss > math.log(2)).float().mean())
    return f"| {name} | {len(loss)} | {high:.1f}% | " + " | ".join(f"{v:.3f}" for v in q) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="digits")
    ap.add_argument("--method", default="ugradsl_plus")
    ap.add_argument("--params", type=json.loads, default={})
    ap.add_argument("--cases", nargs="+", type=Case.parse, default=[Case("random", 0)])
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    head = "| set | n | loss > ln 2 | " + " | ".join(f"q{round(100 * q)}" for q in QUANTILES) + " |"
    for case in args.cases:
        env = environment(args.setting, args.model_seed, case, args.device, args.cache)
        row = Row("profile", args.method, _fixed({}))
        unlearned, _ = _run_row(row, env.original, env.forget, env.retain, args.params, env.heldout)
        for label, model in (
            ("original", env.original),
            (args.method, unlearned),
            ("retrain", env.retrained),
        ):
            print(f"\n{args.setting} {case}, {label} {json.dumps(args.params) if model is unlearned else ''}")
            print(head + "\n|" + "---|" * (len(QUANTILES) + 3))
            sets = (("D_f", env.forget), ("held-out", env.heldout), ("test", env.test), ("D_r", env.retain))
            for name, ds in sets:
                print(profile_line(name, losses(model, ds)))


if __name__ == "__main__":
    main()
