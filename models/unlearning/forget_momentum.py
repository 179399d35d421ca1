"""SGD momentum whose forget part follows the held-out bound (``forget_momentum="live"``; ours).

SGD keeps one buffer, b = μ·b + g, with g = g_C + g_U the retain and forget gradients. When the held-out
bound stops a forget sample (its loss reached the held-out loss of its rank), g_U no longer pushes it, but
b still holds the pushes of earlier steps and applies them for 1/(1 - μ) = 10 more steps at μ = 0.9: the
run goes on pushing what the bound has stopped. On a deletion drawn from one class (half of digits' class
0) those carried pushes all pointed one way and forgot the class past a retrain (docs/methods.md, stop 47).

Here the buffer's forget part F (the sum of the forget gradients it holds, μ-discounted) is tracked beside
it, and before each step the part of F that the bound has stopped is taken out of SGD's buffer: with a the
share of the step's forget batch still live, b <- b - (1 - a)·F and F <- a·F. At a = 1 this is SGD; at
a = 0 the buffer holds the retain gradients' momentum only. The retain term, weight decay and clipping
are SGD's as before (F takes the clip's scale of the step's forget gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LiveForgetMomentum:
    """The forget part of an SGD optimiser's momentum buffers, scaled by the live share each step."""

    def __init__(self, opt: torch.optim.Optimizer, params: Sequence[torch.Tensor], momentum: float) -> None:
        self.opt, self.params, self.momentum = opt, list(params), momentum
        self.part: list[torch.Tensor] | None = None  # F per parameter; None before the first step

    def before_step(self, live: torch.Tensor | None) -> None:
        """Take the stopped share (1 - mean ``live``) of F out of SGD's buffers (``live``: (B,) 0/1)."""
        if self.part is None or live is None or len(live) == 0:
            return
        stopped = 1 - live.float().mean()  # scalar tensor: no host sync
        bufs = [self.opt.state[p].get("momentum_buffer") for p in self.params]
        for buf, f in zip(bufs, self.part, strict=True):
            if buf is not None:
                buf.sub_(f * stopped)
        torch._foreach_mul_(self.part, 1 - stopped)

    def after_step(self, forget_grads: Sequence[torch.Tensor], scale: torch.Tensor | float) -> None:
        """F <- μ·F + s·g_U, as SGD did to its buffer (``scale``: the clip's factor on this step)."""
        grads = [g * scale for g in forget_grads]
        if self.part is None:
            self.part = grads  # SGD's first step sets b = g
            return
        torch._foreach_mul_(self.part, self.momentum)
        torch._foreach_add_(self.part, grads)
