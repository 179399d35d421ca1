"""What a process's one-time settings (``models.process``) do to a deletion's run time.

    .venv/bin/python -m bench.process_warm_up [--setting fashion_full] [--runs 3] [--cache .cache/bench]

Each mode runs in a fresh interpreter, on the quality bench's original for model seed 1 and its random 10%
deletion (trained, or read from --cache): the default UGradSL+ run, ``--runs`` times in a row, each timed.
Modes: nothing set up (the first run pays torch's one-time imports); ``warm_up``'s imports only; and the
whole ``warm_up`` (imports, and glibc's heap kept for reuse). The table goes to stdout and
bench/results/process_warm_up.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

MODES = {
    "nothing set up": "",
    "imports only": "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)",
    "warm_up (imports + heap reuse)": "from models.process import warm_up; warm_up()",
}

CHILD = """
import copy, json, sys, time
from pathlib import Path
import torch
torch.set_num_threads({threads})
from bench.quality import SETTINGS, forget_split, trained_original
from models.unlearning import run_method
run = trained_original(SETTINGS[{setting!r}], 1, "cpu", {cache!r} and Path({cache!r}))
forget, retain = forget_split(run.train, "random", 1)
{setup}
times = []
for _ in range({runs}):
    model = copy.deepcopy(run.model)
    start = time.perf_counter()
    run_method("ugradsl_plus", model, forget, retain, {{}}, heldout=run.reference)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="fashion_full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=".cache/bench")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = []
    for mode, setup in [*MODES.items(), *MODES.items()]:  # every mode twice: the noise between runs
        code = CHILD.format(threads=args.threads, setting=args.setting, cache=args.cache, setup=setup,
                            runs=args.runs)  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((mode, times))
        print(mode, " ".join(f"{t:.2f}" for t in times), flush=True)
    header = "| process | " + " | ".join(f"run {i + 1} (s)" for i in range(args.runs)) + " |"
    lines = [header, "|---" * (args.runs + 1) + "|"]
    lines += [f"| {mode} | " + " | ".join(f"{t:.2f}" for t in times) + " |" for mode, times in rows]
    cmd = "python -m bench.process_warm_up " + " ".join(sys.argv[1:])
    lines += ["", f"Command: `{cmd}`; {(time.perf_counter() - start) / 60:.1f} min on {platform.machine()}, "
              f"{args.threads} threads; {args.setting}, model seed 1, random 10%, the default UGradSL+ run; "
              "each mode in a fresh interpreter, twice."]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "process_warm_up.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
