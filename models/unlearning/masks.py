"""Masked updates (Dine, Furon, Faure: "Improving Unlearning with Model Updates Probably Aligned with
Gradients"): keep only the coordinates where the unlearning gradient g_U and the utility gradient g_C agree.

Masks are computed from gradients and applied three times per step (``masked_step``): to the gradient
before the optimiser sees it, to SGD's momentum buffer (a vetoed gradient must not be remembered and
released at a later step), and to the final update, after weight decay: a masked parameter is
bit-identical after the step (``apply_update_mask``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from models.training import StepClip

Tensors = Sequence[torch.Tensor]


def and_mask(g_u: torch.Tensor, g_c: torch.Tensor) -> torch.Tensor:
    """AND mask: 1 where the two gradients do not conflict (same sign; a zero conflicts with nothing), so
    the update lowers both losses to first order. This tie rule makes AND exactly PROB at p = 1/2 without
    noise (a zero gradient has agreement probability 1/2 there)."""
    return (g_u * g_c) >= 0


# Above this many degrees of freedom the normal is as good as Student's t for a mask decision.
NORMAL_DOF = 30


def student_t_cdf(t: torch.Tensor, dof: int) -> torch.Tensor:
    """P(T <= t) for Student's t with an integer number of degrees of freedom, from the finite series of
    Abramowitz & Stegun 26.7.3-4 (torch has no incomplete beta): with θ = atan(t / √ν), P(|T| <= t) is
    (2/π)(θ + sinθ Σ c_k cos^(2k-1)θ) for odd ν and sinθ Σ c_k cos^(2k)θ for even ν."""
    theta = torch.atan(t.abs() / math.sqrt(dof))
    sin, cos = torch.sin(theta), torch.cos(theta)
    if dof % 2:
        total, term = torch.zeros_like(t), cos.clone()
        for k in range(1, (dof - 1) // 2 + 1):  # cos, (2/3)cos³, (2·4)/(3·5)cos⁵, ...
            total = total + term
            term = term * cos * cos * (2 * k) / (2 * k + 1)
        inside = (2 / math.pi) * (theta + sin * total) if dof > 1 else (2 / math.pi) * theta
    else:
        total, term = torch.zeros_like(t), torch.ones_like(t)
        for k in range(1, dof // 2 + 1):  # 1, (1/2)cos², (1·3)/(2·4)cos⁴, ...
            total = total + term
            term = term * cos * cos * (2 * k - 1) / (2 * k)
        inside = sin * total
    return 0.5 + 0.5 * torch.sign(t) * inside


def positive_probability(mean: torch.Tensor, std_err: torch.Tensor, dof: int | None = None) -> torch.Tensor:
    """φ = P(true gradient > 0) from the mean ĝ and standard error s of a few micro-batch gradients:
    Φ(ĝ / s), or Student's t with `dof` degrees of freedom when the groups are few (s is then itself a
    noisy estimate; the normal would be overconfident). With s = 0 it is 1, 0 or 1/2 by the sign of ĝ
    (the noise-free limit)."""
    z = torch.where(
        std_err > 0,
        mean / std_err.clamp_min(torch.finfo(mean.dtype).tiny),
        torch.sign(mean) * math.inf,
    )
    z = torch.nan_to_num(z, nan=0.0)  # 0 * inf from sign(0)
    if dof is not None and 1 <= dof <= NORMAL_DOF:
        return torch.where(
            z.isinf(), (torch.sign(z) + 1) / 2, student_t_cdf(z.nan_to_num(posinf=0.0, neginf=0.0), dof)
        )
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def agreement_probability(
    mean_u: torch.Tensor,
    se_u: torch.Tensor,
    mean_c: torch.Tensor,
    se_c: torch.Tensor,
    dof: int | None = None,
) -> torch.Tensor:
    """π = φ_U·φ_C + (1 - φ_U)(1 - φ_C) = 1/2 + 1/2 (2φ_U - 1)(2φ_C - 1)."""
    phi_u, phi_c = positive_probability(mean_u, se_u, dof), positive_probability(mean_c, se_c, dof)
    return 0.5 + 0.5 * (2 * phi_u - 1) * (2 * phi_c - 1)


def prob_mask(
    mean_u: torch.Tensor,
    se_u: torch.Tensor,
    mean_c: torch.Tensor,
    se_c: torch.Tensor,
    p: float,
    dof: int | None = None,
) -> torch.Tensor:
    """PROB mask: keep i iff π_i >= p (the paper's figures use p = 0.45)."""
    return agreement_probability(mean_u, se_u, mean_c, se_c, dof) >= p


def focus_weights(
    mean_u: torch.Tensor,
    se_u: torch.Tensor,
    mean_c: torch.Tensor,
    se_c: torch.Tensor,
    p: float,
    dof: int | None = None,
) -> torch.Tensor:
    """Focus vector F (**reconstruction**, not the paper's published formula): f_i = (2π_i - 1)_+ on the
    coordinates PROB keeps, 0 elsewhere. ``apply_update_mask`` rescales it so ‖f ⊙ u‖ = ‖m ⊙ u‖."""
    pi = agreement_probability(mean_u, se_u, mean_c, se_c, dof)
    return torch.where(pi >= p, (2 * pi - 1).clamp_min(0), torch.zeros_like(pi))


def mean_and_stderr(total: torch.Tensor, total_sq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of the mean from running sums over ``n`` (micro-batch) gradients."""
    mean = total / n
    var = ((total_sq - n * mean * mean) / max(n - 1, 1)).clamp_min(0)  # unbiased sample variance
    return mean, (var / n).sqrt()


@torch.no_grad()
def apply_update_mask(params: Tensors, before: Tensors, weights: Tensors, *, binary: bool) -> None:
    """Turn the optimiser's step θ_before -> θ into θ_before + w ⊙ (θ - θ_before).

    ``binary``: w is a 0/1 mask and masked coordinates are restored exactly (``torch.where``: bit-identical,
    whatever momentum and weight decay did). Otherwise w is the focus vector, rescaled globally so that
    ‖w ⊙ Δ‖ = ‖1[w > 0] ⊙ Δ‖."""
    if binary:
        for p, b, m in zip(params, before, weights, strict=True):
            p.copy_(torch.where(m.bool(), p, b))
        return
    deltas = [p - b for p, b in zip(params, before, strict=True)]
    kept = (
        torch.stack([((w > 0) * d).pow(2).sum() for w, d in zip(weights, deltas, strict=True)]).sum().sqrt()
    )
    focused = torch.stack([(w * d).pow(2).sum() for w, d in zip(weights, deltas, strict=True)]).sum().sqrt()
    scale = torch.where(focused > 0, kept / focused.clamp_min(1e-30), torch.zeros_like(kept))
    for p, b, w, d in zip(params, before, weights, deltas, strict=True):
        p.copy_(torch.where(w > 0, b + scale * w * d, b))


@torch.no_grad()
def masked_step(
    opt: torch.optim.Optimizer,
    params: Tensors,
    weights: Tensors,
    *,
    binary: bool,
    clip: float | StepClip = 0.0,
) -> None:
    """One optimiser step in which coordinates with weight 0 take no part: their gradient is zeroed before
    the step (then the kept gradient is clipped: to norm ``clip`` if > 0, or by a run's ``StepClip``),
    their optimiser state (SGD's momentum buffer, Adam's moments) keeps its value from before the step,
    and their value is restored after it (weight decay). Without the first two, SGD's momentum would
    absorb a vetoed gradient and move the coordinate at a later step where the mask keeps it."""
    kept = [w > 0 for w in weights]
    for p, k in zip(params, kept, strict=True):
        if p.grad is not None:
            p.grad.mul_(k)
    (clip if isinstance(clip, StepClip) else StepClip(clip))(params)
    buffers = [_moments(opt, p) for p in params]
    buffers = [{name: b.clone() for name, b in held.items()} for held in buffers]
    before = [p.detach().clone() for p in params]
    opt.step()
    apply_update_mask(params, before, weights, binary=binary)
    for p, k, held in zip(params, kept, buffers, strict=True):
        for name, new in _moments(opt, p).items():
            old = held.get(name)
            new.copy_(torch.where(k, new, torch.zeros_like(new) if old is None else old))


def _moments(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """The optimiser's per-coordinate state of ``p`` (SGD's momentum buffer, Adam's two moments)."""
    return {k: v for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape}


def top_fraction_mask(scores: Tensors, keep: float) -> list[torch.Tensor]:
    """Global top-``keep`` fraction of all coordinates by score (SalUn's saliency threshold)."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = int(round(keep * flat.numel()))
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return [s >= threshold for s in scores]
