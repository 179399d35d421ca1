"""Where and in what precision a worker computes: CUDA when present, else the CPU."""

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
