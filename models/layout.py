"""Memory layout and batch size for inference on CPU.

oneDNN runs convolutions much faster on channels-last weights than on PyTorch's default layout: measured
on this repo's 2-core CPU machine with small_cnn 28x28 and one thread, inference over 10k images took
3.5 s at batch 1024 in the default layout and 0.8 s channels-last at batch 256; a training epoch ~15%
less. The layout is an implementation detail of a run, so the model goes back to the default layout on
exit: safetensors only writes contiguous tensors, and a caller's model should come back as it went in.

The batch size of an inference pass matters as much on a CPU: a batch whose activations outgrow the
cache is read from memory at every layer. ``cpu_batch`` sizes it by the model's largest activation per
row (bench/feature_batch.py has the table).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from models import batches as B
from models.batches import Inputs
from models.structure import remember, structure

# What one batch's largest activation may take on a CPU: a quarter of a 32 MiB L3 (this machine's), so the
# layer's input and output and the weights stay cached together. small_cnn 28x28 (100 KB per row at its
# first convolution) gets 83 rows: its front ran 3.8x as fast as at 512 (64 rows: 4.35x).
CPU_ACTIVATION_BYTES = 8 * 2**20
MIN_BATCH = 8  # below this, per-call overhead outweighs what the cache saves


@contextmanager
def cpu_channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with the model's 4-D weights channels-last when it sits on the CPU; restore on exit
    (exceptions included). A no-op on CUDA (not measured here), for models without 2-D convolutions or
    with 5-D tensors (channels-last is a 4-D layout), and when an enclosing block already converted the
    model (so nesting is free)."""
    convs = [p for p in model.parameters() if p.dim() == 4]
    has_5d = any(t.dim() == 5 for t in model.state_dict().values())
    converted_already = any(not p.is_contiguous() for p in convs)
    if not convs or convs[0].device.type != "cpu" or has_5d or converted_already:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def cpu_batch(model: nn.Module, x: Inputs, cap: int) -> int:
    """Rows per inference batch of ``model`` over inputs ``x``: ``cap`` off the CPU (a GPU is near its peak
    at a few hundred rows for the models here); on the CPU, as many rows as keep the largest activation
    within CPU_ACTIVATION_BYTES, between MIN_BATCH and ``cap``. Measured by one forward pass of one row,
    so it follows the model and the input size (a 28x28 and an 8x8 image differ 12x), not a constant."""
    device = next(model.parameters()).device
    if device.type != "cpu" or B.rows(x) == 0:
        return cap
    per_row = _per_row(model, B.to(B.window(x, 0, 1), device))
    return max(MIN_BATCH, min(cap, CPU_ACTIVATION_BYTES // max(per_row, 1)))


_PER_ROW: dict[tuple[str, str], int] = {}


def _per_row(model: nn.Module, row: Any) -> int:
    """``largest_activation`` for one row, kept per model structure (``models.structure``) and input
    shape: a job sizes the batches of several passes of models of one structure, and the pass that
    measures it took 14-17 ms for ResNet-18 (0.6-0.9 ms for small_cnn; ``bench/structure_cache.py``)."""
    tensors = sorted(row.items()) if isinstance(row, dict) else [("", row)]
    shapes = repr([(k, tuple(v.shape), v.dtype, v.device.type) for k, v in tensors])
    key = structure(model)
    return remember(_PER_ROW, (key, shapes) if key else None, lambda: largest_activation(model, row), 256)


@torch.no_grad()
def largest_activation(model: nn.Module, x: Any) -> int:
    """Bytes of the largest output of any of ``model``'s modules for input ``x`` (in eval mode)."""
    largest = 0

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        nonlocal largest
        largest = max(largest, _bytes(out))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return largest


def _bytes(out: Any) -> int:
    """Largest tensor in a module's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return max((_bytes(o) for o in out), default=0)
    return 0
