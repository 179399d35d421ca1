"""The HTTP contract, through the real ASGI app and database (no worker needed: nothing here waits for
a job). Runs on the embedded default and on PostgreSQL + Redis."""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from service.api.app import create_app, served_app
from service.api.pagination import encode_cursor
from service.api.views import PENDING_COUNT_CAP
from service.cli.audit_log import cmd_audit_verify
from service.cli.client import Client as CliClient
from service.cli.errors import UsageError
from service.cli.server import cmd_keys
from service.core import audit, proofs
from service.core.canonical import canonical_json
from service.core.db.engine import session_scope
from service.core.db.tables import ApiKey, AuditEvent, DeletionRequest, Model, ModelVersion
from service.core.deletions import body_digest
from service.core.proofs import BODY_KEYS
from service.core.settings import Settings
from tests.conftest import Backend
from tests.factories import make_key, make_model, publish_version
from tests.helpers import migrated


@dataclass
class Api:
    client: TestClient
    url: str
    key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def counts(self) -> tuple[int, int]:
        with session_scope(self.url) as s:
            return (
                s.scalar(select(func.count()).select_from(DeletionRequest)) or 0,
                s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
            )


def serve_toy(settings: Settings) -> Iterator[Api]:
    """The app on a fresh database holding model `toy` (50 training samples) and a non-admin key."""
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    migrated(url)
    with session_scope(url) as s:
        make_model(s, name="toy", n_train=50)
        key = make_key(s, scopes=("deletion:write", "jobs:read", "audit:read"))
    with TestClient(create_app(settings)) as client:
        yield Api(client, url, key)


def test_the_served_app_freezes_the_heap_it_starts_with_and_still_serves(tmp_path) -> None:
    """What a server process holds once the app is built leaves the collector's full passes (the pauses
    were the p99 of every route under load); the app it returns still answers."""
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    before = gc.get_freeze_count()
    try:
        app = served_app(settings)
        assert gc.get_freeze_count() > before + 10_000
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        gc.unfreeze()


@pytest.fixture
def api(backend: Backend) -> Iterator[Api]:
    yield from serve_toy(backend.settings())


def post(api: Api, body: object, model: str = "toy", **headers: str):  # noqa: ANN201
    return api.client.post(
        f"/v1/models/{model}/deletion-requests", json=body, headers={**api.auth(), **headers}
    )


def test_valid_request_is_accepted_and_readable(api: Api) -> None:
    r = post(api, {"sample_ids": ["toy-0003", "toy-0007", "toy-0003"], "reference": "ticket-1"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] in ("received", "queued")
    assert body["sample_count"] == 2  # deduplicated
    assert body["reference"] == "ticket-1"
    got = api.client.get(f"/v1/deletion-requests/{body['id']}", headers=api.auth())
    assert got.status_code == 200
    assert got.json()["id"] == body["id"]


def test_a_models_pending_requests_are_counted_exactly_up_to_the_cap_and_flagged_beyond(api: Api) -> None:
    """Past the cap the count stops (reading a model must not cost a scan of the whole backlog), and says
    it stopped."""

    def pending() -> tuple[int, bool]:
        body = api.client.get("/v1/models/toy", headers=api.auth()).json()
        return body["pending_requests"], body["pending_requests_capped"]

    assert pending() == (0, False)

    def batch(n: int, start: int) -> None:
        items = [{"sample_ids": [f"toy-{i % 50:04d}"]} for i in range(start, start + n)]
        r = api.client.post(
            "/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=api.auth()
        )
        assert r.status_code == 200 and r.json()["accepted"] == n, r.text

    batch(999, 0)
    assert pending() == (999, False)
    batch(1, 999)
    assert pending() == (PENDING_COUNT_CAP, False)
    batch(1, 1000)
    assert pending() == (PENDING_COUNT_CAP, True)


def test_unknown_ids_are_rejected_by_name_and_nothing_is_written(api: Api) -> None:
    before = api.counts()
    r = post(api, {"sample_ids": ["toy-0001", "nope-1", "nope-2"]})
    assert r.status_code == 422
    body = r.json()
    assert body["unknown_ids"] == ["nope-1", "nope-2"]
    assert body["unknown_count"] == 2
    assert api.counts() == before


def forget(url: str, model: str, ids: list[str]) -> None:
    """Publish a version that forgot `ids`, as a completed job leaves it."""
    with session_scope(url) as s:
        publish_version(s, s.scalars(select(Model).where(Model.name == model)).one(), ids)


def test_a_request_that_would_forget_every_remaining_training_sample_is_refused(api: Api) -> None:
    """Its job could only fail (no retain set), and fail every request coalesced with it: refused at
    intake, single or batch item, with a 422 that says why and what to do; one sample left is accepted."""
    everything = [f"toy-{i:04d}" for i in range(50)]
    before = api.counts()
    r = post(api, {"sample_ids": everything})
    assert r.status_code == 422, r.text
    assert r.json()["remaining_training_samples"] == 50
    assert "all 50 remaining training sample(s)" in r.json()["detail"]
    assert "stop serving model 'toy'" in r.json()["detail"]
    forget(api.url, "toy", everything[:47])  # 3 left: toy-0047..49
    left = everything[47:]
    for body in ({"sample_ids": left}, {"sample_ids": [*left, "toy-0001"]}):  # one already forgotten
        r = post(api, body)
        assert r.status_code == 422, r.text
        assert r.json()["remaining_training_samples"] == 3
        assert "(50 in its training set, 47 already forgotten)" in r.json()["detail"]
    assert api.counts() == before  # nothing written
    batch = api.client.post(
        "/v1/models/toy/deletion-requests/batch",
        json={"requests": [{"sample_ids": left}, {"sample_ids": left[:2]}, {"sample_ids": ["toy-0002"]}]},
        headers=api.auth(),
    )
    assert [x["status"] for x in batch.json()["results"]] == [422, 202, 202], batch.text
    assert batch.json()["results"][0]["problem"] == r.json()  # as its own POST was answered
    assert post(api, {"sample_ids": left[1:]}).status_code == 202  # leaves one sample


def test_an_ordinary_request_does_not_count_the_forgotten_samples(api: Api) -> None:
    """The emptiness check reads the forgotten count only for a request naming as many new samples as
    the model has left: intake's hot path keeps its round trips."""
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert post(api, {"sample_ids": ["toy-0001", "toy-0002"]}).status_code == 202
        ordinary = list(statements)
        assert post(api, {"sample_ids": [f"toy-{i:04d}" for i in range(50)]}).status_code == 422
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    counts = [x for x in statements if "count(" in x.lower() and "forgotten_samples" in x]
    assert ordinary and len(counts) == 1 and counts[0] not in ordinary, statements


@pytest.mark.parametrize(
    "body",
    [
        {"sample_ids": []},
        {},
        {"sample_ids": "toy-0001"},
        {"sample_ids": [1, 2]},
        {"sample_ids": [""]},
        {"sample_ids": ["toy-0001"], "extra": 1},
    ],
)
def test_malformed_bodies_get_422_naming_the_field(api: Api, body: object) -> None:
    before = api.counts()
    r = post(api, body)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"], r.json()
    assert api.counts() == before


def test_invalid_json_gets_422(api: Api) -> None:
    r = api.client.post(
        "/v1/models/toy/deletion-requests",
        content=b"{not json",
        headers={**api.auth(), "content-type": "application/json"},
    )
    assert r.status_code == 422


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_missing_or_wrong_key_is_401(api: Api, headers: dict[str, str]) -> None:
    before = api.counts()
    r = api.client.post(
        "/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0001"]}, headers=headers
    )
    assert r.status_code == 401
    assert r.json()["status"] == 401
    assert api.counts() == before


