"""Keeping the model's predictions on held-out inputs where they were (``keep_heldout``).

Why: a retrain never saw D_f, yet on data neither model trained on it predicts almost what the original
does (the memorising Fashion-MNIST model: test accuracy 88.6-88.9% against 89.0%). Pushing D_f's rows
away also moves the predictions on unseen samples that resemble them, and the retain term cannot hold
those: its rows are memorised and give almost no gradient. A KL term towards the original's predictions
on held-out inputs holds the function where a retrain has it (SCRUB holds the original on D_r; D_r is
memorised here, so it says nothing about the boundary). Only inputs are read, never labels, and the
metrics that grade a run are taken on other data.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models import batches as B
from models.datasets import SampleDataset
from models.metrics import log_probs
from models.unlearning.engine import Batch, CyclingSampler, Objective, Terms, model_device


class KeepHeldout:
    """The original's log-probabilities on ``heldout``, taken once, and a sampler of its rows."""

    def __init__(self, model: nn.Module, heldout: SampleDataset, weight: float, batch_size: int, seed: int):
        self.weight, self.batch_size = weight, batch_size
        self.x = B.to(heldout.x, model_device(model))
        self.target = log_probs(model, heldout)  # (N, K) the model as the run starts: the original's part
        self.rows = CyclingSampler(len(heldout), torch.Generator().manual_seed(seed + 3))

    def loss(self, model: nn.Module) -> torch.Tensor:
        """KL(original ‖ model) on the next ``batch_size`` held-out rows, mean over rows."""
        i = self.rows.take(min(self.batch_size, len(self.target)))  # (B,) on the CPU: indexes any device
        logits = model(B.take(self.x, i))  # (B, K)
        return F.kl_div(logits.float().log_softmax(1), self.target[i], log_target=True, reduction="batchmean")

    def wrap(self, objective: Objective) -> Objective:
        """``objective`` whose retain term also holds the held-out predictions, weighted by ``weight``."""

        def kept(model: nn.Module, b: Batch) -> Terms:
            terms = objective(model, b)
            held = self.weight * self.loss(model)
            retain = held if terms.retain is None else terms.retain + held
            return dataclasses.replace(terms, retain=retain)

        return kept
