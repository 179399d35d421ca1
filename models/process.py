"""Settings of the process a run lives in, made once: a worker calls ``warm_up`` when it starts taking
tasks, and the benches before they time a run, so neither a served deletion nor a timed row pays them.

Three costs that have nothing to do with the run sat inside a process's runs:

- **torch's one-time imports.** The first ``torch.optim`` optimizer a process constructs imports
  ``torch._dynamo`` (about 900 modules, sympy among them: 0.94 s here, torch 2.14). It made the first
  deletion in a process 1-2 s slower than the next (a 60k random 10% run: 4.05 s first, 2.3-2.6 s after).
- **scikit-learn's import.** The membership attack (``models.metrics``) imports ``sklearn.svm`` when it
  first fits, and a worker's validation never fits it (nothing is forgotten yet), so a model's first job
  paid 0.8-0.9 s for that import inside its base scoring (on the 60k model 1.0 s of attack against 0.07 s
  in every later job of the process).
- **Fresh pages for every large tensor.** glibc serves allocations above its mmap threshold (128 KiB,
  rising only as far as the largest block freed so far) from new mappings, unmapped on free, and hands
  free heap above its trim threshold back to the kernel, so every activation of a batch that fits the
  CPU cache (``models.layout.cpu_batch``: up to 8 MiB) is page-faulted in anew, at every layer of every
  batch, once what the process freed before has pushed the thresholds where they fall between its
  blocks. Served from the heap instead (blocks up to 32 MiB, and
  64 MiB of free heap kept rather than returned), a 60k random 10% run took 2.6-2.9 s in five runs of six;
  with the imports paid but glibc as it was, 2.8-4.4 s, depending on the process
  (bench/results/process_warm_up.md). The cost is memory: up to 64 MiB freed by a run stays with the
  process for the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 64 * 2**20


def warm_up() -> None:
    """Pay torch's and scikit-learn's one-time imports and keep freed memory for reuse
    (``reuse_freed_memory``). Cheap after the first call."""
    reuse_freed_memory()
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    import sklearn.svm  # noqa: F401  # the membership attack's (models.metrics)


def reuse_freed_memory() -> bool:
    """Serve allocations up to ``MMAP_THRESHOLD`` from glibc's heap and keep ``TRIM_THRESHOLD`` of free
    heap; False where the C library is not glibc (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