def test_unknown_model_is_404(api: Api) -> None:
    before = api.counts()
    r = post(api, {"sample_ids": ["toy-0001"]}, model="missing")
    assert r.status_code == 404
    assert "missing" in r.json()["detail"]
    assert api.counts() == before


def test_key_without_scope_is_403(api: Api) -> None:
    with session_scope(api.url) as s:
        reader = make_key(s, scopes=("jobs:read",))
    r = api.client.post(
        "/v1/models/toy/deletion-requests", json={"sample_ids": ["toy-0001"]}, headers=api.auth(reader)
    )
    assert r.status_code == 403


def test_another_tenants_model_is_invisible(api: Api) -> None:
    with session_scope(api.url) as s:
        make_model(s, tenant="other", name="theirs")
    assert post(api, {"sample_ids": ["theirs-0001"]}, model="theirs").status_code == 404
    names = [m["name"] for m in api.client.get("/v1/models", headers=api.auth()).json()]
    assert names == ["toy"]


def cli_client(api: Api, key: str) -> CliClient:
    """The `unlearn` CLI's own client, speaking HTTP to the app under test."""
    client = CliClient("http://testserver", key)
    client._http = TestClient(api.client.app, headers={"Authorization": f"Bearer {key}"})
    return client


def test_a_kept_head_of_another_tenant_is_a_usage_error_naming_both_tenants_not_tampering(
    api: Api, tmp_path
) -> None:
    """Each tenant's log is a tree of its own: `audit verify --head` with another tenant's head reported
    the intact log TAMPERED (or "shrank", the other way round), exit 1."""
    with session_scope(api.url) as s:
        make_model(s, tenant="acme", name="theirs")  # acme's log is longer than default's
        acme = make_key(s, tenant="acme", scopes=("audit:read",))
    from service.core.signing import public_key_pem

    pem = tmp_path / "key.pem"  # a kept head is verified against the service's key (without: exit 1)
    pem.write_text(public_key_pem(api.client.app.state.signing_key))  # type: ignore[attr-defined]
    for owner, other, key_of_other in (("acme", "default", api.key), ("default", "acme", acme)):
        head = tmp_path / f"{owner}.json"
        owner_key = acme if owner == "acme" else api.key
        head.write_text(json.dumps(cli_client(api, owner_key).get("/v1/audit/head", fresh="true")))
        args = argparse.Namespace(head=str(head), public_key=str(pem))
        with pytest.raises(UsageError, match=f"belongs to tenant '{owner}'.*log is tenant '{other}'"):
            cmd_audit_verify(cli_client(api, key_of_other), args)
        assert cmd_audit_verify(cli_client(api, owner_key), args) == 0  # its own tenant's key: intact


def test_a_request_to_an_invalid_model_says_it_is_invalid_and_must_be_registered_again(api: Api) -> None:
    """It said "it accepts requests once ready", which an invalid model never becomes; a validating model
    still gets that answer."""
    with session_scope(api.url) as s:
        toy = s.scalar(select(Model).where(Model.name == "toy"))
        assert toy is not None
        toy.status, toy.status_detail = "invalid", "the checkpoint does not load: missing keys fc.weight"
    before = api.counts()
    r = post(api, {"sample_ids": ["toy-0001"]})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "is invalid: the checkpoint does not load: missing keys fc.weight" in detail
    assert "register the model again" in detail and "once ready" not in detail
    with session_scope(api.url) as s:
        toy = s.scalar(select(Model).where(Model.name == "toy"))
        assert toy is not None
        toy.status, toy.status_detail = "validating", None
    r = post(api, {"sample_ids": ["toy-0001"]})
    assert (
        r.status_code == 409
        and r.json()["detail"] == "model 'toy' is validating; it accepts requests once ready"
    )
    assert api.counts() == before


def test_versions_list_starts_with_v1(api: Api) -> None:
    r = api.client.get("/v1/models/toy/versions", headers=api.auth())
    assert r.status_code == 200
    [v1] = r.json()
    assert v1["version"] == "v1" and v1["parent"] is None and v1["forgotten_count"] == 0


def test_audit_export_is_a_valid_hash_chain(api: Api) -> None:
    assert post(api, {"sample_ids": ["toy-0001"]}).status_code == 202
    r = api.client.get("/v1/audit/export?format=jsonl", headers=api.auth())
    assert r.status_code == 200
    import json

    events = [json.loads(line) for line in r.text.splitlines()]
    actions = [e["action"] for e in events]
    assert "deletion_request.received" in actions and "model.registered" in actions
    prev = audit.GENESIS
    for e in events:
        body = {k: e[k] for k in BODY_KEYS}
        assert e["prev_hash"] == prev
        assert e["hash"] == audit.chain_hash(prev, body)
        prev = e["hash"]
    assert api.client.get("/v1/audit/verify", headers=api.auth()).json()["ok"] is True


def test_tree_heads_and_proofs_are_served_and_verify_offline(api: Api) -> None:
    assert post(api, {"sample_ids": ["toy-0001"]}).status_code == 202
    first = api.client.get("/v1/audit/head?fresh=true", headers=api.auth()).json()
    for i in range(2, 6):
        assert post(api, {"sample_ids": [f"toy-000{i}"]}).status_code == 202
    assert api.client.get("/v1/audit/head", headers=api.auth()).json() == first  # the latest signed one
    second = api.client.get("/v1/audit/head?fresh=true", headers=api.auth()).json()
    # nothing new: the same head, not one more stored per call (a probe's 50 calls stored 50)
    assert api.client.get("/v1/audit/head?fresh=true", headers=api.auth()).json() == second
    pub = api.client.get("/v1/audit/public-key", headers=api.auth()).json()["public_key"]
    assert proofs.verify_head(first, pub)[0] and proofs.verify_head(second, pub)[0]
    old, new = first["tree_head"], second["tree_head"]
    assert new["tree_size"] == old["tree_size"] + 4
    params = {"first": old["tree_size"], "second": new["tree_size"]}
    consistency = api.client.get("/v1/audit/proof/consistency", params=params, headers=api.auth()).json()
    assert proofs.verify_consistency_proof(old, new, consistency)
    events = [
        json.loads(line) for line in api.client.get("/v1/audit/export", headers=api.auth()).text.splitlines()
    ]
    for ev in events:
        params = {"seq": ev["seq"], "tree_size": new["tree_size"]}
        inclusion = api.client.get("/v1/audit/proof/inclusion", params=params, headers=api.auth()).json()
        assert proofs.verify_inclusion_proof(ev, inclusion, new)
    too_far = {"seq": 1, "tree_size": new["tree_size"] + 1}
    r = api.client.get("/v1/audit/proof/inclusion", params=too_far, headers=api.auth())
    assert r.status_code == 422 and "tree_size" in r.json()["detail"]


def test_one_sample_is_looked_up_by_its_id_even_one_holding_slashes_spaces_or_newlines(api: Api) -> None:
    with session_scope(api.url) as s:
        make_model(s, name="files", n_train=3, sample_id=lambda i: f"cats/img {i}.png" if i else "two\nlines")
    url = "/v1/models/files/samples/"
    r = api.client.get(url + "cats%2Fimg%201.png", headers=api.auth())
    assert r.status_code == 200, r.text
    assert (r.json()["sample_id"], r.json()["label"]) == ("cats/img 1.png", 1)
    assert api.client.get(url + "cats/img 2.png", headers=api.auth()).json()["sample_id"] == "cats/img 2.png"
    # registration takes any characters but NUL: a newline too (it was a route-level 404)
    assert api.client.get(url + "two%0Alines", headers=api.auth()).json()["sample_id"] == "two\nlines"
    missing = api.client.get(url + "dogs/img 1.png", headers=api.auth())
    assert missing.status_code == 404 and "dogs/img 1.png" in missing.json()["detail"], missing.text


