"""Losses of the unlearning methods."""

from __future__ import annotations

import torch


def smoothed_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, alpha: float | torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against ``y^α = (1 - α)·onehot(y) + α/K``, for ANY sign of α (α < 0 is negative label
    smoothing, which ``F.cross_entropy(label_smoothing=...)`` refuses):
    ``ℓ_α = (1 - α)·(-log p_y) + α·mean_k(-log p_k)``. ``alpha``: a scalar or a per-sample (B,) tensor."""
    logp = logits.log_softmax(-1)  # (B, K)
    nll = -logp.gather(1, y[:, None]).squeeze(1)  # (B,)
    uniform = -logp.mean(-1)  # (B,)
    a = torch.as_tensor(alpha, dtype=logp.dtype, device=logp.device).expand_as(nll)  # (B,)
    loss = (1 - a) * nll + a * uniform  # (B,)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
