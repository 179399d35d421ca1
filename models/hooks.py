"""Callbacks between a long computation and whoever runs it (a worker, a bench, a test).

Library code never prints or polls a database: it calls these. ``should_cancel`` is checked every
``check_every`` steps (and at the last step) because the caller's check may be a database query, which
would dominate a millisecond-long step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from models.datasets import SampleDataset

# How a run that trains only the last layers gets its frozen front's outputs for a set of samples
# (``models.unlearning.last_layers.features`` unless the caller keeps them: ``FeatureCache.bound``).
FrontFeatures = Callable[["nn.Module", "SampleDataset", torch.device], "SampleDataset"]


class Cancelled(Exception):
    """Raised between steps when ``Hooks.should_cancel()`` returns True."""


@dataclass
class Hooks:
    progress: Callable[[float], None] | None = None  # fraction of the run done, in [0, 1]
    should_cancel: Callable[[], bool] | None = None
    check_every: int = 10
    on_batch: Callable[[torch.Tensor], None] | None = None  # row indices of each training batch (audits)
    on_plan: Callable[[dict[str, Any]], None] | None = None  # what each run decided before its first step
    front_features: FrontFeatures | None = None  # D_f's and D_r's front outputs (None: computed each run)

    def step(self, done: int, total: int) -> None:
        """Call after step ``done`` of ``total``: report progress, raise Cancelled if asked to stop."""
        if done % max(self.check_every, 1) and done < total:
            return
        if self.progress is not None:
            self.progress(min(done / max(total, 1), 1.0))
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled(f"cancelled after step {done} of {total}")

    def start(self) -> None:
        """Before the first step: report 0 and honour a cancellation that came before the run started."""
        if self.progress is not None:
            self.progress(0.0)
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("cancelled before the first step")

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(1.0)

    def batch(self, indices: torch.Tensor) -> None:
        if self.on_batch is not None:
            self.on_batch(indices)

    def plan(self, facts: dict[str, Any]) -> None:
        """Before a run's first step: how long it runs and on what (steps, epochs, rows read, weights
        trained, and what sized it). Why: a run's length now follows a measurement taken before it
        (``pushes``), so the params a job was given no longer say what ran; an audit needs both."""
        if self.on_plan is not None:
            self.on_plan(facts)