def test_unknown_request_and_job_are_404(api: Api) -> None:
    assert api.client.get("/v1/deletion-requests/nope", headers=api.auth()).status_code == 404
    assert api.client.get("/v1/jobs/nope", headers=api.auth()).status_code == 404


def test_an_admin_changes_the_policy_and_bad_policies_are_refused(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)
    r = api.client.patch(
        url,
        json={
            "default_params": {"epochs": 3},
            "fallback_methods": ["retrain"],
            "gates": {"max_test_accuracy_drop": 0.02},
        },
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default_params"] == {"epochs": 3} and body["fallback_methods"] == ["retrain"]
    assert body["gates"] == {"max_test_accuracy_drop": 0.02}
    for bad in (
        {"default_method": "nope"},
        {"default_params": {"epochs": -1}},
        {"default_params": {"epochs": 0}},  # a run of no step would publish the base as a version that forgot
        {"default_params": {"zz": 1}},
        {"gates": {"max_bogus": 0.1}},
        {"gates": {"min_mia_score": 2}},
        {"fallback_methods": ["x"]},
        {"fallback_methods": ["finetune", "retrain", "finetune"]},  # the same again fails the same way
    ):
        assert api.client.patch(url, json=bad, headers=h).status_code == 422, bad
    # a refused chain names the field it is about, as a refused train_recipe does, and a method once
    for bad, field in (
        ({"default_method": "nope"}, "default_method"),
        ({"default_params": {"epochs": -1}}, "default_params"),
        ({"fallback_methods": ["x"]}, "fallback_methods"),
    ):
        refused = api.client.patch(url, json=bad, headers=h).json()
        assert [e["loc"] for e in refused["errors"]] == [["body", field]], bad
        assert refused["detail"].count("'nope'") + refused["detail"].count("'x'") <= 1, refused
    assert api.client.get(url, headers=h).json()["default_params"] == {"epochs": 3}  # unchanged by refusals
    assert api.client.patch(url, json={"gates": {}}, headers=api.auth()).status_code == 403


def test_a_policy_patch_merges_gates_and_params_key_by_key_and_null_removes_one(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)

    def patch(body: dict[str, object]) -> dict[str, object]:
        r = api.client.patch(url, json=body, headers=h)
        assert r.status_code == 200, r.text
        return dict(r.json())

    patch({"gates": {"max_test_accuracy_drop": 0.02, "min_mia_score": 0.3}})
    # Tightening one gate keeps the other (it used to replace the whole object, dropping it).
    assert patch({"gates": {"min_mia_score": 0.4}})["gates"] == {
        "max_test_accuracy_drop": 0.02,
        "min_mia_score": 0.4,
    }
    assert patch({"gates": {"max_test_accuracy_drop": None}})["gates"] == {"min_mia_score": 0.4}
    assert patch({"gates": {}})["gates"] == {"min_mia_score": 0.4}
    patch({"default_params": {"epochs": 3}})
    assert patch({"default_params": {"lr": 0.01}})["default_params"] == {"epochs": 3, "lr": 0.01}
    assert patch({"default_params": {"epochs": None}})["default_params"] == {"lr": 0.01}
    # A new method starts from its own defaults plus what is sent, never another method's params.
    switched = patch({"default_method": "gradient_ascent", "default_params": {"epochs": 2}})
    assert (switched["default_method"], switched["default_params"]) == ("gradient_ascent", {"epochs": 2})
    # A merge that would leave a bad policy is refused whole.
    r = api.client.patch(
        url, json={"default_params": {"epochs": -1}, "gates": {"min_mia_score": 0.1}}, headers=h
    )
    assert r.status_code == 422, r.text
    assert api.client.get(url, headers=h).json()["gates"] == {"min_mia_score": 0.4}


def test_a_models_job_time_limit_is_set_cleared_and_bounded_by_the_service(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)
    assert api.client.get(url, headers=h).json()["time_limit_seconds"] is None  # the service's applies
    r = api.client.patch(url, json={"time_limit_seconds": 600}, headers=h)
    assert r.status_code == 200 and r.json()["time_limit_seconds"] == 600
    over = api.client.patch(url, json={"time_limit_seconds": 10**9}, headers=h)
    assert over.status_code == 422 and "exceeds this service's limit" in over.json()["detail"]
    assert over.json()["errors"][0]["loc"] == ["body", "time_limit_seconds"]
    assert api.client.patch(url, json={"time_limit_seconds": 0}, headers=h).status_code == 422
    assert api.client.patch(url, json={"time_limit_seconds": 60.5}, headers=h).status_code == 422
    assert api.client.get(url, headers=h).json()["time_limit_seconds"] == 600  # refusals changed nothing
    # a whole number as Python's json.dumps writes a float: refused while the field was strict (a review)
    r = api.client.patch(url, json={"time_limit_seconds": 900.0}, headers=h)
    assert r.status_code == 200 and r.json()["time_limit_seconds"] == 900
    r = api.client.patch(url, json={"time_limit_seconds": None}, headers=h)
    assert r.status_code == 200 and r.json()["time_limit_seconds"] is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"gates": None}, "a gate sent as null is removed"),
        ({"default_method": None}, "name a method"),
        ({"default_method": ""}, "cannot be empty: name a method"),
        ({"fallback_methods": None}, "send [] for none"),
        ({"train_recipe": None}, "send {} for the retrain method's defaults"),
        ({"default_params": None}, "a param sent as null goes back to its default"),
    ],
)
def test_a_policy_field_sent_as_null_is_a_422_saying_what_to_send(api: Api, body: dict, says: str) -> None:
    """Each was a 200 that changed nothing and was audited as a change (a probe)."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    before = api.client.get("/v1/models/toy", headers=api.auth(admin)).json()
    r = api.client.patch("/v1/models/toy", json=body, headers=api.auth(admin))
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["loc"] == ["body", *body] and says in error["msg"], error
    assert api.client.get("/v1/models/toy", headers=api.auth(admin)).json() == before


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        (
            {"gates": {"max_test_accuracy_drop": 2}},
            ["gates", "max_test_accuracy_drop"],
            "less than or equal to 1",
        ),
        ({"gates": {"max_test_accuracy_drop": True}}, ["gates", "max_test_accuracy_drop"], "a valid number"),
        ({"gates": []}, ["gates"], "valid dictionary"),
        ({"default_params": []}, ["default_params"], "valid dictionary"),
        ({"fallback_methods": "retrain"}, ["fallback_methods"], "valid list"),
        ({"default_method": 5}, ["default_method"], "valid string"),
        ({"time_limit_seconds": True}, ["time_limit_seconds"], "valid integer"),
        ({"time_limit_seconds": "60"}, ["time_limit_seconds"], "valid integer"),
        ({"retrain_above_share": "0.5"}, ["retrain_above_share"], "valid number"),
    ],
)
def test_a_policy_field_of_the_wrong_type_is_one_422_at_that_field(
    api: Api, body: dict, loc: list[str], says: str
) -> None:
    """Each had a second error saying null would do (which is refused), and true was stored as 1: a gate
    switched off, a one-second time limit (a probe)."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    r = api.client.patch("/v1/models/toy", json=body, headers=api.auth(admin))
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["loc"] == ["body", *loc] and says in error["msg"], error


def test_a_patch_that_changes_nothing_is_not_audited_as_a_change(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)

    def updates() -> int:
        with session_scope(api.url) as s:
            return len(s.scalars(select(AuditEvent).where(AuditEvent.action == "model.updated")).all())

    current = api.client.get(url, headers=h).json()
    for same in ({}, {"default_method": current["default_method"]}, {"gates": {}}, {"default_params": {}}):
        assert api.client.patch(url, json=same, headers=h).status_code == 200
    assert updates() == 0
    assert api.client.patch(url, json={"time_limit_seconds": 900}, headers=h).status_code == 200
    assert updates() == 1


