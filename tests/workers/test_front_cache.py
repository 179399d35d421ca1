"""A worker keeps the frozen front's outputs of training rows between jobs (workers/front_cache.py): the
next job on the version the last one published passes only rows it has not seen through the front."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from sqlalchemy import select

from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, Model, ModelVersion
from service.core.settings import Settings
from service.core.states import ModelStatus
from tests.workers.test_jobs import demo  # noqa: F401 - a fixture
from tests.workers.test_kept_scores import FIRST, SECOND, no_gates, run_job  # noqa: F401 - `no_gates` too
from workers import front_cache, kept_rows
from workers.datasets import DatasetRef
from workers.validate import validate_model


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache lives as long as the process: each test starts with none (a demo model trained by an
    earlier test of this process may have the same front)."""
    monkeypatch.setattr(front_cache, "_cache", None)


@pytest.mark.slow
def test_the_next_job_reads_the_rows_the_last_one_passed_through_the_front(
    no_gates: Settings,  # noqa: F811
    empty_cache: None,
) -> None:
    first = run_job(no_gates, FIRST, base=1)
    [attempt] = first.metrics["attempts"]
    run = attempt["runs"][0]
    assert run["trained"] == "last_layers"
    # the base version's scoring passed D_f and D_r's sample (all of the demo's D_r) through the front
    # first: the run and the result's scoring read every row back, and no row went through it twice
    assert attempt["front_rows"]["kept"] >= run["forget_rows"] + run["retain_rows"]
    computed = front_cache.feature_cache(no_gates).stats.computed  # type: ignore[union-attr]
    base = first.metrics["base"]  # and the test set's scoring part, under a source of its own
    assert len(FIRST) < computed <= len(FIRST) + base["retain_count"] + base["test_count"]

    second = run_job(no_gates, SECOND, base=2)  # on v2, whose front is v1's
    [again] = second.metrics["attempts"]
    assert again["front_rows"]["computed"] == 0 and again["front_rows"]["kept"] > 0
    assert front_cache.feature_cache(no_gates).stats.computed == computed  # type: ignore[union-attr]


@pytest.mark.slow
def test_validation_keeps_every_training_row_so_the_first_job_computes_none(
    no_gates: Settings,  # noqa: F811
    empty_cache: None,
) -> None:
    """A model's first deletion reads its rows back as later ones do, when the worker that validated it
    runs it; v1's metrics are the same as scored through the whole model."""
    with session_scope(no_gates.resolved_database_url) as s:
        model = s.scalars(select(Model)).one()
        model.status = ModelStatus.VALIDATING
        model_id, n_train = model.id, s.get_one(Dataset, model.train_dataset_id).num_samples
        v1 = s.scalars(select(ModelVersion).where(ModelVersion.number == 1)).one()
        whole = dict(v1.metrics)  # scored at the demo's registration, through the whole model
    assert validate_model(no_gates, model_id) == "ready"
    cache = front_cache.feature_cache(no_gates)
    assert cache is not None
    with session_scope(no_gates.resolved_database_url) as s:
        kept = s.scalars(select(ModelVersion.metrics).where(ModelVersion.number == 1)).one()
    for k in ("retain_accuracy", "test_accuracy", "retain_count", "test_count"):
        assert kept[k] == whole[k], k
    assert cache.stats.computed == n_train + kept["test_count"]  # every training row, and the scoring rows

    [attempt] = run_job(no_gates, FIRST, base=1).metrics["attempts"]
    run = attempt["runs"][0]
    assert attempt["front_rows"]["computed"] == 0
    assert attempt["front_rows"]["kept"] >= run["forget_rows"] + run["retain_rows"]


@pytest.mark.slow
def test_a_job_on_another_process_reads_the_rows_from_the_store_on_disk(
    no_gates: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    empty_cache: None,
) -> None:
    """A fresh process (no cache in memory) reads back what the demo's set-up and its first job wrote
    under the store's directory; with the store off it computes every row again."""
    [first] = run_job(no_gates, FIRST, base=1).metrics["attempts"]
    assert first["front_rows"]["computed"] + first["front_rows"]["from_store"] > 0
    chunks = list(no_gates.resolved_feature_store_dir.glob("*/*.safetensors"))
    assert chunks
    for path in chunks:  # the rows the job forgot are in none of them (a probe found an erasure's there)
        with safe_open(str(path), framework="pt") as f:
            assert set(FIRST).isdisjoint(json.loads(f.metadata()["ids"])), path

    monkeypatch.setattr(front_cache, "_cache", None)  # another worker process: nothing in memory
    monkeypatch.setattr(kept_rows, "_kept", type(kept_rows._kept)())
    [second] = run_job(no_gates, SECOND, base=2).metrics["attempts"]
    rows = second["front_rows"]
    assert rows["computed"] == 0 and rows["kept"] > 0 and rows["from_store"] > 0
    assert front_cache.feature_cache(no_gates).stats.computed == 0  # type: ignore[union-attr]

    monkeypatch.setattr(front_cache, "_cache", None)
    monkeypatch.setattr(kept_rows, "_kept", type(kept_rows._kept)())
    off = no_gates.model_copy(update={"feature_store_bytes": 0})
    third = [f"digits-{i:04d}" for i in range(900, 1000, 10)]
    [again] = run_job(off, third, base=3).metrics["attempts"]
    assert again["front_rows"]["computed"] > 0 and again["front_rows"]["from_store"] == 0


