"""A published version's scores on the training rows its job scored, kept in this worker process so that
the next job's base scoring reads them instead of passing those rows through the model again.

Why: the job that publishes a version has just scored it on D_f and on a sample of D_r (up to 10,000 rows:
every row of a smaller training set), and the next job's base is that version, scored on rows of the same
training set: its new D_f and a sample of what remains. On the digits model those passes were 20-40 ms of
a 200-300 ms job. A version's score on a row depends on nothing a deletion changes (``models.metrics.
SetScores``), so the kept ones are the scores the pass would give, to float32 rounding (rows batched
otherwise). Kept per process, as the front's outputs are (``workers.front_cache``), for the last
``KEPT_VERSIONS`` published versions, and keyed by the version's checkpoint (a file unique to one publish
attempt), the rows' source (a registered dataset's hash and how it is read) and the device kind; a row not
kept is scored. A job records how many of its base's training rows were read back
(``metrics.data.base_train_rows``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from models.datasets import SampleDataset
from models.metrics import SetScores

Scorer = Callable[[SampleDataset], SetScores]
KEPT_VERSIONS = 4


class _Rows:
    """Scores by sample ID: each row's place in two arrays."""

    def __init__(self) -> None:
        self.at: dict[str, int] = {}
        self.correct: list[np.ndarray] = []
        self.log_confidence: list[np.ndarray] = []

    def add(self, ids: list[str], scores: SetScores) -> None:
        start = sum(len(c) for c in self.correct)
        self.at.update((i, start + k) for k, i in enumerate(ids))
        self.correct.append(np.asarray(scores.correct, dtype=np.float32))
        self.log_confidence.append(np.asarray(scores.log_confidence, dtype=np.float32))

    def joined(self) -> _Rows:
        """One array each (rows added later win where an ID was added twice)."""
        if len(self.correct) > 1:
            self.correct = [np.concatenate(self.correct)]
            self.log_confidence = [np.concatenate(self.log_confidence)]
        return self


_kept: OrderedDict[tuple[str, str, str], _Rows] = OrderedDict()


class Recorder:
    """Wraps a version's training-row scorer and remembers what it scored, to be kept once the version is
    published (``keep``)."""

    def __init__(self) -> None:
        self.rows = _Rows()

    def through(self, score: Scorer) -> Scorer:
        def scored(data: SampleDataset) -> SetScores:
            out = score(data)
            self.rows.add(list(data.ids), out)
            return out

        return scored


class Reader:
    """Wraps the base version's training-row scorer: rows kept from the job that published the version
    are read back, the others scored. ``counts``: rows read back and rows scored, for the job's record."""

    def __init__(self, checkpoint_uri: str, source: str | None, device: torch.device) -> None:
        self.kept = _kept.get((checkpoint_uri, source, device.type)) if source is not None else None
        self.counts = {"kept": 0, "scored": 0}

    def through(self, score: Scorer) -> Scorer:
        def scored(data: SampleDataset) -> SetScores:
            if self.kept is None or not len(data):
                self.counts["scored"] += len(data)
                return score(data)
            at = np.fromiter((self.kept.at.get(i, -1) for i in data.ids), dtype=np.int64, count=len(data))
            missing = np.flatnonzero(at < 0)
            correct = np.empty(len(data), dtype=np.float32)
            log_confidence = np.empty(len(data), dtype=np.float32)
            found = at >= 0
            correct[found] = self.kept.correct[0][at[found]]
            log_confidence[found] = self.kept.log_confidence[0][at[found]]
            if len(missing):
                fresh = score(data.subset(torch.from_numpy(missing)))
                correct[missing], log_confidence[missing] = fresh.correct, fresh.log_confidence
            self.counts["kept"] += len(data) - len(missing)
            self.counts["scored"] += len(missing)
            return SetScores(correct, log_confidence)

        return scored


def keep(checkpoint_uri: str, source: str | None, device: torch.device, recorded: Recorder) -> None:
    """Keep what ``recorded`` scored as the scores of the version published at ``checkpoint_uri``; nothing
    where the rows have no source (a dataset whose files are not checked may change under its path)."""
    if source is None or not recorded.rows.at:
        return
    _kept[(checkpoint_uri, source, device.type)] = recorded.rows.joined()
    while len(_kept) > KEPT_VERSIONS:
        _kept.popitem(last=False)