def test_a_policy_change_is_audited_as_what_changed_from_what_to_what(api: Api) -> None:
    """The event held the body sent: a new method's params, which the change dropped, were in no event
    (a probe), so an audit of the export could not tell which params a job ran with."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)
    assert api.client.patch(url, json={"default_params": {"epochs": 1}}, headers=h).status_code == 200
    before = api.client.get(url, headers=h).json()
    assert api.client.patch(url, json={"default_method": "finetune"}, headers=h).status_code == 200
    with session_scope(api.url) as s:
        last = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "model.updated").order_by(AuditEvent.id.desc())
        ).first()
        assert last is not None
        assert last.data == {
            "default_method": {"from": before["default_method"], "to": "finetune"},
            "default_params": {"from": before["default_params"], "to": {}},
        }
    assert before["default_params"] == {"epochs": 1}


def test_a_lone_surrogate_in_a_json_body_or_a_cursor_is_a_422_naming_where(api: Api) -> None:
    """JSON's \\ud800 escapes decode to text UTF-8 cannot write: a params key was a 500 (its error echoed
    it), and a cursor holding one was a 500 from the database (a probe)."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    h = {**api.auth(admin), "Content-Type": "application/json"}
    r = api.client.patch("/v1/models/toy", content=b'{"default_params": {"\\ud800": 1}}', headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "default_params", "'\\ud800'"]
    r = api.client.post(
        "/v1/models/toy/deletion-requests",
        content=b'{"sample_ids": ["toy-0001"], "reference": "x\\udc00"}',
        headers=h,
    )
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "reference"], r.text
    for raw in (  # the same surrogate as raw bytes (CESU-8), and a body in UTF-16: not UTF-8 (a review)
        b'{"sample_ids": ["toy-0001"], "reference": "x\xed\xa0\x80"}',
        '{"sample_ids": ["toy-0001"]}'.encode("utf-16"),
        '{"sample_ids": ["toy-0001"]}'.encode("utf-16-le"),  # no byte-order mark (a probe)
        '{"sample_ids": ["toy-0001"]}'.encode("utf-32-be"),
    ):
        upper = {**h, "Content-Type": "APPLICATION/JSON"}  # any case (a review)
        r = api.client.post("/v1/models/toy/deletion-requests", content=raw, headers=upper)
        assert r.status_code == 422 and "UTF-8" in r.json()["detail"], r.text
    cursor = encode_cursor("2026-01-01T00:00:00+00:00", "\ud800")
    r = api.client.get("/v1/deletion-requests", params={"cursor": cursor}, headers=api.auth())
    assert r.status_code == 422 and "invalid cursor" in r.json()["detail"]
    r = api.client.post(  # a valid pair is one character: accepted
        "/v1/models/toy/deletion-requests",
        content=b'{"sample_ids": ["toy-0001"], "reference": "\\ud83d\\ude00"}',
        headers=h,
    )
    assert r.status_code == 202 and r.json()["reference"] == "\U0001f600", r.text


@pytest.mark.parametrize("field", ["retrain_above_share", "retrain_above_class_share"])
def test_a_models_retrain_share_is_set_bounded_and_cleared(api: Api, field: str) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    url, h = "/v1/models/toy", api.auth(admin)
    assert api.client.get(url, headers=h).json()[field] is None  # never, by default
    r = api.client.patch(url, json={field: 0.25}, headers=h)
    assert r.status_code == 200 and r.json()[field] == 0.25
    for bad in (0, 1.5, -0.1, "half", *([1] if field == "retrain_above_class_share" else [])):
        refused = api.client.patch(url, json={field: bad}, headers=h)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["loc"] == ["body", field]
    assert api.client.get(url, headers=h).json()[field] == 0.25  # refusals changed nothing
    r = api.client.patch(url, json={field: None}, headers=h)
    assert r.status_code == 200 and r.json()[field] is None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/models/toy/deletion-requests", {"sample_ids": ["toy-0001\u0000"]}),
        ("post", "/v1/models/toy/deletion-requests", {"sample_ids": ["toy-0001"], "reference": "a\u0000b"}),
        ("get", "/v1/deletion-requests?reference=a%00b", None),
        ("get", "/v1/models/to%00y", None),
        ("get", "/v1/models/toy/samples?cursor=WyJhYmMiXQ", None),  # ["abc"] where a position is due
        ("get", "/v1/models/toy/samples?cursor=WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDBd", None),  # [10**30]
        ("get", "/v1/jobs?cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwgIngiXQ", None),  # year 1, +14:00
        ("get", "/v1/jobs?since=0001-01-01T00:00:00%2B01:00", None),
    ],
)
def test_odd_inputs_are_refused_with_422_not_500(api: Api, method: str, path: str, body: object) -> None:
    before = api.counts()
    r = getattr(api.client, method)(path, headers=api.auth(), **({"json": body} if body is not None else {}))
    assert r.status_code == 422, (r.status_code, r.text)
    assert api.counts() == before


@pytest.mark.parametrize("content_type", [None, "application/json", "Application/JSON; charset=utf-8"])
def test_a_request_without_a_body_is_a_422_that_says_so(api: Api, content_type: str | None) -> None:
    headers = {**api.auth(), **({"Content-Type": content_type} if content_type else {})}
    r = api.client.post("/v1/models/toy/deletion-requests", headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        "the request has no body: send a JSON object, with Content-Type: application/json"
    )


def test_a_json_body_under_a_json_type_with_a_charset_is_read(api: Api) -> None:
    headers = {**api.auth(), "Content-Type": "Application/JSON; charset=utf-8"}
    r = api.client.post(
        "/v1/models/toy/deletion-requests", content=b'{"sample_ids": ["toy-0001"]}', headers=headers
    )
    assert r.status_code == 202, r.text