@pytest.mark.slow
def test_with_the_cache_off_every_job_computes_its_rows(no_gates: Settings, empty_cache: None) -> None:  # noqa: F811
    off = no_gates.model_copy(update={"feature_cache_bytes": 0})
    for ids, base in ((FIRST, 1), (SECOND, 2)):
        [attempt] = run_job(off, ids, base=base).metrics["attempts"]
        assert "front_rows" not in attempt and attempt["runs"][0]["trained"] == "last_layers"
    assert front_cache.feature_cache(off) is None


def test_rows_of_a_file_not_checked_at_load_are_not_kept() -> None:
    """A dataset registered before hashes were kept may have changed under the same path."""
    legacy = DatasetRef("npz", "/data/train.npz", None)
    assert front_cache.source(legacy) is None
    # a manifest's hash covers the manifest, not its images: one replaced since is read, never kept rows
    assert front_cache.source(DatasetRef("csv_manifest", "/data/m.csv", "ab" * 32)) is None
    hashed = front_cache.source(DatasetRef("npz", "/data/train.npz", "ab" * 32))
    other = front_cache.source(DatasetRef("npz", "/data/train.npz", "cd" * 32))
    declared = front_cache.source(DatasetRef("npz", "/data/train.npz", "ab" * 32, {"normalize": [0.5, 0.5]}))
    assert None not in (hashed, other, declared) and len({hashed, other, declared}) == 3
    assert front_cache.source(DatasetRef("digits", ":train")) is not None  # a package's data, not a file


def test_scores_through_the_kept_front_are_the_models_own() -> None:
    import numpy as np
    import torch

    from models.architectures import build_model
    from models.datasets import load_digits_split
    from models.metrics import score_set
    from models.training import TrainRecipe, train
    from models.unlearning.feature_cache import FeatureCache

    train_ds, _ = load_digits_split(seed=0)
    torch.manual_seed(0)
    model = train(build_model("small_cnn", image_size=8), train_ds, TrainRecipe(epochs=1))
    cache = FeatureCache(max_bytes=2**30)
    scores = front_cache.scores(model, 0.7, cache, "digits")
    assert scores is not None
    rows = train_ds.subset(torch.arange(0, 300, 3))
    got, again, own = scores(rows), scores(rows), score_set(model, rows)
    assert cache.stats.computed == len(rows) and cache.stats.read == len(rows)  # the second read them back
    for s in (got, again):
        assert np.array_equal(s.correct, own.correct)
        assert np.allclose(s.log_confidence, own.log_confidence, atol=1e-5)
    assert front_cache.scores(model, 0.0, cache, "digits") is None  # the whole model: nothing to split
    assert front_cache.scores(model, 0.7, None, "digits") is None


def test_a_warm_up_that_would_not_fit_the_cache_computes_nothing() -> None:
    """Its rows would be dropped as soon as computed: a pass of the whole training set for nothing."""
    import torch

    from models.architectures import build_model
    from models.datasets import load_digits_split
    from models.unlearning.feature_cache import FeatureCache
    from models.unlearning.last_layers import features, split_last_layers

    train_ds, _ = load_digits_split(seed=0)
    model = build_model("small_cnn", image_size=8)
    split = split_last_layers(model, 0.7)
    assert split is not None
    out = features(split.front, train_ds.subset([0]), torch.device("cpu")).x
    assert isinstance(out, torch.Tensor)
    row = out.element_size() * out.numel()  # bytes of one row's front output
    small = FeatureCache(max_bytes=row * (len(train_ds) - 1))
    assert front_cache.keep(model, 0.7, small, "digits", train_ds) == 0
    assert small.stats.computed == 0 and small.nbytes() == 0
    fits = FeatureCache(max_bytes=row * len(train_ds))
    assert front_cache.keep(model, 0.7, fits, "digits", train_ds) == len(train_ds)
    assert fits.nbytes() == row * len(train_ds)
    assert front_cache.keep(model, 0.7, fits, "digits", train_ds.subset(torch.arange(10))) == 0
