"""Streamed datasets through the service (issue 15): an `npy` folder and WebDataset shards registered by
path over HTTP (a real uvicorn), a model trained on them validated and unlearned by the worker's own
functions reading rows through DataLoader reader processes, a v2 published; folders that cannot be a
dataset are a 422 naming the problem, and a folder changed after registration is refused by the job."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import webdataset as wds  # type: ignore[import-untyped,unused-ignore]
from PIL import Image
from safetensors.torch import save_model
from sqlalchemy import select

from models.architectures import build_model
from models.calibration import _in_calibration_half
from service.core.db.engine import session_scope
from service.core.db.tables import Model
from service.core.settings import Settings
from tests.factories import make_key
from tests.helpers import wait_until
from tests.liveapp import LiveApp, prepared, serve
from workers.orchestrate import process_model
from workers.validate import validate_model

pytestmark = pytest.mark.slow
K = 3


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveApp, httpx.Client, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    settings = prepared(
        Settings(  # type: ignore[call-arg]
            UNLEARN_VAR_DIR=str(tmp_path / "var"),
            UNLEARN_QUEUE=f"q-{uuid.uuid4().hex[:8]}",
            UNLEARN_DATA_ROOTS=str(data),
            UNLEARN_LOADER_WORKERS=1,  # reader processes, as in production
        )
    )
    with session_scope(settings.resolved_database_url) as s:
        key = make_key(s, scopes=("admin", "deletion:write", "jobs:read"))
    with serve(settings) as app, app.client(key) as http:
        yield app, http, data


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n uint8 RGB 8x8 images (HWC), K learnable classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = np.clip(rng.normal(60, 20, size=(n, 8, 8, 3)) + 60 * y[:, None, None, None], 0, 255).astype(np.uint8)
    return x, y, [f"s{seed}-{i:04d}" for i in range(n)]


def npy_folder(folder: Path, n: int, seed: int) -> list[str]:
    x, y, ids = images(n, seed)
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.save(folder / "ids.npy", np.asarray(ids, dtype=np.str_))
    return ids


def shards(folder: Path, n: int, seed: int, per_shard: int = 20) -> list[str]:
    x, y, ids = images(n, seed)
    folder.mkdir()
    for start in range(0, n, per_shard):
        with wds.TarWriter(str(folder / f"shard-{start // per_shard:04d}.tar")) as sink:
            for i in range(start, min(start + per_shard, n)):
                png = io.BytesIO()
                Image.fromarray(x[i]).save(png, format="PNG")
                sink.write({"__key__": ids[i], "png": png.getvalue(), "cls": str(int(y[i]))})
    return ids


def register_dataset(http: httpx.Client, name: str, kind: str, uri: Path, **extra: object) -> httpx.Response:
    return http.post("/v1/datasets", json={"name": name, "kind": kind, "uri": str(uri), **extra})


def register_model(http: httpx.Client, tmp_path: Path, name: str, train: str, test: str) -> str:
    torch.manual_seed(0)
    module = build_model("small_cnn", in_channels=3, image_size=8, num_classes=K)
    save_model(module, str(tmp_path / "v1.safetensors"))
    spec = {
        "name": name,
        "architecture": "small_cnn",
        "arch_kwargs": {"in_channels": 3, "image_size": 8},
        "num_classes": K,
        "train_dataset": train,
        "test_dataset": test,
        "default_params": {"epochs": 1},
    }
    r = http.post(
        "/v1/models",
        data={"spec": json.dumps(spec)},
        files={"checkpoint": ("v1.safetensors", (tmp_path / "v1.safetensors").read_bytes())},
    )
    assert r.status_code == 202, r.text
    return name


def model_id(app: LiveApp, name: str) -> str:
    with session_scope(app.db) as s:
        return s.scalars(select(Model.id).where(Model.name == name)).one()


def ready_model(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path, name: str, train: tuple[str, Path], test: Path
) -> str:
    """A model on `train` (kind, path) and WebDataset `test` shards, registered and validated `ready`."""
    app, http, _ = live
    train_id = register_dataset(http, "train", train[0], train[1]).json()["id"]
    test_id = register_dataset(http, "test", "webdataset", test).json()["id"]
    register_model(http, tmp_path, name, train_id, test_id)
    assert validate_model(app.settings, model_id(app, name)) == "ready"
    return name


def job_of_request(live: tuple[LiveApp, httpx.Client, Path], name: str, ids: list[str]) -> dict[str, Any]:
    """The job a deletion request of `ids` ran in, once the worker's functions have run it."""
    app, http, _ = live
    r = http.post(f"/v1/models/{name}/deletion-requests", json={"sample_ids": ids})
    assert r.status_code == 202, r.text
    process_model(app.settings, model_id(app, name))
    job_id = http.get(f"/v1/deletion-requests/{r.json()['id']}").json()["job_id"]
    return dict(http.get(f"/v1/jobs/{job_id}").json())


