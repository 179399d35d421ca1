"""A published version's test scores are kept and read back as the next job's base: the same metrics as
scoring the base again, and never read when they are not the ones its version record vouches for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from models.calibration import split_test_set
from models.checkpoints import load_checkpoint
from models.datasets import load_dataset
from models.metrics import evaluate, forgotten_classes
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, Job, Model, ModelVersion
from service.core.settings import Settings
from service.core.states import ModelStatus
from tests.workers.test_jobs import demo, submit  # noqa: F401 - `demo` is a fixture
from workers.kept_scores import of_checkpoint
from workers.orchestrate import process_model
from workers.validate import validate_model

pytestmark = pytest.mark.slow


def run_job(settings: Settings, ids: list[str], base: int) -> Job:
    model_id, _ = submit(settings, ids)
    assert process_model(settings, model_id) == "idle"
    with session_scope(settings.resolved_database_url) as s:
        job = s.scalars(select(Job).where(Job.base_version == base)).one()
        s.expunge(job)
        return job


def version(settings: Settings, number: int) -> ModelVersion:
    with session_scope(settings.resolved_database_url) as s:
        v = s.scalars(select(ModelVersion).where(ModelVersion.number == number)).one()
        s.expunge(v)
        return v


def kept_file(settings: Settings, v: ModelVersion) -> Path:
    [path] = of_checkpoint(Path(v.checkpoint_uri))
    return path


def scored_afresh(
    settings: Settings, v: ModelVersion, forget_ids: list[str], before: list[str]
) -> dict[str, Any]:
    """What scoring version ``v`` from its checkpoint gives on a job's data (D_f = ``forget_ids``, D_r =
    the rest but ``before``, forgotten earlier), reading every set."""
    with session_scope(settings.resolved_database_url) as s:
        m = s.scalars(select(Model)).one()
        train_ds, test_ds = (s.get_one(Dataset, i) for i in (m.train_dataset_id, m.test_dataset_id))
        train, test = load_dataset(train_ds.kind, train_ds.uri), load_dataset(test_ds.kind, test_ds.uri)
    forget, _ = train.split_by_ids(forget_ids)
    _, retain = train.split_by_ids(forget_ids + before)
    model, _ = load_checkpoint(v.checkpoint_uri, sha256=v.sha256)
    return dict(
        evaluate(
            model,
            forget=forget,
            retain=retain,
            test=split_test_set(test).scoring,
            forgotten_classes=forgotten_classes(train.y, retain.y),
        )
    )


FIRST = [f"digits-{i:04d}" for i in range(0, 100, 10)]
SECOND = [f"digits-{i:04d}" for i in range(500, 600, 10)]


@pytest.fixture
def no_gates(demo: Settings) -> Settings:  # noqa: F811 - the fixture imported above
    with session_scope(demo.resolved_database_url) as s:
        s.execute(update(Model).values(gates={}))
    return demo


def test_the_next_job_reads_the_published_versions_kept_scores_and_gets_what_scoring_gives(
    no_gates: Settings,
) -> None:
    first = run_job(no_gates, FIRST, base=1)
    assert first.metrics["data"]["base_test_scores"] == "scored"  # v1, registered: nothing kept
    v2 = version(no_gates, 2)
    assert kept_file(no_gates, v2).exists() and len(v2.metrics["test_scores_sha256"]) == 64

    second = run_job(no_gates, SECOND, base=2)
    assert second.metrics["data"]["base_test_scores"] == "kept"
    # and every training row it scored v2 on (D_f and D_r) was one v2's own job had scored: read back
    rows = first.metrics["base"]["retain_count"]  # the first job's D_r, all of it scored (under 10k rows)
    assert first.metrics["data"]["base_train_rows"] == {"kept": 0, "scored": len(FIRST) + rows}
    assert second.metrics["data"]["base_train_rows"] == {"kept": rows, "scored": 0}
    base, fresh = second.metrics["base"], scored_afresh(no_gates, v2, SECOND, FIRST)
    for key in ("unlearning_accuracy", "mia_score", "mia_loss_score", "retain_accuracy", "test_accuracy"):
        assert base[key] == pytest.approx(fresh[key], abs=1e-6), key
    assert base["test_count"] == fresh["test_count"]
    # v2's TA is the one v2's own job measured: the same model on the same data.
    assert base["test_accuracy"] == v2.metrics["test_accuracy"]


def test_a_validated_models_first_job_reads_v1s_scores_kept_at_validation(no_gates: Settings) -> None:
    """The worker that validates a model scores v1 on the scoring part anyway; kept, they spare the first
    job its base's test pass, and give what scoring v1 gives."""
    with session_scope(no_gates.resolved_database_url) as s:
        model = s.scalars(select(Model)).one()
        model.status = ModelStatus.VALIDATING
        model_id = model.id
    assert validate_model(no_gates, model_id) == ModelStatus.READY
    v1 = version(no_gates, 1)
    # under the model's folder, wherever its registered checkpoint lies (the demo's is outside it)
    kept = list((no_gates.checkpoint_dir / model_id / "scores").glob(f"{Path(v1.checkpoint_uri).stem}.*"))
    assert len(kept) == 1 and len(v1.metrics["test_scores_sha256"]) == 64
    first = run_job(no_gates, FIRST, base=1)
    assert first.metrics["data"]["base_test_scores"] == "kept"
    # and the training rows: validation scored v1 on all of them (under 10k rows)
    assert first.metrics["data"]["base_train_rows"] == {"kept": v1.metrics["retain_count"], "scored": 0}
    base, fresh = first.metrics["base"], scored_afresh(no_gates, v1, FIRST, [])
    for key in ("unlearning_accuracy", "mia_score", "mia_loss_score", "retain_accuracy", "test_accuracy"):
        assert base[key] == pytest.approx(fresh[key], abs=1e-6), key
    assert base["test_accuracy"] == v1.metrics["test_accuracy"]  # the one validation measured


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_kept_scores_not_matching_the_version_record_are_not_read(no_gates: Settings, damage: str) -> None:
    run_job(no_gates, FIRST, base=1)
    v2 = version(no_gates, 2)
    kept = kept_file(no_gates, v2)
    if damage == "missing":
        kept.unlink()
    else:  # a forged file that claims v2 gets every test sample right
        from safetensors.numpy import load_file, save_file

        arrays = load_file(str(kept))
        arrays["correct"][:] = 1.0
        save_file(arrays, str(kept))

    second = run_job(no_gates, SECOND, base=2)
    assert second.metrics["data"]["base_test_scores"] == "scored"
    assert second.metrics["base"]["test_accuracy"] == pytest.approx(
        scored_afresh(no_gates, v2, SECOND, FIRST)["test_accuracy"], abs=1e-9
    )
    assert second.metrics["base"]["test_accuracy"] < 1.0


def test_a_cnn_trained_with_adam_is_still_unlearned_with_sgd(no_gates: Settings) -> None:
    """The Adam rule (models/unlearning/params.py: with_recipe) asks for a layer-normalised network too: on
    a small CNN trained with Adam, SGD forgot better (bench/results/tune_stop44_adam_digits.md)."""
    with session_scope(no_gates.resolved_database_url) as s:
        s.execute(update(Model).values(train_recipe={"epochs": 30, "lr": 0.002, "optimizer": "adam"}))
    job = run_job(no_gates, FIRST, base=1)
    assert job.state == "completed" and job.params["optimizer"] == "sgd" and job.params["lr"] == 0.03
