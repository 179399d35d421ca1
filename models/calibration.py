"""Which held-out data calibrates a method and which grades it.

UGradSL+'s held-out bound reads held-out losses to decide how far to push the forget set; a metric
computed on those same samples would grade the method on data it was tuned against. So the held-out
data is split in two: a calibration part the method may read, and a scoring part only the metrics read.
A model registered with a held-out set of its own calibrates on all of it and is graded on the whole test
set; otherwise the test set is halved.

The halves are fixed by the sample IDs alone (a hash, not an order or a seed), so every job, the
registration's v1 scoring and any client recomputing the numbers agree on which samples are which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from models.datasets import SampleDataset


@dataclass(frozen=True)
class HeldOut:
    calibration: SampleDataset  # the method may read it (e.g. UGradSL+'s held-out bound)
    scoring: SampleDataset  # only the metrics read it: TA, the attack's non-members, the gates
    how: str  # in words, for the job's record


def _in_calibration_half(sample_id: str) -> bool:
    return hashlib.sha256(sample_id.encode()).digest()[0] < 128


def split_test_set(test: SampleDataset) -> HeldOut:
    """Halve the test set by a hash of each sample ID."""
    calibrate = torch.tensor([_in_calibration_half(i) for i in test.ids], dtype=torch.bool)
    return HeldOut(
        calibration=test.subset(torch.nonzero(calibrate).flatten()),
        scoring=test.subset(torch.nonzero(~calibrate).flatten()),
        how="the test set split by a hash of each sample ID: half calibrates, half scores",
    )


def held_out(test: SampleDataset, heldout: SampleDataset | None) -> HeldOut:
    """The model's own held-out set calibrates and the whole test set scores; without one, halves."""
    if heldout is None:
        return split_test_set(test)
    return HeldOut(
        calibration=heldout, scoring=test, how="the model's held-out set calibrates; the test set scores"
    )


def roles(parts: HeldOut, test_name: str, heldout_name: str | None) -> dict[str, object]:
    """What played which part, as recorded on a job."""
    return {
        "how": parts.how,
        "calibration": {"dataset": heldout_name or test_name, "samples": len(parts.calibration)},
        "scoring": {"dataset": test_name, "samples": len(parts.scoring)},
    }