def test_npy_and_webdataset_sets_are_registered_validated_and_unlearned(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path
) -> None:
    app, http, data = live
    train_ids = npy_folder(data / "train-npy", 120, 0)
    shards(data / "test-wds", 45, 1)  # three shards
    r = register_dataset(http, "train", "npy", data / "train-npy", features={"layout": "HWC", "scale": 255})
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 120
    train = r.json()["id"]
    r = register_dataset(http, "test", "webdataset", data / "test-wds")
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 45
    test = r.json()["id"]

    name = register_model(http, tmp_path, "streamed", train, test)
    mid = model_id(app, name)
    assert validate_model(app.settings, mid) == "ready", http.get(f"/v1/models/{name}").json()[
        "status_detail"
    ]

    r = http.post(f"/v1/models/{name}/deletion-requests", json={"sample_ids": train_ids[:12]})
    assert r.status_code == 202, r.text
    assert process_model(app.settings, mid) == "idle"
    req = http.get(f"/v1/deletion-requests/{r.json()['id']}").json()
    assert (req["state"], req["model_version"]) == ("completed", "v2"), req
    job = http.get(f"/v1/jobs/{req['job_id']}").json()
    roles = job["metrics"]["data"]
    assert job["metrics"]["result"]["forget_count"] == 12
    assert roles["scoring"]["samples"] + roles["calibration"]["samples"] == 45  # the test set, halved


@pytest.mark.parametrize(
    ("kind", "make", "says"),
    [
        ("npy", lambda d: (d.mkdir(), np.save(d / "x.npy", np.zeros((2, 2)))), "missing y.npy, ids.npy"),
        ("webdataset", lambda d: d.mkdir(), "holds no .tar shards"),
        ("npz", lambda d: d.mkdir(), "no file at"),
    ],
)
def test_a_folder_that_is_not_a_dataset_is_a_422_naming_what_is_missing(
    live: tuple[LiveApp, httpx.Client, Path], kind: str, make: object, says: str
) -> None:
    _, http, data = live
    make(data / "bad")  # type: ignore[operator]
    r = register_dataset(http, "bad", kind, data / "bad")
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    assert http.get("/v1/datasets").json() == []


def test_a_declaration_shards_cannot_take_is_a_422(live: tuple[LiveApp, httpx.Client, Path]) -> None:
    _, http, data = live
    shards(data / "wds", 10, 0)
    r = register_dataset(http, "wds", "webdataset", data / "wds", features={"layout": "HWC", "scale": 255})
    assert r.status_code == 422 and "declare only mean, std, size" in r.json()["detail"]
    r = register_dataset(http, "wds", "webdataset", data / "wds", features={"mean": [0.5], "std": [0.5]})
    assert r.status_code == 422 and "images have 3 channel(s)" in r.json()["detail"]


def test_a_shard_replaced_after_registration_fails_the_job_instead_of_training_on_other_data(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path
) -> None:
    app, http, data = live
    train_ids = shards(data / "train", 60, 0)
    shards(data / "test", 30, 1)
    name = ready_model(live, tmp_path, "swapped", ("webdataset", data / "train"), data / "test")
    (data / "train" / "shard-0002.tar").unlink()  # one shard gone: its samples' IDs would lie
    job = job_of_request(live, name, train_ids[:2])
    assert job["state"] == "failed" and "changed since registration" in job["error"], job