def test_a_body_that_is_not_json_is_a_422_saying_so_and_where(api: Api) -> None:
    """It read "invalid fields: body.1": the character offset looked like a field's name."""
    r = api.client.post(
        "/v1/models/toy/deletion-requests",
        content=b'{"sample_ids": ["toy-0001"],',
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert (
        detail
        == "the body is not valid JSON: Expecting property name enclosed in double quotes (at character 28)"
    ), detail


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/foo+json"]
)
def test_a_json_body_sent_as_another_content_type_is_a_422_that_names_the_header(
    api: Api, content_type: str | None
) -> None:
    """A valid JSON body under another Content-Type (or none) read "invalid fields: body": FastAPI parses
    JSON only under a JSON type, and the detail named no field a client could fix (a probe)."""
    headers = {**api.auth(), **({"Content-Type": content_type} if content_type else {})}
    before = api.counts()
    r = api.client.post(
        "/v1/models/toy/deletion-requests", content=b'{"sample_ids": ["toy-0001"]}', headers=headers
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        f"the body must be JSON sent as Content-Type: application/json (it came as {content_type or 'none'})"
    )
    assert api.counts() == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            b'{"sample_ids": ["\xff\xfe"]}',
            "the body is not valid JSON: it is not UTF-8 (invalid start byte at byte 17)",
        ),
        (b"[" * 5000 + b"]" * 5000, "the body is not valid JSON: it nests arrays or objects too deeply"),
        (
            b'{"sample_ids": ["toy-0001"], "reference": ' + b"9" * 5000 + b"}",
            "the body is not valid JSON: it holds a number of more than 4,300 digits",
        ),
    ],
)
def test_a_body_that_is_not_utf8_or_nests_too_deeply_is_a_422_saying_which(
    api: Api, body: bytes, says: str
) -> None:
    """Both were a 400 "There was an error parsing the body", which named neither."""
    r = api.client.post(
        "/v1/models/toy/deletion-requests",
        content=body,
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == says


@pytest.mark.parametrize("version", ["v\u00b2", "v99999999999999999999999", "latest", "v0"])
def test_odd_version_names_are_404(api: Api, version: str) -> None:
    assert api.client.get(f"/v1/models/toy/versions/{version}", headers=api.auth()).status_code == 404


def test_a_chunked_body_over_the_limit_is_413(backend: Backend) -> None:
    """(Without a key it is a 401 before any of the body is read: tests/service/test_admission.py.)"""
    env = {**backend.env, "UNLEARN_MAX_BODY_BYTES": "1000"}
    settings = Backend(backend.name, env).settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        key = make_key(s, scopes=("deletion:write",))

    def chunks():  # noqa: ANN202 - a generator body is sent chunked, without Content-Length
        yield b'{"sample_ids": ["' + b"x" * 5000 + b'"]}'

    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/models/toy/deletion-requests",
            content=chunks(),
            headers={"content-type": "application/json", "Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 413
    # the same problem body as a declared length over the limit (it was "HTTP error", "Content Too Large")
    assert (r.json()["title"], r.json()["detail"], r.json()["limit_bytes"]) == (
        "Payload too large",
        "request bodies here are limited to 1000 bytes",
        1000,
    )


def test_non_finite_numbers_in_a_policy_are_422(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    r = api.client.patch(
        "/v1/models/toy",
        content=b'{"train_recipe": {"lr": NaN}}',
        headers={**api.auth(admin), "content-type": "application/json"},
    )
    assert r.status_code == 422


def test_a_dataset_path_holding_a_nul_byte_is_refused_by_name(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    body = {"kind": "npz", "name": "x", "uri": "/usr/share/datasets/\u0000"}
    r = api.client.post("/v1/datasets", json=body, headers=api.auth(admin))
    assert r.status_code == 422 and "uri" in r.json()["detail"]


def test_a_tenants_last_admin_key_cannot_revoke_itself(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, tenant="solo", scopes=("admin",))
    me = api.client.get("/v1/keys/me", headers=api.auth(admin)).json()["id"]
    r = api.client.post(f"/v1/keys/{me}/revoke", headers=api.auth(admin))
    assert r.status_code == 409 and "last admin key" in r.json()["detail"]
    second = api.client.post("/v1/keys", json={"scopes": ["admin"]}, headers=api.auth(admin)).json()
    assert api.client.post(f"/v1/keys/{me}/revoke", headers=api.auth(second["key"])).status_code == 200


def test_an_admin_key_creating_a_key_in_another_tenant_is_403_whether_that_tenant_exists_or_not(
    api: Api,
) -> None:
    """It was a 404 "tenant 'acme' not found" for a tenant that exists; the refusal is the key's reach."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
        make_key(s, tenant="acme", scopes=("admin",))
        before = s.scalar(select(func.count()).select_from(ApiKey))
    for tenant in ("acme", "nowhere"):
        r = api.client.post(
            "/v1/keys", json={"tenant": tenant, "scopes": ["jobs:read"]}, headers=api.auth(admin)
        )
        assert r.status_code == 403, r.text
        assert "only create keys in its own tenant ('default')" in r.json()["detail"]
    with session_scope(api.url) as s:
        assert s.scalar(select(func.count()).select_from(ApiKey)) == before


def test_an_admin_deletes_a_superseded_checkpoint_and_its_download_is_gone(api: Api) -> None:
    """An erasure left every earlier version's weights downloadable, and a compliance team had no way to
    take them off storage (a probe). The latest version serves the model and is refused."""
    settings = api.client.app.state.settings  # type: ignore[attr-defined]
    stored = settings.checkpoint_dir / "toy" / "v1.safetensors"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"weights that learned toy-0001")
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
        model = s.scalars(select(Model)).one()
        v1 = s.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)).one()
        v1.checkpoint_uri, v1.sha256 = str(stored), hashlib.sha256(stored.read_bytes()).hexdigest()
        publish_version(s, model, ["toy-0001"])
        digest = v1.sha256
    url = "/v1/models/toy/versions/{}/checkpoint"
    assert api.client.get(url.format("v1"), headers=api.auth()).status_code == 200
    latest = api.client.delete(url.format("v2"), headers=api.auth(admin))
    assert latest.status_code == 409 and "it serves the model" in latest.json()["detail"]
    assert api.client.delete(url.format("v1"), headers=api.auth()).status_code == 403  # admins only
    retired = api.client.delete(url.format("v1"), headers=api.auth(admin))
    assert retired.status_code == 200 and retired.json()["checkpoint_retired_at"] is not None
    assert retired.json()["checkpoint_sha256"] == digest and not stored.exists()
    again = api.client.delete(url.format("v1"), headers=api.auth(admin))  # idempotent
    assert again.json()["checkpoint_retired_at"] == retired.json()["checkpoint_retired_at"]
    gone = api.client.get(url.format("v1"), headers=api.auth())
    assert gone.status_code == 410 and "deleted by an admin" in gone.json()["detail"]
    assert digest in gone.json()["detail"]
    with session_scope(api.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "model_version.checkpoint_retired"))
        assert event.data == {"version": "v1", "checkpoint_sha256": digest}
    assert api.client.get("/v1/audit/verify", headers=api.auth()).json()["ok"] is True


def test_a_key_name_holding_a_nul_is_a_422_naming_it(api: Api) -> None:
    """It was a 500: the core's own check raised where the schema let it through (a probe)."""
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    body = {"scopes": ["jobs:read"], "name": "a\u0000"}
    r = api.client.post("/v1/keys", json=body, headers=api.auth(admin))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "name"], r.text


def server_settings(backend: Backend) -> Settings:
    """The settings a server-side verb (`unlearn keys`) runs under, on a migrated database."""
    settings = backend.settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    return settings


def test_the_server_verb_refuses_a_tenant_name_the_api_would_refuse_and_keeps_valid_ones(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = server_settings(backend)

    def create(tenant: str) -> int:
        args = argparse.Namespace(action="create", tenant=tenant, scopes=["admin"], name="")
        return cmd_keys(settings, args)

    for bad in ("Bad Tenant/x", "a" * 101, "caf\u00e9"):
        assert create(bad) == 2
        assert "invalid tenant name" in capsys.readouterr().err
    for good in ("default", "acme-2.eu_west", "a" * 100):
        assert create(good) == 0
        assert f"tenant={good} " in capsys.readouterr().out
    with session_scope(settings.resolved_database_url) as s:
        assert sorted(s.scalars(select(ApiKey.tenant))) == sorted(["default", "acme-2.eu_west", "a" * 100])


def test_keys_made_or_revoked_on_the_server_are_in_the_trail_once(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """`unlearn keys create/revoke` left no audit event, and a second revoke wrote a second one (a probe)."""
    settings = server_settings(backend)
    made = argparse.Namespace(action="create", tenant="acme", scopes=["admin"], name="")
    assert cmd_keys(settings, made) == 0
    key_id = capsys.readouterr().out.split("id=")[1].split()[0]
    for _ in range(2):
        assert cmd_keys(settings, argparse.Namespace(action="revoke", id=key_id)) == 0
    with session_scope(settings.resolved_database_url) as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.entity_id == key_id))
        trail = [(e.action, e.actor) for e in rows]
    assert trail == [("api_key.created", "operator"), ("api_key.revoked", "operator")]


def test_revoking_a_key_twice_answers_the_same_and_audits_it_once(api: Api) -> None:
    from service.core.keys import create_key

    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
        other_id = create_key(s, tenant="default", scopes=["jobs:read"])[0].id
    first = api.client.post(f"/v1/keys/{other_id}/revoke", headers=api.auth(admin))
    second = api.client.post(f"/v1/keys/{other_id}/revoke", headers=api.auth(admin))
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    with session_scope(api.url) as s:
        revoked = s.scalars(select(AuditEvent).where(AuditEvent.action == "api_key.revoked")).all()
    assert len(revoked) == 1


def test_a_batch_with_an_idempotency_key_header_is_a_422_pointing_at_the_items_keys(api: Api) -> None:
    """The header was ignored, so a retried batch wrote every item twice (a probe)."""
    before = api.counts()
    r = api.client.post(
        "/v1/models/toy/deletion-requests/batch",
        json={"requests": [{"sample_ids": ["toy-0001"]}]},
        headers={**api.auth(), "Idempotency-Key": "batch-1"},
    )
    assert r.status_code == 422 and "give each item its own idempotency_key" in r.json()["detail"], r.text
    assert api.counts() == before
    long = api.client.post(  # a long one is told the same, and the schema does not offer the header
        "/v1/models/toy/deletion-requests/batch",
        json={"requests": [{"sample_ids": ["toy-0001"]}]},
        headers={**api.auth(), "Idempotency-Key": "k" * 300},
    )
    assert long.status_code == 422 and "give each item its own" in long.json()["detail"], long.text
    batch = api.client.get("/openapi.json").json()["paths"]["/v1/models/{model}/deletion-requests/batch"]
    assert all(p["name"].lower() != "idempotency-key" for p in batch["post"].get("parameters", []))


def test_the_openapi_document_uses_json_schemas_own_bound_keywords(api: Api) -> None:
    """time_limit_seconds was documented with "ge", which JSON Schema does not have: a client generated
    from the document sent 0 and met a 422 (a probe)."""
    found: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            found.extend(f"{path}.{k}" for k in ("ge", "gt", "le", "lt") if k in node and "type" in node)
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    document = api.client.get("/openapi.json").json()
    walk(document, "")
    assert found == []
    limit = document["components"]["schemas"]["ModelUpdate"]["properties"]["time_limit_seconds"]
    assert {"type": "integer", "minimum": 1} in limit["anyOf"]


def test_a_batch_to_a_model_the_tenant_does_not_have_is_one_404(api: Api) -> None:
    """It was a 200 with a 404 per item: a client counting refused items took a typo for refusals."""
    before = api.counts()
    r = api.client.post(
        "/v1/models/no-such-model/deletion-requests/batch",
        json={"requests": [{"sample_ids": ["toy-0001"]}, {"sample_ids": ["toy-0002"]}]},
        headers=api.auth(),
    )
    assert r.status_code == 404 and r.json()["detail"] == "model 'no-such-model' not found", r.text
    assert api.counts() == before


# what /readyz says with no worker row: a worker that stops cleanly takes its row with it
NO_WORKER = "no worker is running (none has a heartbeat on record: none started, or all stopped cleanly)"


def test_readyz_is_503_until_a_worker_beats_and_again_once_they_all_fall_silent(api: Api) -> None:
    from datetime import timedelta

    from service.core import liveness
    from service.core.db.tables import WorkerHeartbeat, utcnow

    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["workers"] == NO_WORKER
    with session_scope(api.url) as s:
        liveness.beat(s, "host:1")
    r = api.client.get("/readyz")
    assert r.status_code == 200, r.json()
    with session_scope(api.url) as s:
        s.get_one(WorkerHeartbeat, "host:1").last_seen = utcnow() - timedelta(minutes=5)
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["workers"].startswith(
        "no worker heard from within 10s: the latest heartbeat on record is 30"
    )


def test_readyz_reports_the_beat_apart_and_is_not_made_ready_or_unready_by_it(api: Api) -> None:
    """Nothing showed that the reconciler's beat had died (a probe killed it). Its heartbeat is reported
    beside the checks; an API with workers but no beat still serves, so it stays ready."""
    from datetime import timedelta

    from service.core import liveness
    from service.core.db.tables import WorkerHeartbeat, utcnow

    assert api.client.get("/readyz").json()["beat"] == "no beat process (for an hour, or ever) has been seen"
    with session_scope(api.url) as s:
        liveness.beat(s, f"{liveness.BEAT_PREFIX}host:2")
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["beat"] == "ok"  # a beat is not a worker
    assert r.json()["checks"]["workers"] == NO_WORKER
    with session_scope(api.url) as s:
        liveness.beat(s, "host:1")
        s.get_one(WorkerHeartbeat, f"{liveness.BEAT_PREFIX}host:2").last_seen = utcnow() - timedelta(
            minutes=5
        )
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["beat"].startswith(
        "no beat process heard from within 10s: the latest heartbeat on record is 30"
    )


# -- webhooks ------------------------------------------------------------------------------------------


@pytest.fixture
def hook_api(backend: Backend) -> Iterator[Api]:
    """The API with a webhook allow-list: hooks.example on 443 only, and on 8443."""
    env = {**backend.env, "UNLEARN_WEBHOOK_ALLOWED_HOSTS": "hooks.example, hooks.example:8443"}
    yield from serve_toy(Settings(**env))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("callback_url", "named"),
    [
        ("http://hooks.example/done", "must use https"),
        ("https://hooks.example:8080/done", "port 8080 is not allowed for host 'hooks.example'"),
        ("https://hooks.example:80/done", "port 80 is not allowed"),
        ("https://hooks.example:0/done", "port 0 is not allowed"),
        ("https://evil.example/done", "host 'evil.example' is not on the webhook allow-list"),
        ("https://hooks.example.evil.example/done", "is not on the webhook allow-list"),
        ("https://user:pw@hooks.example/done", "must not carry credentials"),
        ("https://token@hooks.example/done", "must not carry credentials"),
        ("https://hooks.example/done\u0000", "holds control characters"),  # was stored without the NUL
        ("https://hooks.example/do\nne", "holds control characters"),
        ("https://hooks.example/" + "a" * 2100, "callback_url is 2,122 characters long; at most 2,048"),
        ("https://hooks.example/" + "\U0001f600" * 200, "characters long once encoded; at most 2,048"),
    ],
)
def test_webhook_callback_with_wrong_scheme_host_or_port_is_422_naming_it(
    hook_api: Api, callback_url: str, named: str
) -> None:
    before = hook_api.counts()
    r = post(hook_api, {"sample_ids": ["toy-0001"], "callback_url": callback_url})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert named in r.json()["detail"] + r.json()["errors"][0]["msg"]
    assert r.json()["errors"][0]["loc"] == ["body", "callback_url"]
    assert hook_api.counts() == before


@pytest.mark.parametrize(
    "callback_url",
    ["https://hooks.example/done", "https://HOOKS.example:443/done", "https://hooks.example:8443/done"],
)
def test_webhook_callback_on_an_allowed_host_and_port_is_accepted(hook_api: Api, callback_url: str) -> None:
    r = post(hook_api, {"sample_ids": ["toy-0001"], "callback_url": callback_url})
    assert r.status_code == 202, r.text


def test_webhook_http_callback_needs_allow_http_and_then_the_default_port_of_http(backend: Backend) -> None:
    env = {
        **backend.env,
        "UNLEARN_WEBHOOK_ALLOWED_HOSTS": "hooks.example",
        "UNLEARN_WEBHOOK_ALLOW_HTTP": "true",
    }
    settings = Settings(**env)  # type: ignore[arg-type]
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy", n_train=50)
        key = make_key(s, scopes=("deletion:write",))
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings.resolved_database_url, key)
        assert (
            post(api, {"sample_ids": ["toy-0001"], "callback_url": "http://hooks.example/x"}).status_code
            == 202
        )
        r = post(api, {"sample_ids": ["toy-0002"], "callback_url": "http://hooks.example:8080/x"})
        assert r.status_code == 422 and "port 8080" in r.json()["detail"]


@pytest.mark.parametrize(
    "entry", ["hooks.example:notaport", "hooks.example/path", "user@hooks.example", ":443"]
)
def test_webhook_allow_list_entries_that_are_not_host_port_stop_the_settings(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        Settings(UNLEARN_WEBHOOK_ALLOWED_HOSTS=entry)  # type: ignore[call-arg]


def test_webhook_secrets_are_rotated_by_admins_and_shown_only_once(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    assert api.client.get("/v1/webhook-secrets", headers=api.auth(admin)).json() == []
    first = api.client.post("/v1/webhook-secrets", headers=api.auth(admin))  # no body: 24 h of grace
    assert first.status_code == 201, first.text
    one = first.json()
    assert one["secret"].startswith("whsec_") and one["prefix"] == one["secret"][:10]
    assert (one["expires_at"], one["active"]) == (None, True)
    r = api.client.post("/v1/webhook-secrets", json={"grace_seconds": 600}, headers=api.auth(admin))
    assert r.status_code == 201, r.text
    two = r.json()
    listed = api.client.get("/v1/webhook-secrets", headers=api.auth(admin))
    assert listed.status_code == 200
    assert [(w["id"], w["prefix"], w["active"], w["secret"]) for w in listed.json()] == [
        (two["id"], two["prefix"], True, None),
        (one["id"], one["prefix"], True, None),
        # the service-wide key, which signed this tenant's webhooks until its first rotation: 24 h of grace
        (listed.json()[2]["id"], "service-wide", True, None),
    ]
    assert listed.json()[1]["expires_at"] is not None and listed.json()[2]["expires_at"] is not None
    assert one["secret"] not in listed.text and two["secret"] not in listed.text
    # a grace period sent as null is the default's, as if left out (client libraries send null)
    r = api.client.post("/v1/webhook-secrets", json={"grace_seconds": None}, headers=api.auth(admin))
    assert r.status_code == 201, r.text
    previous = [w for w in api.client.get("/v1/webhook-secrets", headers=api.auth(admin)).json()
                if w["id"] == two["id"]]  # fmt: skip
    made = datetime.fromisoformat(r.json()["created_at"])
    assert datetime.fromisoformat(previous[0]["expires_at"]) - made > timedelta(hours=23)


@pytest.mark.parametrize(
    "body",
    [
        {"grace_seconds": -1},
        {"grace_seconds": 604801},
        {"grace": 5},
        {"grace_seconds": False},  # was read as 0: every current secret expired at once
        {"grace_seconds": "10"},
    ],
)
def test_webhook_secret_rotation_with_a_bad_grace_period_is_422_naming_it(api: Api, body: object) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
    r = api.client.post("/v1/webhook-secrets", json=body, headers=api.auth(admin))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "grace" in r.json()["detail"]
    assert api.client.get("/v1/webhook-secrets", headers=api.auth(admin)).json() == []


def test_webhook_secrets_need_an_admin_key_and_stay_in_their_tenant(api: Api) -> None:
    with session_scope(api.url) as s:
        admin = make_key(s, scopes=("admin",))
        other = make_key(s, tenant="other", scopes=("admin",))
    assert api.client.post("/v1/webhook-secrets", headers=api.auth()).status_code == 403
    assert api.client.get("/v1/webhook-secrets", headers=api.auth()).status_code == 403
    assert api.client.post("/v1/webhook-secrets", headers=api.auth(admin)).status_code == 201
    assert api.client.get("/v1/webhook-secrets", headers=api.auth(other)).json() == []


def test_an_empty_idempotency_key_is_refused_by_name_and_nothing_is_written(api: Api) -> None:
    """A batch item's key must not be empty; nor may the header's: a client that sends an empty one meant a
    key, and taking it for none made its retry a second request."""
    before = api.counts()
    r = post(api, {"sample_ids": ["toy-0001"]}, **{"Idempotency-Key": ""})
    assert r.status_code == 422, r.text
    assert "idempotency-key" in r.text.lower()
    assert api.counts() == before


@pytest.mark.parametrize(
    "path", ["/v1/jobs?since=2026-01-01T00:00:00", "/v1/audit/export?since=2026-01-01T00:00:00"]
)
def test_a_time_without_a_timezone_is_refused_alike_by_the_job_list_and_the_audit_export(
    api: Api, path: str
) -> None:
    """A naive time could mean any of 27 hours; the audit export refused it while the job list took it for
    UTC (a client probe found the two disagreeing)."""
    r = api.client.get(path, headers=api.auth())
    assert r.status_code == 422, r.text
    assert "need" in r.json()["detail"] and "a timezone, e.g. 2026-01-01T00:00:00Z" in r.json()["detail"]
    assert api.client.get(path + "Z", headers=api.auth()).status_code == 200


def test_an_encoded_body_is_a_415_and_two_idempotency_keys_a_422(api: Api) -> None:
    """gzip was answered "the body is not valid JSON: it is not UTF-8", br was ignored, and of two
    Idempotency-Key headers the first was used silently (a retry with the second wrote twice; a probe)."""
    import gzip

    before = api.counts()
    body = json.dumps({"sample_ids": ["toy-0001"]}).encode()
    path = "/v1/models/toy/deletion-requests"
    typed = {**api.auth(), "Content-Type": "application/json"}
    for coding, sent in (("gzip", gzip.compress(body)), ("br", body)):
        r = api.client.post(path, content=sent, headers={**typed, "Content-Encoding": coding})
        assert r.status_code == 415 and "without Content-Encoding" in r.json()["detail"], r.text
    r = api.client.post(
        path, content=body, headers=[*typed.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    )
    assert r.status_code == 422 and r.json()["detail"] == "2 Idempotency-Key headers: send exactly one"
    assert api.counts() == before


@pytest.mark.parametrize(
    "query", ["/v1/jobs?since=0.5", "/v1/audit/export?until=0.5", "/v1/audit/export?since=99999999999"]
)
def test_a_time_filter_that_is_a_number_is_refused(api: Api, query: str) -> None:
    """Read as Unix seconds, or as milliseconds past 2e10: since=99999999999 exported every event (1973)."""
    r = api.client.get(query, headers=api.auth())
    assert r.status_code == 422, r.text
    assert "give an ISO 8601 time with a timezone" in r.text


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/audit/export"])
def test_a_time_whose_plus_arrived_as_a_space_is_told_to_encode_it(api: Api, path: str) -> None:
    """`since=...T07:41:00+00:00` sent as typed reads `+` as a space: a bare datetime error (a probe)."""
    r = api.client.get(path + "?since=2026-01-01T00:00:00+00:00", headers=api.auth())
    assert r.status_code == 422, r.text
    assert "a '+' in a query string reads as a space: send a time's offset as %2B00:00" in r.json()["detail"]
    assert api.client.get(path + "?since=2026-01-01T00:00:00%2B00:00", headers=api.auth()).status_code == 200


@pytest.mark.parametrize("path", ["/v1/audit/export?format=jsonl", "/v1/audit/verify"])
def test_an_export_or_verify_that_sequences_events_leaves_a_head_over_them(api: Api, path: str) -> None:
    """They sequenced events and signed nothing, and the workers sign only where events are left
    unsequenced: a probe's head stayed at 6 events of a log of 101 until its tenant wrote again."""
    before = api.client.get("/v1/audit/head?fresh=true", headers=api.auth()).json()["tree_head"]
    assert post(api, {"sample_ids": ["toy-0001"]}).status_code == 202  # events past that head
    assert api.client.get(path, headers=api.auth()).status_code == 200
    events = api.client.get("/v1/audit/export?format=jsonl", headers=api.auth()).text.splitlines()
    assert len(events) > before["tree_size"]
    head = api.client.get("/v1/audit/head", headers=api.auth()).json()["tree_head"]
    assert head["tree_size"] == len(events) > 0
    # a head left behind by an export before this fix (events sequenced, none signed) is caught up too
    assert post(api, {"sample_ids": ["toy-0002"]}).status_code == 202
    with session_scope(api.url) as s:
        audit.sequence_all(s, "default")
    assert api.client.get(path, headers=api.auth()).status_code == 200
    events = api.client.get("/v1/audit/export?format=jsonl", headers=api.auth()).text.splitlines()
    head = api.client.get("/v1/audit/head", headers=api.auth()).json()["tree_head"]
    assert head["tree_size"] == len(events)


def test_an_audit_export_whose_until_is_not_after_its_since_is_a_422(api: Api) -> None:
    """It answered 200 with nothing, which reads as "no events" (a probe's finding)."""
    path = "/v1/audit/export?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z"
    r = api.client.get(path, headers=api.auth())
    assert r.status_code == 422 and "must be after `since`" in r.json()["detail"], r.text


def test_a_request_says_why_its_samples_go_and_a_replay_must_say_the_same(api: Api) -> None:
    """reason: erasure (the default) or mislabeled, recorded and echoed; anything else is a 422 naming the
    field, with nothing written; an Idempotency-Key replayed with another reason is another body."""
    plain = post(api, {"sample_ids": ["toy-0001"]})
    assert plain.status_code == 202 and plain.json()["reason"] == "erasure", plain.text
    r = post(api, {"sample_ids": ["toy-0002"], "reason": "mislabeled"}, **{"Idempotency-Key": "k-reason"})
    assert r.status_code == 202 and r.json()["reason"] == "mislabeled", r.text
    got = api.client.get(f"/v1/deletion-requests/{r.json()['id']}", headers=api.auth())
    assert got.json()["reason"] == "mislabeled"
    assert post(api, {"sample_ids": ["toy-0002"], "reason": "mislabeled"},
                **{"Idempotency-Key": "k-reason"}).status_code == 200  # fmt: skip
    before = api.counts()
    other = post(api, {"sample_ids": ["toy-0002"]}, **{"Idempotency-Key": "k-reason"})
    assert other.status_code == 422, other.text
    bad = post(api, {"sample_ids": ["toy-0003"], "reason": "poison"})
    assert bad.status_code == 422 and "reason" in bad.text, bad.text
    assert api.counts() == before


def test_a_batch_item_carries_its_own_reason_and_a_null_reason_is_the_default(api: Api) -> None:
    items = [
        {"sample_ids": ["toy-0004"], "reason": "mislabeled"},
        {"sample_ids": ["toy-0005"], "reason": None},
        {"sample_ids": ["toy-0006"], "reason": "forgotten"},
    ]
    batch = "/v1/models/toy/deletion-requests/batch"
    r = api.client.post(batch, json={"requests": items}, headers=api.auth())
    assert r.status_code == 422 and "reason" in r.text, r.text  # one bad item fails the body's validation
    r = api.client.post(batch, json={"requests": items[:2]}, headers=api.auth())
    assert r.status_code == 200, r.text
    assert [x["request"]["reason"] for x in r.json()["results"]] == ["mislabeled", "erasure"]


def test_an_erasure_binds_its_idempotency_key_to_the_body_as_before_reasons_existed() -> None:
    """Requests stored before the reason existed replay: an erasure's digest is the old body's."""
    old = hashlib.sha256(
        canonical_json({"sample_ids": ["a", "b"], "reference": "t", "callback_url": None}).encode()
    ).hexdigest()
    assert body_digest(["b", "a"], "t") == old == body_digest(["a", "b"], "t", reason="erasure")
    assert body_digest(["a", "b"], "t", reason="mislabeled") != old


@contextmanager
def silent_broker() -> Iterator[int]:
    """A port that takes connections and never answers, as a frozen or partitioned Redis does."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def take() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=take, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


@pytest.mark.timeout(300)  # without the broker's timeouts, the held request holds the app's shutdown too
def test_a_broker_that_never_answers_holds_neither_a_request_nor_readyz(tmp_path) -> None:
    """A frozen Redis held every send on a read without end: a probe's requests were committed minutes
    after their clients gave up, and /readyz never answered. Each now gives up on the broker, answers,
    and leaves the committed request to the reconciler."""
    with silent_broker() as port:
        settings = Settings(  # type: ignore[call-arg]
            UNLEARN_VAR_DIR=str(tmp_path / "var"),
            BROKER_URL=f"redis://127.0.0.1:{port}/0",
            UNLEARN_WRITE_RATE_PER_KEY=0,  # the limiter's own Redis client has its timeouts already
        )
        with ThreadPoolExecutor(1) as pool:
            for api in serve_toy(settings):
                sent = pool.submit(post, api, {"sample_ids": ["toy-0003"]})
                assert sent.result(timeout=120).status_code == 202
                ready = pool.submit(api.client.get, "/readyz").result(timeout=120)
                assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
                assert api.counts()[0] == 1


def test_the_openapi_document_lists_what_the_screen_and_the_checkpoint_download_answer(api: Api) -> None:
    """Every write can meet the screen's 415 (a body with a Content-Encoding), and a download answers 206,
    304, 412 and 416: none of them was in the document, so a client generated from it met statuses it did
    not know (a probe)."""
    paths = api.client.get("/openapi.json").json()["paths"]
    writes = [op for ops in paths.values() for method, op in ops.items() if method not in ("get", "head")]
    assert writes and all("415" in op["responses"] for op in writes)
    download = paths["/v1/models/{model}/versions/{version}/checkpoint"]["get"]["responses"]
    assert {"206", "304", "410", "412", "416"} <= set(download)
    refused = api.client.post(
        "/v1/models/toy/deletion-requests", content=b"x", headers={**api.auth(), "Content-Encoding": "gzip"}
    )
    assert refused.status_code == 415, refused.text


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/deletion-requests", "/v1/audit/export"])
def test_an_empty_model_filter_names_no_model_on_every_list(api: Api, path: str) -> None:
    """`?model=` was a 404 on the job list and ignored by the audit export, which then exported every
    model's events to a client that meant to filter (a contract probe)."""
    r = api.client.get(path + "?model=", headers=api.auth())
    assert r.status_code == 404, r.text
    assert "model" in r.json()["detail"]


def test_a_trailing_slash_is_redirected_by_a_relative_location_whatever_the_host_header(api: Api) -> None:
    """Starlette's redirect wrote the request's Host header into `Location`: a forged Host (or a cache
    keyed without it) sent clients to another server, keys and all (a contract probe)."""
    headers = {**api.auth(), "Host": "evil.example"}
    r = api.client.get("/v1/jobs/?limit=5", headers=headers, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/v1/jobs?limit=5", (r.status_code, r.headers)
    r = api.client.post(
        "/v1/models/toy/deletion-requests/",
        json={"sample_ids": ["toy-0001"]},
        headers=headers,
        follow_redirects=False,
    )
    assert r.status_code == 307 and r.headers["location"] == "/v1/models/toy/deletion-requests"
    assert post(api, {"sample_ids": ["toy-0001"]}).status_code == 202
    r = api.client.get("/v1/jobs/?model=caf%C3%A9&x=a+b", headers=headers, follow_redirects=False)
    assert r.headers["location"] == "/v1/jobs?model=caf%C3%A9&x=a+b", r.headers
    r = api.client.get("/v1/nothing/", headers=headers, follow_redirects=False)
    assert r.status_code == 404 and r.json()["detail"] == "no route here: /v1/nothing/", r.text
    r = api.client.get("/v1/models/toy/samples/?limit=2", headers=headers, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/v1/models/toy/samples?limit=2", r.text
    r = api.client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/dashboard/"
