"""Bring your own model (issue 15): a torchvision, timm or plugin classifier registered through the HTTP
API (a real uvicorn on a socket), validated and unlearned by the worker's own functions in-process, its
new version downloaded and loaded strictly into the plain builder. What is too large is refused before it
is allocated, and a validation whose worker keeps dying is given up."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.numpy import save as save_numpy
from safetensors.torch import load_model, save_model
from sqlalchemy import func, select
from torch import nn

from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, Model, ModelVersion
from service.core.settings import Settings
from tests.factories import make_key
from tests.helpers import wait_until
from tests.liveapp import LiveApp, prepared, serve
from tests.plugins import installed_plugin
from workers.claims import MAX_ATTEMPTS
from workers.orchestrate import process_model
from workers.validate import validate_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
K = 4


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveApp, httpx.Client]]:
    settings = prepared(
        Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE=f"q-{uuid.uuid4().hex[:8]}")  # type: ignore[call-arg]
    )
    with session_scope(settings.resolved_database_url) as s:
        key = make_key(s, scopes=("admin", "deletion:write", "jobs:read"))
    with installed_plugin(tmp_path / "site"), serve(settings) as app, app.client(key) as http:
        yield app, http


def upload_dataset(http: httpx.Client, name: str, n: int, seed: int) -> tuple[str, list[str]]:
    """n RGB 32x32 images, K classes, uploaded as an .npz; returns the dataset id and sample ids."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.normal(size=(n, 3, 32, 32)).astype(np.float32) + y[:, None, None, None]  # learnable
    ids = np.array([f"{name}-{i:03d}" for i in range(n)])
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y.astype(np.int64), ids=ids)
    r = http.post("/v1/datasets/upload", data={"name": name}, files={"file": (f"{name}.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    return r.json()["id"], ids.tolist()


def register(
    http: httpx.Client, name: str, architecture: str, weights: bytes, **spec: object
) -> httpx.Response:
    train = spec.pop("train", None) or upload_dataset(http, f"{name}-train", 24, 0)[0]
    test = spec.pop("test", None) or upload_dataset(http, f"{name}-test", 8, 1)[0]
    body = {
        "name": name,
        "architecture": architecture,
        "num_classes": K,
        "train_dataset": train,
        "test_dataset": test,
        **spec,
    }
    return http.post(
        "/v1/models", data={"spec": json.dumps(body)}, files={"checkpoint": ("v1.safetensors", weights)}
    )


def model_id(app: LiveApp, name: str) -> str:
    with session_scope(app.db) as s:
        return s.scalars(select(Model.id).where(Model.name == name)).one()


def plain(architecture: str) -> nn.Module:
    """The module as its own library builds it: what the product team trained and exports."""
    kind, _, name = architecture.partition(":")
    if kind == "torchvision":
        return torchvision.models.get_model_builder(name)(weights=None, num_classes=K)
    if kind == "timm":
        return timm.create_model(name, pretrained=False, num_classes=K)
    import unlearn_tiny_plugin

    return getattr(unlearn_tiny_plugin, name)(num_classes=K)


def exported(module: nn.Module, path: Path) -> bytes:
    save_model(module, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("architecture", ["torchvision:resnet18", "timm:resnet10t", "plugin:tiny_convnet"])
def test_an_own_model_is_registered_validated_unlearned_and_published_loadable_by_its_builder(
    live: tuple[LiveApp, httpx.Client], tmp_path: Path, architecture: str
) -> None:
    app, http = live
    torch.manual_seed(0)
    v1_module = plain(architecture)
    train_id, train_ids = upload_dataset(http, "own-train", 24, 0)
    r = register(http, "own", architecture, exported(v1_module, tmp_path / "v1.safetensors"), train=train_id)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "validating"
    mid = model_id(app, "own")

    assert validate_model(app.settings, mid) == "ready"  # what the worker's task runs
    got = http.get("/v1/models/own").json()
    assert got["status"] == "ready", got

    r = http.post("/v1/models/own/deletion-requests", json={"sample_ids": train_ids[:3]})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    assert process_model(app.settings, mid) == "idle"  # UGradSL+ through the adapter's features/head
    req = http.get(f"/v1/deletion-requests/{request_id}").json()
    assert (req["state"], req["model_version"]) == ("completed", "v2"), req

    r = http.get("/v1/models/own/versions/v2/checkpoint")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-checkpoint-sha256"]
    head = http.head("/v1/models/own/versions/v2/checkpoint")  # the size and digest, no body (a probe)
    assert (head.status_code, head.content) == (200, b"")
    assert int(head.headers["content-length"]) == len(r.content)
    assert head.headers["x-checkpoint-sha256"] == r.headers["x-checkpoint-sha256"]
    url, size = "/v1/models/own/versions/v2/checkpoint", len(r.content)
    part = http.get(url, headers={"Range": "bytes=2-9"})
    assert (part.status_code, part.content) == (206, r.content[2:10])
    # a unit RFC 9110 has ignored (the whole file), and refusals as problem bodies (they were text/plain)
    whole = http.get(url, headers={"Range": "items=0-5"})
    assert (whole.status_code, whole.content) == (200, r.content)
    for unreadable in ("bytes=abc", "bytes=5-2"):  # ignored as RFC 9110 allows: the whole file
        assert http.get(url, headers={"Range": unreadable}).content == r.content, unreadable
    refused = http.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert refused.status_code == 416 and refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["content-range"] == f"bytes */{size}"
    # a set is satisfiable if any member is (RFC 9110 14.1.1); only ASCII digits are read (a review)
    some = http.get(url, headers={"Range": f"bytes=2-9, {size + 10}-"})
    assert (some.status_code, some.content) == (206, r.content[2:10])
    for unreadable in ("bytes=--5", "bytes=1_0-2_0", "bytes=+2-9", "bytes=,", f"bytes={'9' * 5000}-"):
        assert http.get(url, headers={"Range": unreadable}).content == r.content, unreadable
    # a range on a file that changed since (If-Range no longer matches) is the whole file, not a refusal
    for wanted in (f"bytes={size + 10}-", "bytes=2-9"):
        changed = http.get(url, headers={"Range": wanted, "If-Range": '"an-old-etag"'})
        assert (changed.status_code, changed.content) == (200, r.content), wanted
    same = http.get(url, headers={"Range": "bytes=2-9", "If-Range": r.headers["etag"]})
    assert (same.status_code, same.content) == (206, r.content[2:10])
    # the ETag is the content's digest: a client holding it re-reads nothing (it was always the whole file)
    assert r.headers["etag"] == f'"{r.headers["x-checkpoint-sha256"]}"'
    for tags in (r.headers["etag"], f'"other", W/{r.headers["etag"]}', "*"):
        cached = http.get(url, headers={"If-None-Match": tags, "Range": "bytes=2-9"})
        assert (cached.status_code, cached.content) == (304, b""), tags
        assert cached.headers["etag"] == r.headers["etag"]
    assert http.get(url, headers={"If-None-Match": '"other"'}).content == r.content
    since = r.headers["last-modified"]
    assert http.get(url, headers={"If-Modified-Since": since}).status_code == 304
    assert http.get(url, headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}).content == r.content
    assert http.get(url, headers={"If-Modified-Since": "not a date"}).content == r.content
    assert http.get(url, headers={"If-Match": r.headers["etag"]}).content == r.content
    for tags in ('"other"', f"W/{r.headers['etag']}"):  # If-Match compares strongly
        changed_since = http.get(url, headers={"If-Match": tags})
        assert changed_since.status_code == 412 and "If-Match" in changed_since.json()["detail"], tags
    early = http.get(url, headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert early.status_code == 412 and "If-Unmodified-Since" in early.json()["detail"]
    # a field on two lines is one list (RFC 9110 5.3): the second line's tag matches
    both = http.get(url, headers=[("If-Match", '"other"'), ("If-Match", r.headers["etag"])])
    assert both.content == r.content
    written = email.utils.parsedate_to_datetime(since)  # asctime's form has no zone: it is GMT
    asctime = written.strftime("%a %b %d %H:%M:%S %Y")
    assert http.get(url, headers={"If-Modified-Since": asctime}).status_code == 304
    ahead = "Fri, 01 Jan 2100 00:00:00 GMT"  # a client's clock, not our date: ignored
    assert http.get(url, headers={"If-Modified-Since": ahead}).content == r.content
    (tmp_path / "v2.safetensors").write_bytes(r.content)
    # v1's weights copied over v2's file: refused, not served under v2's digest (a probe)
    with session_scope(app.settings.resolved_database_url) as s:
        where = (ModelVersion.model_id == mid, ModelVersion.number == 2)
        stored = Path(s.scalars(select(ModelVersion.checkpoint_uri).where(*where)).one())
    stored.write_bytes(exported(v1_module, tmp_path / "v1-again.safetensors"))
    swapped = http.get(url)
    assert swapped.status_code == 409 and "changed on storage since it was published" in swapped.text
    stored.write_bytes(r.content)
    assert http.get(url).content == r.content
    v2_module = plain(architecture)
    load_model(v2_module, str(tmp_path / "v2.safetensors"), strict=True)  # the plain builder, strictly
    changed = [k for k, v in v2_module.state_dict().items() if not torch.equal(v, v1_module.state_dict()[k])]
    assert changed, "v2 has the same weights as v1: nothing was unlearned"


def test_an_oversized_builtin_is_a_422_at_registration_naming_its_size(
    live: tuple[LiveApp, httpx.Client],
) -> None:
    _, http = live
    hidden = [30000] * 100  # the example: ~89 billion parameters
    r = register(
        http, "huge", "mlp", save_numpy({"w": np.zeros(1, np.float32)}), arch_kwargs={"hidden": hidden}
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "89,105,040,004 parameters" in detail and "at most 100,000,000 (UNLEARN_MAX_PARAMS)" in detail
    assert http.get("/v1/models").json() == []


@pytest.mark.parametrize(
    ("architecture", "arch_kwargs", "says"),
    [
        ("resnet50", {}, "unknown architecture 'resnet50'"),
        ("keras:resnet50", {}, "unknown architecture source 'keras'"),
        ("timm:hf-hub:org/model", {}, "is not a timm model name"),
        ("plugin:not_installed", {}, "no architecture plugin 'not_installed' is installed"),
        ("torchvision:resnet18", {"weights": "IMAGENET1K_V1"}, "pretrained weights"),
        ("timm:resnet10t", {"pretrained": True}, "pretrained weights"),
        ("small_cnn", {"image_size": 10}, "divisible by 4"),
        ("mlp", {"depth": 3}, "mlp takes no 'depth' (it takes in_features, num_classes, hidden)"),
        ("mlp", {"num_classes": 7}, "differs from num_classes 4"),
    ],
)
def test_architectures_the_api_can_refuse_without_torch_are_a_422(
    live: tuple[LiveApp, httpx.Client], architecture: str, arch_kwargs: dict, says: str
) -> None:
    _, http = live
    ckpt = save_numpy({"w": np.zeros(1, np.float32)})
    r = register(http, "refused", architecture, ckpt, arch_kwargs=arch_kwargs)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]


def test_an_oversized_torchvision_model_is_invalid_before_anything_is_allocated(
    live: tuple[LiveApp, httpx.Client], tmp_path: Path
) -> None:
    app, http = live
    r = register(http, "vith", "torchvision:vit_h_14", save_numpy({"w": np.zeros(1, np.float32)}))
    assert r.status_code == 202, r.text  # the API cannot size it without torch: the worker does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert validate_model(app.settings, model_id(app, r.json()["name"])) == "invalid"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB: the 2.4 GB model was allocated"
    detail = http.get("/v1/models/vith").json()["status_detail"]
    assert detail == (
        "ModelTooLarge: torchvision:vit_h_14 has 630,769,924 parameters; this service admits at most "
        "100,000,000 (UNLEARN_MAX_PARAMS)"
    )


def test_kwargs_the_builder_rejects_make_the_model_invalid_saying_so(
    live: tuple[LiveApp, httpx.Client],
) -> None:
    app, http = live
    ckpt = save_numpy({"w": np.zeros(1, np.float32)})
    r = register(http, "typo", "torchvision:resnet18", ckpt, arch_kwargs={"widht_per_group": 8})
    assert r.status_code == 202
    assert validate_model(app.settings, model_id(app, r.json()["name"])) == "invalid"
    detail = http.get("/v1/models/typo").json()["status_detail"]
    assert "TypeError" in detail and "widht_per_group" in detail


def test_an_unknown_builder_makes_the_model_invalid_in_plain_words(
    live: tuple[LiveApp, httpx.Client],
) -> None:
    """A KeyError's text is the repr of its message: the detail read 'KeyError: "torchvision has no
    classification model builder 'nope'"', quotes within quotes (a probe)."""
    app, http = live
    ckpt = save_numpy({"w": np.zeros(1, np.float32)})
    r = register(http, "nope", "torchvision:nope", ckpt)
    assert r.status_code == 202
    assert validate_model(app.settings, model_id(app, r.json()["name"])) == "invalid"
    detail = http.get("/v1/models/nope").json()["status_detail"]
    assert detail == "UnknownArchitecture: torchvision has no classification model builder 'nope'"


def test_validation_is_given_up_after_max_attempts_when_its_worker_dies_each_time(
    live: tuple[LiveApp, httpx.Client], tmp_path: Path
) -> None:
    """Three worker processes are SIGKILLed mid-validation (as the OOM killer would); the next
    validation does not try a fourth time: the model is invalid, saying why."""
    app, http = live
    r = register(
        http,
        "doomed",
        "small_cnn",
        save_numpy({"w": np.zeros(1, np.float32)}),
        arch_kwargs={"in_channels": 3, "image_size": 32},
    )
    assert r.status_code == 202, r.text
    mid = model_id(app, "doomed")
    env = {
        **os.environ,
        "UNLEARN_VAR_DIR": str(app.settings.var_dir),
        "UNLEARN_LEASE_SECONDS": "1",  # a killed worker's lease lapses at once
        "UNLEARN_FAILPOINTS": "validate.started=sleep(60)",
        "PYTHONPATH": str(ROOT),
    }
    code = (
        "from service.core.settings import get_settings; from workers.validate import validate_model; "
        f"validate_model(get_settings(), {mid!r})"
    )

    def started() -> int:
        with session_scope(app.db) as s:
            return (
                s.scalar(
                    select(func.count(AuditEvent.id)).where(
                        AuditEvent.entity_id == mid, AuditEvent.action == "model.validation_started"
                    )
                )
                or 0
            )

    for attempt in range(1, MAX_ATTEMPTS + 1):
        worker = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)

        def validating(worker: subprocess.Popen[bytes] = worker, attempt: int = attempt) -> bool:
            assert worker.poll() is None, "the worker ended before it started validating"
            return started() >= attempt

        wait_until(validating, timeout=120, what="the worker to start validating")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        wait_until(lambda: lease_lapsed(app.db, mid), timeout=30, what="the killed worker's lease to lapse")
    settings = app.settings.model_copy(update={"lease_seconds": 1.0})
    assert validate_model(settings, mid) == "invalid"
    assert started() == MAX_ATTEMPTS  # no fourth attempt began
    with session_scope(app.db) as s:
        m = s.get_one(Model, mid)
        assert m.status == "invalid"
        assert (
            m.status_detail is not None
            and f"gave up validating after {MAX_ATTEMPTS} attempts" in m.status_detail
        )


def lease_lapsed(db: str, model_id: str) -> bool:
    """The model's lease (1 s, no longer renewed by the killed worker) has run out."""
    with session_scope(db) as s:
        expires = s.get_one(Model, model_id).lease_expires_at
    if expires is None:
        return True
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires < datetime.now(UTC)
