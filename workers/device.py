"""Where, in what precision and on how many CPU threads a worker computes: CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when a GPU is visible; anything else is a torch device string."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def precision(setting: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast for the unlearning loop (weights and optimiser state stay fp32, so no loss scaling
    is needed); metrics are always computed in fp32."""
    if setting == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timing covers the computation and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_threads(setting: int) -> int:
    """Set torch's CPU threads to ``setting`` (``UNLEARN_TORCH_THREADS``; 0 leaves torch's default, one
    per core) and return the number in effect, which a job records (``metrics.data.cpu_threads``).

    Why a setting: each worker process's torch takes every core by default, so N workers on one CPU host
    run N pools of that many threads, which spin waiting on each other. Two workers on 2 cores, five
    digits deletions each at once (``bench/threads.py``): a median job of 0.53-0.56 s and 2.7-3.2
    deletions a second with 2 threads each, 0.20 s and 9.1 a second with 1 (one worker alone: 0.12 s,
    8.0 a second). Set it to the host's cores divided by its workers."""
    if setting > 0 and torch.get_num_threads() != setting:
        torch.set_num_threads(setting)
    return torch.get_num_threads()
