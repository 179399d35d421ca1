"""Where a job's time goes, against an exact retrain, and how fast the unlearning loop runs against a
bare training loop.

    .venv/bin/python bench/job_cost.py            # digits + Fashion-MNIST 10k, memorising (if installed)
    .venv/bin/python bench/job_cost.py --quick    # digits only
    .venv/bin/python bench/job_cost.py --with-60k # also Fashion-MNIST 60k, the quality bench's recipe

Part 1 runs real jobs through the worker code (database, lease, checkpoint, publish) on the embedded
default, three in a row per model (``--jobs``), each on the version the last one published: the steady
state of a model taking deletions. First the worker validates each model, as it does after a
registration, and passes its training rows through the front of its default run (its row: seconds, and
their share of the first job's retrain; ``--skip-validation``: not, as until stop 41). The worker keeps
the frozen front's outputs of the rows its jobs read (``workers/front_cache.py``); each job's row says
how many rows it passed through the front, how many it read back, and how many of those came from the
store on disk (``--fresh-process``: each job as if on another worker process of the host). Each job's
phases (load, score base, unlearn, score result, publish) are in seconds, and its unlearning step and the
whole job are shares of an exact retrain of the same model on that job's retain set with its registered
recipe, timed in the same run (the baseline row). The process is set up first as a worker sets itself
up (``models.process.warm_up``); the first job may still pay first passes (thread pools).
Part 2 times UGradSL+ steps against plain SGD steps of the same model on the same data
(same samples per step: B_r + B_f vs one batch of 2B). The tables go to stdout and bench/results/job_cost.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import SETTINGS  # noqa: E402
from models.architectures import build_model  # noqa: E402
from models.datasets import SampleDataset, load_dataset, load_digits_split  # noqa: E402
from models.process import warm_up as warm_torch  # noqa: E402
from models.training import DIGITS_RECIPE, TrainRecipe, train  # noqa: E402
from models.unlearning import run_method  # noqa: E402
from models.unlearning.params import parse_params, with_recipe  # noqa: E402
from service.core import deletions  # noqa: E402
from service.core.db import migrate  # noqa: E402
from service.core.db.engine import session_scope  # noqa: E402
from service.core.db.tables import Job, Model  # noqa: E402
from service.core.keys import create_key  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.states import ModelStatus  # noqa: E402
from workers import front_cache  # noqa: E402
from workers.demo import register_local_model  # noqa: E402
from workers.orchestrate import process_model  # noqa: E402
from workers.runner import split  # noqa: E402
from workers.validate import validate_model  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "bench" / "results" / "job_cost.md"
PHASES = (  # (column, the job's timing keys summed into it)
    ("load", ("load",)),
    ("score base", ("evaluate_base",)),
    ("unlearn", ("unlearn:",)),
    ("score result", ("evaluate:",)),
    ("publish", ("publish",)),
)


def setup_model(
    settings: Settings,
    name: str,
    arch: str,
    kwargs: dict,
    train_ds: SampleDataset,
    test_ds: SampleDataset,
    recipe: TrainRecipe,
    models: Path | None = None,
) -> str:
    """Train the model (or, with ``models``, load the one an earlier run trained and kept there) and
    register it."""
    model = build_model(arch, **kwargs)
    kept = models / f"{name}.safetensors" if models is not None else None
    if kept is not None and kept.exists():
        load_model(model, kept)
    else:
        train(model, train_ds, recipe)
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, kept)
    register_local_model(
        settings,
        tenant="bench",
        name=name,
        architecture=arch,
        arch_kwargs=kwargs,
        model=model,
        train_ds=train_ds,
        test_ds=test_ds,
        recipe=recipe,
        gates={},
        actor="bench",
    )
    with session_scope(settings.resolved_database_url) as s:
        return s.scalars(select(Model.id).where(Model.tenant == "bench", Model.name == name)).one()


def run_job(settings: Settings, model_id: str, ids: list[str], reason: str = "erasure") -> dict:
    url = settings.resolved_database_url
    with session_scope(url) as s:
        key, _ = create_key(s, tenant="bench", scopes=["deletion:write"])
        model = s.get_one(Model, model_id)
        deletions.submit(
            s, model=model, key=key, sample_ids=ids, reference=None, max_ids=10**6, reason=reason
        )
    started = time.perf_counter()
    process_model(settings, model_id)
    wall = time.perf_counter() - started
    with session_scope(url) as s:
        job = s.query(Job).filter(Job.model_id == model_id).order_by(Job.created_at.desc()).first()
        assert job is not None and job.state == "completed", job and job.error
        t = job.metrics["timings"]
        phases = {col: sum(v for k, v in t.items() if k.startswith(keys)) for col, keys in PHASES}
        front = job.metrics["attempts"][-1].get("front_rows", {})
        return {
            "wall": wall,
            **phases,
            "forget": len(ids),
            # rows passed through the frozen front, and rows an earlier job had (workers/front_cache.py)
            "front": f"{front['computed']:,} / {front['kept']:,} / {front['from_store']:,}" if front else "",
            # kept: the base version's test pass was read back from its publish (workers/kept_scores.py)
            "base_test": job.metrics["data"].get("base_test_scores", "scored"),
            # training rows of the base read back from the job (or validation) that scored the version
            # (workers/kept_rows.py), of all it scored
            "base_rows": job.metrics["data"].get("base_train_rows", {"kept": 0, "scored": 0}),
        }


def validate(settings: Settings, model_id: str) -> dict:
    """Validate the model as a worker does after its registration (``register_local_model`` marks it
    ready itself): v1 scored, and the training rows passed through the front of its default run and kept
    in this process (``workers.validate.warm_front``), where its first job reads them back."""
    with session_scope(settings.resolved_database_url) as s:
        s.get_one(Model, model_id).status = ModelStatus.VALIDATING
    cache = front_cache.feature_cache(settings)
    before = cache.stats.computed if cache is not None else 0
    started = time.perf_counter()
    assert validate_model(settings, model_id) == ModelStatus.READY
    computed = cache.stats.computed - before if cache is not None else 0
    return {"wall": time.perf_counter() - started, "front": f"{computed:,} / 0 / 0"}


def time_retrain(
    arch: str, kwargs: dict, train_ds: SampleDataset, forgotten: set[str], recipe: TrainRecipe, device: str
) -> float:
    """Seconds of an exact retrain on D_r = the training set minus ``forgotten``, with the registered
    recipe: the method a job would run for `retrain`, on the same device."""
    forget, retain = split(train_ds, sorted(forgotten), set())
    params = parse_params("retrain", with_recipe("retrain", {}, recipe.to_dict()))
    model = build_model(arch, **kwargs).to(device)
    started = time.perf_counter()
    run_method("retrain", model, forget, retain, params)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def loop_throughput(
    model: torch.nn.Module, train_ds: SampleDataset, test_ds: SampleDataset, batch: int, steps: int
) -> tuple[float, float]:
    """samples/s of UGradSL+ steps vs plain SGD steps over the same number of samples per step."""
    device = next(model.parameters()).device
    ids = random.Random(0).sample(train_ds.ids, len(train_ds) // 10)
    forget, retain = train_ds.split_by_ids(ids)
    epochs = steps * batch / len(retain)
    m = copy.deepcopy(model)
    warm_up, timed = ({"epochs": e, "batch_size": batch} for e in (epochs / 10, epochs))
    run_method("ugradsl_plus", m, forget, retain, warm_up, heldout=test_ds)
    t0 = time.perf_counter()
    run_method("ugradsl_plus", m, forget, retain, timed, heldout=test_ds)
    if device.type == "cuda":
        torch.cuda.synchronize()
    unlearn = steps * 2 * batch / (time.perf_counter() - t0)

    m = copy.deepcopy(model).train()
    x, y = retain.x.to(device), retain.y.to(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def bare(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(len(x), (2 * batch,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()

    bare(max(steps // 10, 1))
    t0 = time.perf_counter()
    bare(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return unlearn, steps * 2 * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument(
        "--with-60k",
        action="store_true",
        help="also Fashion-MNIST 60k with a 1-epoch recipe: how phases scale with the data (its retrain is "
        "one epoch, so its shares of retrain say nothing about the goal)",
    )
    ap.add_argument(
        "--params",
        type=json.loads,
        default={},
        help="default UGradSL+ params of the models, as JSON ({} = the defaults)",
    )
    ap.add_argument(
        "--jobs", type=int, default=3, help="deletions in a row per model, each on the last's version"
    )
    ap.add_argument(
        "--skip-validation",
        action="store_true",
        help="run the jobs on the model as registered, without a worker's validation: its first job "
        "computes the front's outputs itself (stop 41's table)",
    )
    ap.add_argument(
        "--fresh-process",
        action="store_true",
        help="drop this process's kept front rows before each job, as if it landed on another worker "
        "process of the host: its rows come from the store on disk (UNLEARN_FEATURE_STORE_BYTES) or the "
        "front",
    )
    ap.add_argument(
        "--store-bytes", type=int, default=None, help="UNLEARN_FEATURE_STORE_BYTES (0: no store on disk)"
    )
    ap.add_argument("--skip", nargs="*", default=[], help="models to leave out: digits, fashion_mem, fashion")
    ap.add_argument(
        "--models",
        type=Path,
        default=None,
        help="keep each trained model in this folder, and load it from there in a later run: two runs (of "
        "two commits, say) then time the same jobs on the same weights, which a model trained anew does "
        "not give (its deletions are sized by how much it memorised)",
    )
    ap.add_argument(
        "--reason",
        default="erasure",
        choices=("erasure", "mislabeled"),
        help="the deletion requests' reason: mislabeled flags every deleted sample, and the job looks up "
        "their neighbours (these training sets' labels are right: the cost of a flag that finds little)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    warm_torch()  # as a worker does when it starts taking tasks (workers/celery_app.py)
    var = Path(tempfile.mkdtemp(prefix="unlearn-jobcost-"))
    store = {} if args.store_bytes is None else {"UNLEARN_FEATURE_STORE_BYTES": args.store_bytes}
    settings = Settings(UNLEARN_VAR_DIR=str(var), UNLEARN_HEARTBEAT_SECONDS=1.0, **store)  # type: ignore[call-arg]
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    cases = []
    tr, te = load_digits_split()
    kw = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    cases.append(("digits / small_cnn(8x8)", "digits", kw, tr, te, DIGITS_RECIPE, "1 epoch"))
    if not args.quick and FASHION.exists():
        # The quality bench's memorising Fashion-MNIST setting: the shares of retrain the goals are set on.
        mem = SETTINGS["fashion_mem"]
        mtr, mte, _ = mem.load()
        label = "fashion-mnist 10k / small_cnn(28x28), memorising"
        cases.append((label, "fashion_mem", mem.arch_kwargs, mtr, mte, mem.recipe, "30 epochs"))
    if args.with_60k and FASHION.exists():
        # The quality bench's 60k setting and recipe: its shares of retrain are the goals' (the test set
        # whole: the worker halves it, as for any model registered without held-out data)
        full = SETTINGS["fashion_full"]
        ftr, fte = (
            load_dataset("fashion_mnist", f"{FASHION}:train"),
            load_dataset("fashion_mnist", f"{FASHION}:test"),
        )
        label = "fashion-mnist 60k / small_cnn(28x28)"
        cases.append((label, "fashion", full.arch_kwargs, ftr, fte, full.recipe, "5 epochs"))

    cases = [c for c in cases if c[1] not in args.skip]
    rows, loops = [], []
    for label, name, kw_, tr_, te_, recipe, _note in cases:
        model_id = setup_model(settings, name, "small_cnn", kw_, tr_, te_, recipe, args.models)
        if args.params:
            parse_params("ugradsl_plus", args.params)  # a bad field fails here, not in the job
            with session_scope(settings.resolved_database_url) as s:
                s.get_one(Model, model_id).default_params = args.params
        if not args.skip_validation:
            rows.append((label, "", "validation", validate(settings, model_id), None, len(tr_)))
        rng = random.Random(1)
        gone: set[str] = set()
        for number in range(1, args.jobs + 1):
            ids = rng.sample(sorted(set(tr_.ids) - gone), len(tr_) // 10)
            gone |= set(ids)
            if args.fresh_process:
                front_cache._cache = None  # another worker process: nothing kept in memory
            job = run_job(settings, model_id, ids, args.reason)
            retrain = time_retrain("small_cnn", kw_, tr_, gone, recipe, device)
            recipe_note = f"recipe: {recipe.epochs} epochs, batch {recipe.batch_size}"
            rows.append((label, recipe_note, f"v{number}", job, retrain, len(tr_) - len(gone)))
        model = train(
            build_model("small_cnn", **kw_),
            tr_.subset(torch.arange(min(len(tr_), 2048))),
            TrainRecipe(epochs=1),
        ).to(device)
        loops.append((label, *loop_throughput(model, tr_, te_, batch=64, steps=200)))

    out: list[str] = []
    params_note = json.dumps(args.params) if args.params else "defaults"
    out.append(
        f"## Job phases against an exact retrain (seconds; device {device}; a random 10% forget set per "
        f"job, {args.jobs} jobs in a row; reason {args.reason}; UGradSL+ params {params_note}; "
        f"front rows: computed / kept from earlier jobs / of those, read from the store on disk"
        f"{f'; models trained once and kept in {args.models}' if args.models else ''}"
        f"{'; every job on a fresh process' if args.fresh_process else ''})\n"
    )
    cols = [c for c, _ in PHASES]
    out.append(
        "| model | job | forget | retain | front rows | "
        + " | ".join(cols)
        + " | job wall | unlearn / retrain | job / retrain |"
    )
    out.append("|---|---|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|---:|")
    for label, recipe_note, version, r, retrain, n_retain in rows:
        if retrain is None:  # validation, once per model: its share of the first job's retrain
            later = next(row[4] for row in rows if row[0] == label and row[4] is not None)
            out.append(
                f"| {label} | validation by the worker (once per model: v1 scored, the front's outputs "
                f"kept) | | {n_retain} | {r['front']} | "
                + " | ".join([""] * len(cols))
                + f" | {r['wall']:.2f} | | {r['wall'] / later:.1%} |"
            )
            continue
        base = ["", "", "", f"{retrain:.2f}", "", "", "", "100%", "100%"]
        out.append(
            f"| {label} | retrain, the baseline ({recipe_note}) | | {n_retain} | " + " | ".join(base) + " |"
        )
        job = [f"{r[c]:.2f}" for c in cols] + [f"{r['wall']:.2f}", f"{r['unlearn'] / retrain:.1%}"]
        out.append(
            f"| {label} | job on {version} (base test pass {r['base_test']}, training rows kept "
            f"{r['base_rows']['kept']:,} of {r['base_rows']['kept'] + r['base_rows']['scored']:,}) | "
            f"{r['forget']} | {n_retain} | "
            f"{r['front']} | " + " | ".join([*job, f"{r['wall'] / retrain:.1%}"]) + " |"
        )
    out.append(
        "\n## Per model, over its jobs (median, and the range: one job's share moves by a third or more "
        "between runs on this kind of machine)\n"
    )
    out.append("| model | jobs | score base (s) | unlearn / retrain | job / retrain |")
    out.append("|---|---:|---:|---:|---:|")
    for label in dict.fromkeys(row[0] for row in rows):
        jobs = [(r, retrain) for lab, _, _, r, retrain, _ in rows if lab == label and retrain is not None]
        shares = {
            "score base": [r["score base"] for r, _ in jobs],
            "unlearn": [r["unlearn"] / t for r, t in jobs],
            "job": [r["wall"] / t for r, t in jobs],
        }
        cells = [
            f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
            if k == "score base"
            else f"{statistics.median(v):.1%} ({min(v):.1%}-{max(v):.1%})"
            for k, v in shares.items()
        ]
        out.append(f"| {label} | {len(jobs)} | " + " | ".join(cells) + " |")
    out.append("\n## Unlearning loop vs bare training loop (samples/s, batch 64+64 vs 128, 200 steps)\n")
    out.append("| model | UGradSL+ samples/s | bare SGD samples/s | ratio |")
    out.append("|---|---:|---:|---:|")
    for label, u, b in loops:
        out.append(f"| {label} | {u:,.0f} | {b:,.0f} | {u / b:.0%} |")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    flags = " --quick" if args.quick else " --with-60k" if args.with_60k else ""
    flags += f" --jobs {args.jobs}" + (" --skip-validation" if args.skip_validation else "")
    flags += f" --params '{json.dumps(args.params)}'" if args.params else ""
    flags += " --fresh-process" if args.fresh_process else ""
    flags += f" --store-bytes {args.store_bytes}" if args.store_bytes is not None else ""
    flags += f" --skip {' '.join(args.skip)}" if args.skip else ""
    args.out.write_text(f"# Job cost (bench/job_cost.py{flags})\n\n" + text)


if __name__ == "__main__":
    main()
