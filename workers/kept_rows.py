"""A published version's scores on the training rows its job scored, kept in this worker process so that
the next job's base scoring reads them instead of passing those rows through the model again.

Why: the job that publishes a version has just scored it on D_f and on a sample of D_r (up to 10,000 rows:
every row of a smaller training set), and the next job's base is that version, scored on rows of the same
training set: its new D_f and a sample of what remains. On the digits model those passes were 0.02-0.05 s
of a 0.2-0.4 s job. A version's score on a row depends on nothing a deletion changes (``models.metrics.
SetScores``), so the kept ones are the scores the pass would give, to float32 rounding (rows batched
otherwise). Kept per process, as the front's outputs are (``workers.front_cache``), for the last
``KEPT_VERSIONS`` versions published or validated here, and keyed by the version's checkpoint (its path
and the sha256 on its record), the rows' source (a registered dataset's hash and how it is read) and the
device kind; a row not kept is scored. A job records how many of its base's training rows were read back
(``metrics.data.base_train_rows``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.datasets import SampleDataset
from models.metrics import SetScores

Scorer = Callable[[SampleDataset], SetScores]
KEPT_VERSIONS = 4


@dataclass(frozen=True)
class _Kept:
    """One version's scores: each sample ID's row in the two arrays."""

    at: dict[str, int]
    correct: np.ndarray  # (N,) float32
    log_confidence: np.ndarray  # (N,) float32


_kept: OrderedDict[tuple[str, str, str, str], _Kept] = OrderedDict()


class Recorder:
    """Wraps a version's training-row scorer and remembers what it scored, to be kept once the version is
    published (``keep``)."""

    def __init__(self) -> None:
        self.parts: list[tuple[list[str], SetScores]] = []

    def through(self, score: Scorer) -> Scorer:
        def scored(data: SampleDataset) -> SetScores:
            out = score(data)
            self.parts.append((list(data.ids), out))
            return out

        return scored

    def joined(self) -> _Kept:
        """The scores by ID (a row scored twice keeps its later scores)."""
        ids = [i for part, _ in self.parts for i in part]
        correct = np.concatenate([np.asarray(s.correct, dtype=np.float32) for _, s in self.parts])
        confidence = np.concatenate([np.asarray(s.log_confidence, dtype=np.float32) for _, s in self.parts])
        return _Kept({i: k for k, i in enumerate(ids)}, correct, confidence)


class Reader:
    """Wraps the base version's training-row scorer: rows kept from the job that published the version
    (or from its validation) are read back, the others scored. ``counts``: rows read back and rows
    scored, for the job's record."""

    def __init__(self, checkpoint: tuple[str, str], source: str | None, device: torch.device) -> None:
        self.kept = _kept.get((*checkpoint, source, device.type)) if source is not None else None
        self.counts = {"kept": 0, "scored": 0}

    def through(self, score: Scorer) -> Scorer:
        def scored(data: SampleDataset) -> SetScores:
            kept = self.kept
            if kept is None or not len(data):
                self.counts["scored"] += len(data)
                return score(data)
            at = np.fromiter((kept.at.get(i, -1) for i in data.ids), dtype=np.int64, count=len(data))
            found, missing = np.flatnonzero(at >= 0), np.flatnonzero(at < 0)
            correct = np.empty(len(data), dtype=np.float32)
            confidence = np.empty(len(data), dtype=np.float32)
            correct[found], confidence[found] = kept.correct[at[found]], kept.log_confidence[at[found]]
            if len(missing):
                fresh = score(data.subset(torch.from_numpy(missing)))
                correct[missing], confidence[missing] = fresh.correct, fresh.log_confidence
            self.counts["kept"] += len(found)
            self.counts["scored"] += len(missing)
            return SetScores(correct, confidence)

        return scored


def keep(checkpoint: tuple[str, str], source: str | None, device: torch.device, recorded: Recorder) -> None:
    """Keep what ``recorded`` scored as the scores of the version whose checkpoint is ``checkpoint`` (path,
    sha256); nothing where the rows have no source (a dataset whose files are not checked may change
    under its path)."""
    if source is None or not recorded.parts:
        return
    _kept[(*checkpoint, source, device.type)] = recorded.joined()
    while len(_kept) > KEPT_VERSIONS:
        _kept.popitem(last=False)
