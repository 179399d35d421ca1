"""Several workers on one CPU host: deletions served with torch's default threads (every core, per
process) against ``UNLEARN_TORCH_THREADS`` = cores / workers.

    .venv/bin/python bench/threads.py [--workers 2] [--jobs 5]

Each worker is a process of its own, as ``docker compose up --scale worker=N`` runs them: it registers and
validates the digits model in its own embedded state directory, then serves ``--jobs`` deletions of 5% of
the training set one after another, through the worker's job code (``workers.orchestrate``), all workers
at once. The baseline row is one worker alone at the default. The table goes to stdout and
bench/results/threads.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "threads.md"


def child(threads: int, jobs: int) -> dict:
    """One worker process: register, validate, then serve ``jobs`` deletions; their walls in seconds."""
    import bench.job_cost as jc
    from models.datasets import load_digits_split
    from models.process import warm_up
    from models.training import DIGITS_RECIPE
    from service.core.db import migrate
    from service.core.settings import Settings
    from workers.device import cpu_threads

    settings = Settings(  # type: ignore[call-arg]
        UNLEARN_VAR_DIR=tempfile.mkdtemp(prefix="unlearn-threads-"), UNLEARN_TORCH_THREADS=threads
    )
    in_effect = cpu_threads(settings.torch_threads)  # as the worker applies it
    warm_up()
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    train, test = load_digits_split()
    kw = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    model_id = jc.setup_model(settings, "digits", "small_cnn", kw, train, test, DIGITS_RECIPE)
    jc.validate(settings, model_id)
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts its jobs at once
    rng, gone, walls = random.Random(1), set(), []
    for _ in range(jobs):
        ids = rng.sample(sorted(set(train.ids) - gone), len(train) // 20)
        gone |= set(ids)
        walls.append(jc.run_job(settings, model_id, ids)["wall"])
    return {"threads": in_effect, "walls": walls}


def run(workers: int, threads: int, jobs: int) -> list[dict]:
    """``workers`` worker processes at ``threads`` each (0: torch's default), their jobs started together
    once all are ready; what each reported."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(threads), "--jobs", str(jobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(workers)
    ]
    for p in procs:
        assert p.stdout is not None
        while p.stdout.readline().strip() != "ready":
            pass
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.jobs)))
        return
    cores = os.cpu_count() or 1
    rows = [
        ("1 worker alone, torch's default (the baseline)", 1, 0),
        (f"{args.workers} workers, torch's default", args.workers, 0),
        (f"{args.workers} workers, UNLEARN_TORCH_THREADS={max(1, cores // args.workers)}", args.workers,
         max(1, cores // args.workers)),
        (f"{args.workers} workers, torch's default (again: the noise)", args.workers, 0),
    ]  # fmt: skip
    out = [
        f"## {args.jobs} digits deletions (5% each) per worker, all workers at once ({cores} cores)\n",
        "| workers | threads each | job wall (s), each job | deletions / s, all workers |",
        "|---|---:|---|---:|",
    ]
    for label, workers, threads in rows:
        reports = run(workers, threads, args.jobs)
        walls = sorted(w for r in reports for w in r["walls"])
        done = sum(len(r["walls"]) for r in reports)
        wall = max(sum(r["walls"]) for r in reports)  # until the last worker's last deletion ended
        out.append(
            f"| {label} | {reports[0]['threads']} | {walls[0]:.2f}-{walls[-1]:.2f} "
            f"(median {walls[len(walls) // 2]:.2f}) | {done / wall:.1f} |"
        )
        print(out[-1], flush=True)
    command = f"python bench/threads.py --workers {args.workers} --jobs {args.jobs}"
    text = "\n".join(out) + f"\n\nCommand: `{command}`\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
