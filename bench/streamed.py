"""Streamed data benchmark: a training set larger than the memory a job is allowed, unlearned with its
samples read from disk a batch at a time.

    .venv/bin/python -m bench.streamed --samples 200000 --cap-mib 2048

Generates (once, under --data) a labelled image set of --samples RGB 32x32 uint8 images with 10 learnable
classes, stored twice: as an `npy` folder (x.npy memory-mapped) and as WebDataset tar shards of PNG
files. Then, each in a fresh process, the job's data path runs as a worker runs it: load the registered
data (hash check included), split off a random 1% deletion, score the base model, run UGradSL+ for
--epochs over the retain set with --workers DataLoader readers, score the result. Rows:

- ``memory (npz-like)``: the same samples loaded whole as float32, with no cap: the baseline, and what the
  set would cost in memory.
- ``npy, capped`` and ``webdataset, capped``: streamed, inside a memory cgroup capped at --cap-mib.
- ``memory, capped``: the baseline under the same cap, to show that the cap binds (it is OOM-killed).

Every row runs in a memory cgroup of its own (capped or not). Peak memory is the cgroup's anonymous plus
shared memory (``total_rss + total_shmem`` of memory.stat: what the worker and its reader processes hold,
each page counted once, without the file pages the kernel can drop), sampled every 0.1 s; beside it the
cgroup's own peak, which also counts page cache. Samples/s counts retain and forget
samples through the unlearning step. The model is a freshly initialised ``small_cnn``: this measures the
data path's memory and speed, not unlearning quality (``bench/quality.py`` measures that).

The cap needs a writable cgroup-v1 memory controller (root in a container); without one the rows run
uncapped and the table says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
SHARD_SIZE = 10_000
DECL = {"layout": "HWC", "scale": 255}


# ---------------------------------------------------------------- data


def generate(data: Path, n: int, seed: int = 0) -> None:
    """n RGB 32x32 uint8 images in 10 classes (a class-coloured blob on noise), as an npy folder and as
    WebDataset shards of PNG files; plus a 10k test set as an npy folder."""
    import webdataset as wds  # type: ignore[import-untyped,unused-ignore]
    from PIL import Image

    for name, count, offset in (("train", n, 0), ("test", 10_000, 10**9)):
        folder = data / f"{name}-npy"
        if (folder / "ids.npy").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        x = np.lib.format.open_memmap(
            folder / "x.npy.tmp", mode="w+", dtype=np.uint8, shape=(count, 32, 32, 3)
        )
        y = np.arange(count) % 10
        rng = np.random.default_rng(seed + offset % 7)
        colours = rng.integers(0, 256, size=(10, 3))
        for start in range(0, count, 20_000):
            stop = min(start + 20_000, count)
            block = rng.integers(0, 96, size=(stop - start, 32, 32, 3))
            block[:, 8:24, 8:24, :] += colours[y[start:stop]][:, None, None, :] // 2
            x[start:stop] = np.clip(block, 0, 255)
        x.flush()
        del x
        os.replace(folder / "x.npy.tmp", folder / "x.npy")
        np.save(folder / "y.npy", y)
        np.save(folder / "ids.npy", np.asarray([f"{name}-{i:07d}" for i in range(count)], dtype=np.str_))
    shards = data / "train-wds"
    if not (shards / ".done").exists():
        shards.mkdir(exist_ok=True)
        x = np.load(data / "train-npy" / "x.npy", mmap_mode="r")
        y = np.load(data / "train-npy" / "y.npy")
        ids = np.load(data / "train-npy" / "ids.npy")
        for start in range(0, len(y), SHARD_SIZE):
            with wds.TarWriter(str(shards / f"train-{start // SHARD_SIZE:05d}.tar")) as sink:
                for i in range(start, min(start + SHARD_SIZE, len(y))):
                    png = io.BytesIO()
                    Image.fromarray(np.asarray(x[i])).save(png, format="PNG")
                    sink.write({"__key__": str(ids[i]), "png": png.getvalue(), "cls": str(int(y[i]))})
        (shards / ".done").touch()


# ---------------------------------------------------------------- one job's data path (child process)


def job(kind: str, uri: str, test_uri: str, epochs: float, workers: int) -> dict[str, float]:
    import torch

    from models.architectures import build_model
    from models.datasets import load_dataset
    from models.hooks import Hooks
    from models.metrics import evaluate
    from models.unlearning import run_method
    from service.core.dataset_ids import dataset_sha256
    from workers.datasets import DatasetRef, load_registered

    times: dict[str, float] = {}
    started = time.perf_counter()
    if kind == "memory":  # the in-memory baseline: what loading the whole set as float32 costs
        lazy = load_dataset("npy", uri, DECL)
        train = lazy.subset(torch.arange(len(lazy)))  # a view ...
        train = type(train)(train.x.read(torch.arange(len(lazy))), train.y, train.ids)  # ... materialised
    else:
        decl = DECL if kind == "npy" else None
        train = load_registered(DatasetRef(kind, uri, dataset_sha256(kind, uri), decl), workers=workers)
    test = load_dataset("npy", test_uri, DECL, workers=workers)
    times["load_s"] = time.perf_counter() - started
    gen = torch.Generator().manual_seed(0)
    forget_idx = torch.randperm(len(train), generator=gen)[: len(train) // 100]
    forget, retain = train.split_by_ids([train.ids[i] for i in forget_idx.tolist()])
    half = len(test) // 2
    calibration, scoring = test.subset(torch.arange(half)), test.subset(torch.arange(half, len(test)))
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=3, image_size=32, num_classes=10)
    t = time.perf_counter()
    evaluate(model, forget=forget, retain=retain, test=scoring)
    times["score_base_s"] = time.perf_counter() - t
    steps: list[int] = []

    class Counting(Hooks):
        def step(self, done: int, total: int) -> None:
            steps.append(done)
            super().step(done, total)

    params = {"epochs": epochs, "batch_size": 256}
    t = time.perf_counter()
    run_method("ugradsl_plus", model, forget, retain, params, Counting(), heldout=calibration)
    times["unlearn_s"] = time.perf_counter() - t
    times["samples_per_s"] = len(steps) * 2 * 256 / times["unlearn_s"]  # retain + forget batch per step
    t = time.perf_counter()
    metrics = evaluate(model, forget=forget, retain=retain, test=scoring)
    times["score_after_s"] = time.perf_counter() - t
    times["test_accuracy"] = float(metrics["test_accuracy"] or 0.0)
    times["samples"] = len(train)
    return times


# ---------------------------------------------------------------- the parent: caps, sampling, table


def make_cgroup(cap_mib: int | None) -> Path | None:
    """A fresh memory cgroup, capped at cap_mib (None: uncapped); None if cgroups cannot be made here."""
    group = CGROUP_ROOT / f"unlearn-bench-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        if cap_mib is not None:
            (group / "memory.limit_in_bytes").write_text(str(cap_mib * 2**20))
            memsw = group / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(cap_mib * 2**20))  # no swapping past the cap either
    except OSError:
        return None
    return group


def held_mib(group: Path) -> float:
    """Anonymous + shared memory charged to the cgroup (each page once), MiB."""
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return (int(stat.get("total_rss", 0)) + int(stat.get("total_shmem", 0))) / 2**20


def run_row(args: argparse.Namespace, kind: str, uri: Path, capped: bool) -> dict[str, object]:
    group = make_cgroup(args.cap_mib if capped else None)
    cmd = [sys.executable, "-m", "bench.streamed", "--child", kind, str(uri), str(args.data / "test-npy")]
    cmd += ["--epochs", str(args.epochs), "--workers", str(args.workers)]

    def enter() -> None:
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, preexec_fn=enter, text=True)  # noqa: PLW1509
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while group is not None and not done.wait(0.1):
            peak[0] = max(peak[0], held_mib(group))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    row: dict[str, object] = {"kind": kind, "capped": capped and group is not None, "wall_s": wall}
    if group is not None:
        row["peak_held_mib"] = peak[0]
        row["cgroup_peak_mib"] = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
        group.rmdir()
    if proc.returncode != 0:
        row["result"] = (
            f"killed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed ({proc.returncode})"
        )
        return row
    row.update(json.loads(out.strip().splitlines()[-1]))
    row["result"] = "ok"
    return row


COLUMNS = [
    ("peak_held_mib", "{:,.0f}"),
    ("cgroup_peak_mib", "{:,.0f}"),
    ("load_s", "{:,.1f}"),
    ("unlearn_s", "{:,.1f}"),
    ("samples_per_s", "{:,.0f}"),
    ("wall_s", "{:,.1f}"),
]


def _cell(row: dict[str, object], key: str, fmt: str) -> str:
    v = row.get(key)
    return fmt.format(v) if isinstance(v, int | float) else ""


def table(rows: list[dict[str, object]], args: argparse.Namespace, capped: bool) -> str:
    n = args.samples
    head = [
        f"Training set: {n:,} RGB 32x32 images (uint8 on disk: {n * 3072 / 2**20:,.0f} MiB; as float32 in "
        f"memory: {n * 3072 * 4 / 2**20:,.0f} MiB). Cap: {args.cap_mib} MiB"
        + ("" if capped else " (not applied: no writable memory cgroup here)")
        + f". UGradSL+ {args.epochs} epoch(s), batch 256, {args.workers} reader process(es), 1% deleted.",
        "",
        "| data | cap | result | peak anon+shm (MiB) | cgroup peak (MiB) | load s | score s | unlearn s "
        "| samples/s | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [_cell(r, k, fmt) for k, fmt in COLUMNS]
        score = float(r.get("score_base_s") or 0) + float(r.get("score_after_s") or 0)  # type: ignore[arg-type]
        cells.insert(3, f"{score:,.1f}" if r["result"] == "ok" else "")
        head.append(
            f"| {r['kind']} | {'yes' if r['capped'] else 'no'} | {r['result']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(head)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--cap-mib", type=int, default=2048)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(".cache/streamed"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/streamed.md"))
    parser.add_argument("--rows", nargs="+", default=["memory", "npy", "webdataset", "memory-capped"])
    parser.add_argument("--child", nargs=3, metavar=("KIND", "URI", "TEST_URI"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, uri, test_uri = args.child
        print(json.dumps(job(kind, uri, test_uri, args.epochs, args.workers)), flush=True)
        return
    args.data = args.data / f"n{args.samples}"
    generate(args.data, args.samples)
    uris = {
        "memory": args.data / "train-npy",
        "npy": args.data / "train-npy",
        "webdataset": args.data / "train-wds",
    }
    rows = []
    for name in args.rows:
        kind = name.removesuffix("-capped")
        capped = name != "memory"
        rows.append(run_row(args, kind, uris[kind], capped))
        print(rows[-1], flush=True)
    probe = make_cgroup(None)
    if probe is not None:
        probe.rmdir()
    text = table(rows, args, capped=probe is not None)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
