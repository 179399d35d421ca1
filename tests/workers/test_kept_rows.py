"""A published version's training-row scores, kept in the worker process for the next job's base scoring
(workers/kept_rows.py): what is read back is what scoring gives, rows not kept are scored, and scores are
only ever read for the version, rows and device kind they were recorded for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.architectures import build_model
from models.datasets import SampleDataset
from models.metrics import SetScores, score_set
from workers import kept_rows

CPU = torch.device("cpu")


@pytest.fixture
def data() -> SampleDataset:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    return SampleDataset(x, y, [f"row-{i:02d}" for i in range(40)])


@pytest.fixture(autouse=True)
def nothing_kept(monkeypatch) -> None:
    monkeypatch.setattr(kept_rows, "_kept", type(kept_rows._kept)())


def counting(model: torch.nn.Module, seen: list[int]):
    def score(rows: SampleDataset) -> SetScores:
        seen.append(len(rows))
        return score_set(model, rows)

    return score


def test_rows_kept_are_read_back_and_the_rest_scored_in_their_places(data: SampleDataset) -> None:
    model = build_model("small_cnn").eval()
    recorder = kept_rows.Recorder()
    published = recorder.through(counting(model, []))
    published(data.subset(torch.arange(0, 30)))  # the job's D_r sample, then its D_f
    published(data.subset(torch.arange(30, 35)))
    kept_rows.keep(("v2.safetensors", "ab12"), "digits", CPU, recorder)

    seen: list[int] = []
    reader = kept_rows.Reader(("v2.safetensors", "ab12"), "digits", CPU)
    rows = data.subset(torch.tensor([34, 2, 39, 36, 0]))  # three kept, two never scored
    got = reader.through(counting(model, seen))(rows)
    want = score_set(model, rows)
    assert seen == [2]  # only the rows not kept went through the model
    assert reader.counts == {"kept": 3, "scored": 2}
    np.testing.assert_allclose(got.correct, want.correct)
    np.testing.assert_allclose(got.log_confidence, want.log_confidence, atol=1e-6)


def test_scores_are_read_only_for_their_version_rows_and_device_kind(data: SampleDataset) -> None:
    model = build_model("small_cnn").eval()
    recorder = kept_rows.Recorder()
    recorder.through(counting(model, []))(data)
    kept_rows.keep(("v2.safetensors", "ab12"), "digits", CPU, recorder)
    for checkpoint, source, device in [
        (("v3.safetensors", "ab12"), "digits", CPU),  # another version
        (("v2.safetensors", "cd34"), "digits", CPU),  # another file at the same path (re-registered)
        (("v2.safetensors", "ab12"), "other rows", CPU),  # another dataset under the same IDs
        (("v2.safetensors", "ab12"), "digits", torch.device("meta")),  # another device kind rounds otherwise
        (("v2.safetensors", "ab12"), None, CPU),  # rows whose files are not checked may have changed
    ]:
        reader = kept_rows.Reader(checkpoint, source, device)
        seen: list[int] = []
        reader.through(counting(model, seen))(data)
        assert seen == [len(data)] and reader.counts == {"kept": 0, "scored": len(data)}
    kept_rows.keep(("v9.safetensors", "ab12"), None, CPU, recorder)
    assert len(kept_rows._kept) == 1


def test_only_the_last_versions_are_kept(data: SampleDataset) -> None:
    model = build_model("small_cnn").eval()
    for v in range(kept_rows.KEPT_VERSIONS + 2):
        recorder = kept_rows.Recorder()
        recorder.through(counting(model, []))(data.subset(torch.arange(4)))
        kept_rows.keep((f"v{v}.safetensors", "ab12"), "digits", CPU, recorder)
    assert [k[0] for k in kept_rows._kept] == [
        f"v{v}.safetensors" for v in range(2, 2 + kept_rows.KEPT_VERSIONS)
    ]
