"""Grading on data the method never read (issue 18): a model registered with a held-out set of its own
calibrates on it and is scored on the whole test set; a model without one calibrates on half the test
set and is scored on the other half only; the job records which data played which part. Registration
through the HTTP API; validation and the job run in-process, as a worker runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.core import deletions
from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest, Job, Model, ModelVersion
from service.core.keys import create_key
from service.core.settings import Settings
from tests.factories import make_key
from tests.workers.test_jobs import demo  # noqa: F401 - the demo stack, as a fixture
from workers.orchestrate import process_model
from workers.validate import validate_model

pytestmark = pytest.mark.slow


def halves(settings: Settings) -> tuple[Path, Path]:
    """The demo's test file split in two files: 150 samples to calibrate on, the rest to score on."""
    src = settings.dataset_dir / "digits-test.npz"
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    out = []
    for name, part in (("heldout", slice(0, 150)), ("scoring", slice(150, None))):
        path = settings.dataset_dir / f"digits-{name}.npz"
        np.savez(path, **{k: v[part] for k, v in arrays.items()})
        out.append(path)
    return out[0], out[1]


def test_a_model_with_its_own_heldout_set_calibrates_on_it_and_is_scored_on_the_whole_test_set(
    demo: Settings,  # noqa: F811
) -> None:
    heldout_path, scoring_path = halves(demo)
    with session_scope(demo.resolved_database_url) as s:
        admin = make_key(s, scopes=("admin",))
        digits = s.scalars(select(Model)).one()
        train_id = digits.train_dataset_id
        v1 = s.scalars(select(ModelVersion.checkpoint_uri)).one()
    h = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(demo)) as c:
        ids = {}
        for name, path in (("d-heldout", heldout_path), ("d-scoring", scoring_path)):
            r = c.post("/v1/datasets", json={"name": name, "kind": "npz", "uri": str(path)}, headers=h)
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        spec = {
            "name": "digits-h",
            "architecture": "small_cnn",
            "arch_kwargs": {"in_channels": 1, "image_size": 8},
            "num_classes": 10,
            "train_dataset": train_id,
            "test_dataset": ids["d-scoring"],
        }
        files = {"checkpoint": ("v1.safetensors", Path(v1).read_bytes())}
        same = c.post(
            "/v1/models",
            data={"spec": json.dumps({**spec, "heldout_dataset": train_id})},
            files=files,
            headers=h,
        )
        assert same.status_code == 422 and "tuned against" in same.json()["detail"]
        r = c.post(
            "/v1/models",
            data={"spec": json.dumps({**spec, "heldout_dataset": ids["d-heldout"]})},
            files=files,
            headers=h,
        )
        assert r.status_code == 202, r.text
        assert r.json()["heldout_dataset"] == ids["d-heldout"]
    with session_scope(demo.resolved_database_url) as s:
        model = s.scalars(select(Model).where(Model.name == "digits-h")).one()
        model.gates = {}
        model_id = model.id
    assert validate_model(demo, model_id) == "ready"
    with session_scope(demo.resolved_database_url) as s:
        v1_metrics = s.scalars(
            select(ModelVersion.metrics).where(ModelVersion.model_id == model_id, ModelVersion.number == 1)
        ).one()
        assert v1_metrics["test_count"] == 210  # the whole test set: the method reads only the held-out set
        model = s.get_one(Model, model_id)
        key, _ = create_key(s, tenant=model.tenant, scopes=["deletion:write"])
        forget = [f"digits-{i:04d}" for i in range(0, 200, 5)]
        req_id = deletions.submit(s, model=model, key=key, sample_ids=forget, reference=None, max_ids=1000).id
    process_model(demo, model_id)
    with session_scope(demo.resolved_database_url) as s:
        job = s.get_one(Job, s.get_one(DeletionRequest, req_id).job_id)
        assert job.state == "completed", job.error
        assert job.metrics["data"]["calibration"] == {"dataset": "d-heldout", "samples": 150}
        assert job.metrics["data"]["scoring"] == {"dataset": "d-scoring", "samples": 210}
        assert job.metrics["result"]["test_count"] == 210
