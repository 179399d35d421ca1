"""A frozen front's outputs kept on disk, shared by every process that reads the same directory (ours).

Why: ``feature_cache.FeatureCache`` keeps a front's rows in the process that computed them, so a deletion
that lands on another worker process (a Celery pool has several; a host may run several workers) passed
every row through the front again: on the 60k Fashion-MNIST model, 45% of the unlearning step. Here each
chunk of rows a process computes is also written to disk, and a process that misses rows in memory first
reads the chunks other processes wrote for the same front and source.

Integrity: a chunk is one safetensors file written to a temporary name and renamed into place, so a
reader never sees half a file; its header holds the SHA-256 of every tensor's bytes, checked at every
read. Rows that read wrong would be unlearned and then scored through the same wrong rows, and nothing
downstream would notice, so a chunk that fails the check (or cannot be parsed) is deleted and its rows
are computed again. The directory is bounded by ``max_bytes``: after each write the least recently read
or written chunks go first.

Safe across processes without locks: names are unique per write, a rename is atomic, a deleted file is a
miss, and two processes that computed the same rows each write a chunk (a reader skips a chunk whose rows
it already holds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Chunk:
    """Rows of one front's output: ``ids[i]``'s row is row ``i`` of each value (name "" for a front that
    gives one tensor)."""

    name: str  # the file's name, unique: a process remembers which chunks it holds
    ids: list[str]
    values: dict[str, torch.Tensor]


class FeatureStore:
    """Chunks of front outputs under ``root/<key>/``, within ``max_bytes`` over all keys."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def chunks(self, key: str, skip: set[str]) -> list[str]:
        """Names of the key's chunks on disk, less ``skip`` (those the caller holds already)."""
        folder = self._folder(key)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.glob(f"*{SUFFIX}") if p.name not in skip)

    def read(self, key: str, name: str, wanted: set[str], folder: Path | None = None) -> Chunk | None:
        """A chunk holding any of the ``wanted`` rows, its checksum checked; None where it holds none of
        them (its header alone is read), is gone, or fails the check (the file is then deleted)."""
        path = (folder or self._folder(key)) / name
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            ids = json.loads(meta["ids"])
            if wanted.isdisjoint(ids):
                return None  # left for a run that wants its rows
            tensors = load_file(str(path))
            expected, layouts = meta["sha256"], json.loads(meta["layouts"])
        except FileNotFoundError:
            return None  # evicted by another process since it was listed
        except Exception as exc:  # noqa: BLE001 - a file another process or the disk mangled: a miss
            self._drop(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if checksum(tensors) != expected or any(len(t) != len(ids) for t in tensors.values()):
            self._drop(path, "checksum mismatch")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # read now: the last to be evicted
        values = {k.removeprefix("v:"): _laid_out(t, layouts.get(k)) for k, t in tensors.items()}
        return Chunk(name, ids, values)

    def write(self, key: str, ids: list[str], values: dict[str, torch.Tensor]) -> str | None:
        """Write a chunk and evict down to ``max_bytes``; its name, or None where it was not written (too
        big for the store, or the disk refused: the rows stay in the caller's memory either way)."""
        size = sum(t.element_size() * t.numel() for t in values.values())
        if size > self.max_bytes or not ids:
            return None
        return self._write(self._folder(key), ids, values)

    def _write(
        self, folder: Path, ids: list[str], values: dict[str, torch.Tensor], evict: bool = True
    ) -> str | None:
        name = f"{uuid.uuid4().hex}{SUFFIX}"
        tmp = folder / f".{name}.tmp"
        tensors = {f"v:{k}": v.detach().cpu().contiguous() for k, v in values.items()}
        meta = {
            "ids": json.dumps(ids),
            "sha256": checksum(tensors),
            "layouts": json.dumps({f"v:{k}": _layout(v) for k, v in values.items()}),
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, folder / name)
        except (OSError, SafetensorError) as exc:  # safetensors' own error for a full disk (a probe)
            log.warning("front rows not written to %s: %s", folder, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        if evict:
            self._evict()
        return name

    def purge(self, ids: set[str]) -> int:
        """Rewrite every chunk holding any of ``ids`` without those rows (rows a deletion forgot: their
        front outputs are theirs too, and a probe found an erased subject's still on disk, named in the
        header); returns how many rows left. A chunk of another model or dataset that shares an ID string
        loses that row too: it is computed again if a run wants it. Only the header is read of a chunk
        that holds none.

        One purge at a time over the store (a lock file): two at once each rewrote the same chunk without
        only their own rows, and both kept the other's (probes). A chunk is unlinked before its kept rows
        are written: a purge killed between the two loses cache rows, never keeps forgotten ones."""
        dropped = 0
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".purge.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _, _, path in self._files():
                wanted = self.read(path.parent.name, path.name, ids, folder=path.parent)
                if wanted is None:
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue  # evicted since it was read
                keep = [i for i, sid in enumerate(wanted.ids) if sid not in ids]
                if keep:
                    rows = torch.tensor(keep)
                    values = {k: v[rows] for k, v in wanted.values.items()}
                    self._write(path.parent, [wanted.ids[i] for i in keep], values, evict=False)
                dropped += len(wanted.ids) - len(keep)
        return dropped

    def nbytes(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        """(last used, size, path) of every chunk, oldest first."""
        found = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                found.append((st.st_mtime, st.st_size, path))
        return sorted(found)

    def _evict(self) -> None:
        """Least recently used chunks first, down to ``max_bytes``; and temporary files an hour old, which
        a process killed mid-write left (not chunks: they were never counted, nor swept)."""
        stale = time.time() - 3600
        for leftover in [*self.root.glob("*/.*.tmp"), *self.root.glob("*/.tmp*")]:
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
        files = self._files()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size

    def _folder(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32]

    @staticmethod
    def _drop(path: Path, why: str) -> None:
        log.warning("front rows in %s dropped: %s", path, why)
        with contextlib.suppress(OSError):
            path.unlink()


BLOCK = 64 * 2**20  # bytes per hashed block: blocks are hashed in parallel (hashlib releases the GIL)


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and the SHA-256 of each 64 MiB block of their bytes,
    in name order. Why blocks: a chunk of the 60k Fashion-MNIST model's rows is 0.75 GB, and one SHA-256
    pass over it took 0.48 s of a 0.53 s read; blocks are hashed on every core at once."""
    views = []
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().data  # the buffer itself: no copy
        views.append(
            (f"{k}:{t.dtype}:{tuple(t.shape)}", [raw[i : i + BLOCK] for i in range(0, len(raw), BLOCK)])
        )
    blocks = [b for _, bs in views for b in bs]
    with ThreadPoolExecutor(max_workers=min(len(blocks), os.cpu_count() or 1) or 1) as pool:
        digests = iter(list(pool.map(lambda b: hashlib.sha256(b).digest(), blocks)))
    h = hashlib.sha256()
    for name, bs in views:
        h.update(name.encode())
        for _ in bs:
            h.update(next(digests))
    return h.hexdigest()


def _layout(t: torch.Tensor) -> str:
    """How a value was laid out in memory: a channels-last front output is read back channels-last, so the
    last layers compute on it exactly as on the rows the front gave."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous"


def _laid_out(t: torch.Tensor, layout: str | None) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t
