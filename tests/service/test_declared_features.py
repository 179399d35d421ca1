"""Bring your own data (issue 15): a dataset declares its features at registration, impossible declarations
are refused before anything is stored, the worker's loader applies the declaration, and a model that
cannot read its data turns `invalid` with the fix in words, not PyTorch's message. Through the HTTP API
(TestClient, embedded database); validation runs in-process, as a worker would run it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from models.architectures import build_model
from models.checkpoints import save_checkpoint
from service.api.app import create_app
from service.core.db.engine import session_scope
from service.core.db.tables import Model
from service.core.registry import register_dataset
from service.core.settings import Settings
from tests.factories import make_key
from tests.liveapp import prepared
from workers.validate import validate_model

HW16 = {"layout": "HW", "scale": 16}


@dataclass
class Api:
    client: TestClient
    settings: Settings

    def upload(self, name: str, x: np.ndarray, y: np.ndarray, features: Any = None) -> Any:
        data = {"name": name}
        if features is not None:
            data["features"] = features if isinstance(features, str) else json.dumps(features)
        return self.client.post("/v1/datasets/upload", data=data, files={"file": ("d.npz", npz(x, y))})

    def register_model(self, name: str, train: str, test: str, checkpoint: bytes, **arch_kwargs: int) -> str:
        spec = {
            "name": name,
            "architecture": "small_cnn",
            "arch_kwargs": arch_kwargs,
            "num_classes": 10,
            "train_dataset": train,
            "test_dataset": test,
        }
        r = self.client.post(
            "/v1/models",
            data={"spec": json.dumps(spec)},
            files={"checkpoint": ("v1.safetensors", checkpoint)},
        )
        assert r.status_code == 202, r.text
        with session_scope(self.settings.resolved_database_url) as s:
            model_id = s.scalars(select(Model.id).where(Model.name == name)).one()
        assert validate_model(self.settings, model_id) in ("ready", "invalid")
        return name

    def nothing_stored(self) -> None:
        assert self.client.get("/v1/datasets").json() == []
        uploads = self.settings.dataset_dir / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []


def npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y.astype(np.int64), ids=np.array([f"s{i:04d}" for i in range(len(y))]))
    return buf.getvalue()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = prepared(Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-feat"))  # type: ignore[call-arg]
    with session_scope(settings.resolved_database_url) as s:
        admin = make_key(s, scopes=("admin",))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {admin}"}) as client:
        yield Api(client, settings)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as the client has them: (N, 8, 8) uint8 pixels 0..16, and labels."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped,unused-ignore]

    bunch = load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> bytes:
    """A small_cnn (1 channel, 8x8) trained briefly on the float digits."""
    images, labels = digits
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    x, y = torch.from_numpy(images[:1400, None].astype(np.float32) / 16), torch.from_numpy(labels[:1400])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "v1.safetensors"
    save_checkpoint(model, path, architecture="small_cnn", kwargs={}, num_classes=10)
    return path.read_bytes()


def test_declared_uint8_digits_validate_exactly_like_their_float_twin(
    api: Api, digits: tuple[np.ndarray, np.ndarray], checkpoint: bytes
) -> None:
    images, labels = digits
    ids = {}
    for name, x, features in (
        ("u8-train", images[:1400], HW16),
        ("u8-test", images[1400:], HW16),
        ("f-train", images[:1400, None].astype(np.float32) / 16, None),
        ("f-test", images[1400:, None].astype(np.float32) / 16, None),
    ):
        r = api.upload(name, x, labels[:1400] if "train" in name else labels[1400:], features)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    r = api.client.get(f"/v1/datasets/{ids['u8-train']}")
    assert r.json()["features"] == {"type": "image", "dtype": "uint8", "layout": "HW", "scale": 16.0}
    assert api.client.get(f"/v1/datasets/{ids['f-train']}").json()["features"] is None

    kwargs = {"in_channels": 1, "image_size": 8}
    api.register_model("declared", ids["u8-train"], ids["u8-test"], checkpoint, **kwargs)
    api.register_model("floats", ids["f-train"], ids["f-test"], checkpoint, **kwargs)
    declared, floats = (api.client.get(f"/v1/models/{m}").json() for m in ("declared", "floats"))
    assert declared["status"] == "ready", declared["status_detail"]
    assert floats["status"] == "ready", floats["status_detail"]
    metrics = [
        api.client.get(f"/v1/models/{m}/versions/v1").json()["metrics"] for m in ("declared", "floats")
    ]
    assert metrics[0] == metrics[1]
    assert metrics[0]["test_accuracy"] > 0.5  # a model that reads its data, not noise


def test_undeclared_uint8_images_are_refused_naming_the_fix(
    api: Api, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    r = api.upload("u8", images[:100], labels[:100])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "uint8 pixels" in detail and "without a declaration" in detail
    assert "features.scale" in detail and "features.layout" in detail
    assert '"HW": one sample is stored (8, 8)' in detail and 'features: {layout: "HW", scale: 255}' in detail
    api.nothing_stored()


IMPOSSIBLE = [
    pytest.param({"layout": "HWC", "scale": 16}, "layout 'HWC' means 3 axes per sample", id="layout-vs-rank"),
    pytest.param(
        {"layout": "HW", "scale": 16, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        "features.mean has 3 value(s) but the samples have 1 channel(s)",
        id="channels-vs-mean",
    ),
    pytest.param(
        {"layout": "HW", "scale": 16, "dtype": "float32"}, "features.dtype is 'float32'", id="dtype"
    ),
    pytest.param({"layout": "HW", "scale": 0}, "scale", id="zero-scale"),
    pytest.param({"layout": "HW", "scale": -255}, "scale", id="negative-scale"),
    pytest.param({"layout": "HW", "scale": 16, "std": [0.0]}, "std", id="zero-std"),
    pytest.param('{"layout": "HW", "scale": NaN}', "NaN", id="nan-scale"),
    pytest.param('{"layout": "HW", "scale": 16, "mean": [NaN]}', "NaN", id="nan-mean"),
    pytest.param(
        {"layout": "HW", "scale": 16, "mean": [0.1], "std": [0.2, 0.3]}, "one of each", id="mean-vs-std"
    ),
    pytest.param({"layout": "HW"}, "declare features.scale", id="integers-without-scale"),
    pytest.param({"scale": 16}, "features.layout is required", id="no-layout"),
    pytest.param({"layout": "WH", "scale": 16}, "layout", id="unknown-layout"),
    pytest.param({"layout": "HW", "scale": 16, "gamma": 2}, "gamma", id="unknown-field"),
    pytest.param("{layout: HW}", "not valid JSON", id="not-json"),
]


@pytest.mark.parametrize(("features", "says"), IMPOSSIBLE)
def test_an_impossible_declaration_on_upload_is_a_422_naming_it_and_nothing_is_stored(
    api: Api, digits: tuple[np.ndarray, np.ndarray], features: Any, says: str
) -> None:
    images, labels = digits
    r = api.upload("bad", images[:50], labels[:50], features)
    assert r.status_code == 422, r.text
    body = r.json()
    assert says in body["detail"] + json.dumps(body.get("errors")), body
    api.nothing_stored()


def test_a_declaration_on_vectors_says_they_are_read_as_stored(api: Api) -> None:
    """A probe declared {"dtype": "uint8"} on float32 tabular rows and was told a layout is required,
    which vectors cannot have."""
    rows = np.random.default_rng(0).normal(size=(50, 13)).astype(np.float32)
    r = api.upload("wine", rows, np.arange(50) % 3, {"dtype": "uint8"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "declarations apply to images" in detail and "vectors (13 values, float32)" in detail
    assert "register it without features" in detail
    api.nothing_stored()
    assert api.upload("wine", rows, np.arange(50) % 3).status_code == 201


def by_path(api: Api, name: str, x: np.ndarray, y: np.ndarray, features: Any = None) -> Any:
    path = api.settings.dataset_dir / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(npz(x, y))
    body: dict[str, Any] = {"name": name, "kind": "npz", "uri": str(path)}
    if isinstance(features, str):  # raw JSON, e.g. holding NaN
        raw = json.dumps(body)[:-1] + f', "features": {features}}}'
        return api.client.post("/v1/datasets", content=raw, headers={"content-type": "application/json"})
    if features is not None:
        body["features"] = features
    return api.client.post("/v1/datasets", json=body)


@pytest.mark.parametrize(("features", "says"), [p for p in IMPOSSIBLE if p.id != "not-json"])
def test_an_impossible_declaration_by_path_is_a_422_naming_it(
    api: Api, digits: tuple[np.ndarray, np.ndarray], features: Any, says: str
) -> None:
    images, labels = digits
    r = by_path(api, "bad", images[:50], labels[:50], features)
    assert r.status_code == 422, r.text
    body = r.json()
    said = body["detail"] + json.dumps(body.get("errors"))
    assert says in said or (says == "NaN" and "finite" in said), body
    assert api.client.get("/v1/datasets").json() == []


def test_hwc_images_with_mean_and_std_are_declared_by_path(api: Api) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    features = {"layout": "HWC", "scale": 255, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    r = by_path(api, "cifarish", x, np.arange(6) % 3, features)
    assert r.status_code == 201, r.text
    assert r.json()["features"] == {"type": "image", "dtype": "uint8", **features, "scale": 255.0}
    listed = api.client.get("/v1/datasets").json()
    assert [d["features"]["layout"] for d in listed] == ["HWC"]


def test_a_manifest_may_only_normalise_and_resize(api: Api) -> None:
    folder = api.settings.dataset_dir / "m"
    folder.mkdir(parents=True)
    np.save(folder / "a.npy", np.zeros((3, 4, 4), dtype=np.float32))
    manifest = folder / "manifest.csv"
    manifest.write_text("sample_id,path,label\na,a.npy,0\n")
    body = {"name": "m", "kind": "csv_manifest", "uri": str(manifest)}
    r = api.client.post("/v1/datasets", json={**body, "features": {"layout": "HW", "scale": 255}})
    assert r.status_code == 422 and "declare only mean, std, size" in r.json()["detail"]
    r = api.client.post("/v1/datasets", json={**body, "features": {"mean": [0.5]}})
    assert r.status_code == 422 and "3 channel(s)" in r.json()["detail"]
    r = api.client.post("/v1/datasets", json={**body, "features": {"mean": [0.5] * 3, "size": [8, 8]}})
    assert r.status_code == 201, r.text
    assert r.json()["features"] == {"type": "image", "mean": [0.5] * 3, "size": [8, 8]}


def test_the_issues_digits_registered_before_declarations_turn_the_model_invalid_with_the_fix(
    api: Api, checkpoint: bytes
) -> None:
    """The report: (N, 28, 28) uint8 registered without a declaration (as was possible before), a CNN
    reading (1, 28, 28): the model is `invalid` and says what to declare, not PyTorch's message."""
    path = api.settings.dataset_dir / "digits-u8.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    y = np.arange(300) % 10
    path.write_bytes(npz(x, y))
    with session_scope(api.settings.resolved_database_url) as s:
        # the same file as a test set too, registered apart: a test set may not be the training set
        dataset_id, test_id = (
            register_dataset(
                s,
                tenant="default",
                name=name,
                kind="npz",
                uri=str(path),
                sample_ids=[f"s{i:04d}" for i in range(300)],
                labels=y.tolist(),
                actor="test",
            ).id
            for name in ("digits-u8", "digits-u8-test")
        )
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28)
    ckpt = api.settings.var_dir / "28.safetensors"
    save_checkpoint(model, ckpt, architecture="small_cnn", kwargs={}, num_classes=10)
    api.register_model("digits", dataset_id, test_id, ckpt.read_bytes(), in_channels=1, image_size=28)
    out = api.client.get("/v1/models/digits").json()
    assert out["status"] == "invalid"
    assert out["status_detail"] == (
        "the model `small_cnn` with arch_kwargs {in_channels: 1, image_size: 28} expects one sample of shape "
        "(1, 28, 28); the training set `digits-u8` holds samples of shape (28, 28) (uint8). "
        'Declare `features: {layout: "HW", scale: 255}` at dataset registration.'
    )