def test_a_file_changed_while_the_job_ran_fails_it_before_anything_is_published(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash was checked when the job loaded the data only: a probe's in-place edit of an npy file
    mid-run was published as a version scored on the changed rows. The files are looked at again before
    publishing (their stat, and their hash when it moved)."""
    app, http, data = live
    train_ids = npy_folder(data / "train", 60, 0)
    shards(data / "test", 30, 1)
    train = register_dataset(http, "train", "npy", data / "train", features={"layout": "HWC", "scale": 255})
    test = register_dataset(http, "test", "webdataset", data / "test")
    name = register_model(http, tmp_path, "edited", train.json()["id"], test.json()["id"])
    assert validate_model(app.settings, model_id(app, name)) == "ready"
    monkeypatch.setenv("UNLEARN_FAILPOINTS", "publish.started=sleep(8)")  # a window to edit the file in
    r = http.post(f"/v1/models/{name}/deletion-requests", json={"sample_ids": train_ids[:2]})
    assert r.status_code == 202, r.text
    worker = threading.Thread(target=process_model, args=(app.settings, model_id(app, name)))
    worker.start()
    try:
        job_id = wait_until(lambda: http.get(f"/v1/deletion-requests/{r.json()['id']}").json()["job_id"],
                            timeout=60, what="a job for the request")  # fmt: skip
        wait_until(lambda: http.get(f"/v1/jobs/{job_id}").json()["phase"] == "publish", timeout=120,
                   interval=0.05, what="the job's publish step")  # fmt: skip
        x = np.load(data / "train" / "x.npy", mmap_mode="r+")
        x[:5] = 255 - x[:5]
        x.flush()
        del x
    finally:
        worker.join(timeout=120)
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and "changed during the job" in job["error"], job
    assert [v["version"] for v in http.get(f"/v1/models/{name}/versions").json()] == ["v1"]


def test_an_unreadable_image_of_a_manifest_fails_the_job_with_one_line_naming_the_file(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path
) -> None:
    """The reader process's error reaches the client as the original error, not as the DataLoader's
    re-raise with a traceback through our code in its message. (A file gone altogether is refused before
    any reading, naming the manifest's line.)"""
    app, http, data = live
    x, y, ids = images(60, 0)
    folder = data / "manifest"
    folder.mkdir()
    rows = ["sample_id,path,label"]
    for i, (img, label, sid) in enumerate(zip(x, y, ids, strict=True)):
        Image.fromarray(img).save(folder / f"img-{i:04d}.png")
        rows.append(f"{sid},img-{i:04d}.png,{label}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    shards(data / "test", 30, 1)
    name = ready_model(live, tmp_path, "manifest", ("csv_manifest", folder / "m.csv"), data / "test")
    (folder / "img-0042.png").write_bytes(b"not an image")  # the manifest's own hash does not cover it
    job = job_of_request(live, name, ids[:2])
    assert job["state"] == "failed", job
    error = job["error"]
    assert "UnidentifiedImageError: cannot identify image file" in error and "img-0042.png" in error, error
    assert "\n" not in error and "Traceback" not in error and "DataLoader" not in error, error


def test_an_odd_image_in_the_calibrating_half_of_the_test_set_makes_the_model_invalid(
    live: tuple[LiveApp, httpx.Client, Path], tmp_path: Path
) -> None:
    """Validation scored the training set and the test set's scoring half; the half that calibrates was
    read by jobs alone, so a client's model with one image of another size there was `ready` and every
    deletion then failed on it (a probe)."""
    app, http, data = live
    shards(data / "train", 30, 0)
    x, y, ids = images(40, 1)
    odd = max(i for i, sid in enumerate(ids) if _in_calibration_half(sid))  # not the first row read
    folder = data / "test"
    folder.mkdir()
    rows = ["sample_id,path,label"]
    for i, (img, label, sid) in enumerate(zip(x, y, ids, strict=True)):
        wide = np.resize(img, (10, 10, 3)) if i == odd else img
        Image.fromarray(wide).save(folder / f"img-{i:04d}.png")
        rows.append(f"{sid},img-{i:04d}.png,{label}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    train_id = register_dataset(http, "train", "webdataset", data / "train").json()["id"]
    test_id = register_dataset(http, "test", "csv_manifest", folder / "m.csv").json()["id"]
    register_model(http, tmp_path, "odd", train_id, test_id)
    assert validate_model(app.settings, model_id(app, "odd")) == "invalid"
    detail = http.get("/v1/models/odd").json()["status_detail"]
    assert "calibration half of the test set `test`" in detail and f"img-{odd:04d}.png" in detail, detail
    assert "features.size" in detail, detail
