"""Deletion by data subject (issue 15): a dataset may say whose each sample is, a request may name people
instead of rows, and the request, its audit trail and its certificate bind both the people and the samples
they stood for. Through the real ASGI app on the embedded database; no worker (a job is closed by hand)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds  # type: ignore[import-untyped,unused-ignore]
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from models.datasets import load_csv_manifest, load_npz
from service.api.app import create_app
from service.cli.audit_log import certificate_evidence
from service.cli.client import ApiError, Client
from service.cli.documents import cmd_verify_certificate
from service.cli.errors import UsageError
from service.cli.parser import build_parser
from service.cli.request import cmd_request
from service.core import jobs, proofs
from service.core.dataset_ids import read_ids, read_samples
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, Dataset, DatasetSample, DeletionRequest, Model
from service.core.errors import Unprocessable
from service.core.events import ids_digest
from service.core.registry import register_dataset, register_model
from service.core.settings import Settings
from service.core.signing import public_key_b64, sign_document, verify_document
from service.core.states import JobState
from tests.factories import make_key, make_model, publish_version
from tests.helpers import migrated
from workers import claims


def person(i: int) -> str | None:
    """toy-0000..0039 belong to person-0..4 (eight each, every fifth); toy-0040..0049 to no one."""
    return f"person-{i % 5}" if i < 40 else None


def samples_of(p: int) -> list[str]:
    return [f"toy-{i:04d}" for i in range(40) if i % 5 == p]


@dataclass
class Api:
    client: TestClient
    url: str
    key: str
    admin: str
    settings: Settings

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post(self, body: object, model: str = "toy", **headers: str) -> Any:
        return self.client.post(
            f"/v1/models/{model}/deletion-requests", json=body, headers={**self.auth(), **headers}
        )

    def counts(self) -> tuple[int, int]:
        with session_scope(self.url) as s:
            return (
                s.scalar(select(func.count()).select_from(DeletionRequest)) or 0,
                s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
            )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(  # type: ignore[call-arg]
        UNLEARN_VAR_DIR=str(tmp_path / "var"),
        UNLEARN_DATA_ROOTS=str(tmp_path / "data"),
        UNLEARN_MAX_SAMPLE_IDS=20,
    )
    settings.var_dir.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    url = settings.resolved_database_url
    migrated(url)
    with session_scope(url) as s:
        make_model(s, name="toy", n_train=50, subject_of=person)
        make_model(s, name="plain", n_train=20)  # a training set without subjects
        key = make_key(s, scopes=("deletion:write", "jobs:read", "audit:read"))
        admin = make_key(s, scopes=("admin",))
    with TestClient(create_app(settings)) as client:
        yield Api(client, url, key, admin, settings)


def stored(api: Api, request_id: str) -> DeletionRequest:
    with session_scope(api.url) as s:
        req = s.get_one(DeletionRequest, request_id)
        s.expunge(req)
        return req


# -- datasets that name subjects -------------------------------------------------------------------------


def subject_npz(path: Path, subjects: list[str]) -> None:
    n = len(subjects)
    np.savez(
        path,
        x=np.random.default_rng(0).random((n, 4), dtype=np.float32),
        y=np.arange(n, dtype=np.int64) % 3,
        ids=np.array([f"s{i}" for i in range(n)]),
        subject_ids=np.array(subjects),
    )


def test_npz_and_manifest_subjects_are_read_with_empty_meaning_no_one(tmp_path: Path) -> None:
    subject_npz(tmp_path / "d.npz", ["ann", "bob", "", "ann"])
    got = read_samples("npz", tmp_path / "d.npz")
    assert got.sample_ids == ["s0", "s1", "s2", "s3"] and got.subject_ids == ["ann", "bob", None, "ann"]
    # The worker's loader ignores the extra array, and read_ids keeps its old shape.
    assert load_npz(tmp_path / "d.npz").ids == ["s0", "s1", "s2", "s3"]
    assert read_ids("npz", tmp_path / "d.npz") == (["s0", "s1", "s2", "s3"], [0, 1, 2, 0])

    np.save(tmp_path / "img.npy", np.zeros((2, 2), dtype=np.float32))
    manifest = tmp_path / "m.csv"
    manifest.write_text("sample_id,path,label,subject_id\na,img.npy,0,ann\nb,img.npy,1,\nc,img.npy,1,bob\n")
    got = read_samples("csv_manifest", manifest)
    assert got.sample_ids == ["a", "b", "c"] and got.subject_ids == ["ann", None, "bob"]
    plain = tmp_path / "p.csv"
    plain.write_text("sample_id,path,label\na,img.npy,0\n")
    assert read_samples("csv_manifest", plain).subject_ids is None
    assert load_csv_manifest(manifest).ids == ["a", "b", "c"]  # the worker ignores the extra column


def test_npy_folder_and_shard_subjects_are_read_with_empty_meaning_no_one(tmp_path: Path) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((3, 2, 2), dtype=np.float32))
    np.save(folder / "y.npy", np.array([0, 1, 0]))
    np.save(folder / "ids.npy", np.array(["a", "b", "c"]))
    np.save(folder / "subject_ids.npy", np.array(["ann", "", "bob"]))
    got = read_samples("npy", folder)
    assert got.sample_ids == ["a", "b", "c"] and got.subject_ids == ["ann", None, "bob"]
    (folder / "subject_ids.npy").unlink()
    assert read_samples("npy", folder).subject_ids is None

    png = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(png, format="PNG")
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        sink.write({"__key__": "k0", "png": png.getvalue(), "cls": "1", "subject_id": "ann"})
        sink.write({"__key__": "k1", "png": png.getvalue(), "cls": "0"})
    got = read_samples("webdataset", tmp_path / "s.tar")
    assert got.sample_ids == ["k0", "k1"] and got.labels == [1, 0] and got.subject_ids == ["ann", None]


@pytest.mark.parametrize(
    ("subjects", "says"),
    [
        (np.array(["a", "b"]), "one entry per sample"),
        (np.arange(3), "unicode"),
        (np.array([["a"], ["b"], ["c"]]), "one entry per sample"),
    ],
)
def test_malformed_subject_arrays_are_refused_by_name(tmp_path: Path, subjects: Any, says: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        x=np.zeros((3, 2)),
        y=np.zeros(3, dtype=np.int64),
        ids=np.array(["a", "b", "c"]),
        subject_ids=subjects,
    )
    with pytest.raises(Unprocessable) as err:
        read_samples("npz", path)
    assert "subject_ids" in err.value.detail and says in err.value.detail


def test_registration_stores_subjects_and_refuses_ones_a_request_could_not_name(
    api: Api, tmp_path: Path
) -> None:
    npz = tmp_path / "data" / "people.npz"
    subject_npz(npz, ["ann", "bob", "", "ann"])
    admin = api.auth(api.admin)
    r = api.client.post(
        "/v1/datasets", json={"name": "people", "kind": "npz", "uri": str(npz)}, headers=admin
    )
    assert r.status_code == 201, r.text
    up = api.client.post(
        "/v1/datasets/upload",
        data={"name": "people-up"},
        files={"file": ("p.npz", npz.read_bytes())},
        headers=admin,
    )
    assert up.status_code == 201, up.text
    manifest = tmp_path / "data" / "people.csv"
    manifest.write_text("sample_id,path,label,subject_id\nm0,a.png,0,carl\nm1,b.png,1,\n")
    for image in ("a.png", "b.png"):  # must exist; their bytes are not read at registration
        (tmp_path / "data" / image).write_bytes(b"")
    m = api.client.post(
        "/v1/datasets", json={"name": "people-m", "kind": "csv_manifest", "uri": str(manifest)}, headers=admin
    )
    assert m.status_code == 201, m.text
    with session_scope(api.url) as s:
        for ds_id, want in (
            (r.json()["id"], ["ann", "bob", None, "ann"]),
            (up.json()["id"], ["ann", "bob", None, "ann"]),
            (m.json()["id"], ["carl", None]),
        ):
            rows = s.scalars(
                select(DatasetSample.subject_id)
                .where(DatasetSample.dataset_id == ds_id)
                .order_by(DatasetSample.position)
            )
            assert list(rows) == want
        event = s.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "dataset.registered", AuditEvent.entity_id == r.json()["id"]
            )
        ).one()
        assert (event.data["subject_count"], event.data["samples_with_subject"]) == (2, 3)

    for bad, says in ((["ok", "x" * 201], "longer than 200"), (["ok", "a\x00b"], "NUL")):
        path = tmp_path / "data" / f"bad{len(says)}.npz"
        subject_npz(path, bad)
        r = api.client.post(
            "/v1/datasets", json={"name": f"bad{len(says)}", "kind": "npz", "uri": str(path)}, headers=admin
        )
        assert (
            r.status_code == 422 and "subject ID(s)" in r.json()["detail"] and says in r.json()["detail"]
        ), r.text
    with session_scope(api.url) as s:
        assert s.scalar(select(func.count()).select_from(Dataset).where(Dataset.name.like("bad%"))) == 0


def test_subjects_are_stored_without_surrounding_whitespace_and_blank_means_no_one(
    api: Api, tmp_path: Path
) -> None:
    """A probe's manifest held " alice", "alice " and "alice": three subjects, so a request naming alice
    left two of her samples. (A shard's `.subject_id` member was already read stripped.)"""
    npz = tmp_path / "data" / "padded.npz"
    subject_npz(npz, [" alice", "alice ", "alice", "   ", "bob\n"])
    r = api.client.post(
        "/v1/datasets", json={"name": "padded", "kind": "npz", "uri": str(npz)}, headers=api.auth(api.admin)
    )
    assert r.status_code == 201, r.text
    with session_scope(api.url) as s:
        rows = s.scalars(
            select(DatasetSample.subject_id)
            .where(DatasetSample.dataset_id == r.json()["id"])
            .order_by(DatasetSample.position)
        )
        assert list(rows) == ["alice", "alice", "alice", None, "bob"]


def model_on_uploaded_subjects(api: Api, tmp_path: Path, name: str, subjects: list[str]) -> None:
    """Model ``name`` trained on an uploaded npz whose samples s0, s1, ... belong to ``subjects``."""
    npz = tmp_path / "data" / f"{name}.npz"
    subject_npz(npz, subjects)
    up = api.client.post(
        "/v1/datasets/upload", data={"name": name}, files={"file": ("p.npz", npz.read_bytes())},
        headers=api.auth(api.admin),
    )  # fmt: skip
    assert up.status_code == 201, up.text
    with session_scope(api.url) as s:
        train = s.get_one(Dataset, up.json()["id"])
        register_model(
            s, tenant="default", name=name, architecture="mlp", arch_kwargs={}, num_classes=3,
            train=train, test=train, checkpoint_uri="/nonexistent", checkpoint_sha256="0" * 64,
            default_method="ugradsl_plus", default_params={}, train_recipe={}, gates={}, metrics={},
            actor="test",
        )  # fmt: skip


def test_a_certificate_is_checked_against_subjects_that_hold_commas_from_a_file(tmp_path: Path) -> None:
    """--subjects splits at commas, and a subject may hold one: "Doe, John"'s certificate could not be
    checked against his name (a probe)."""
    from service.cli.documents import _subjects_match, named_subjects
    from service.core.proofs import ids_sha256

    names = tmp_path / "subjects.txt"
    names.write_text("Doe, John\nann\n")
    named = named_subjects(argparse.Namespace(subjects=None, subjects_file=str(names)))
    assert named == ["Doe, John", "ann"]
    assert _subjects_match({"subject_ids_sha256": ids_sha256(["ann", "Doe, John"])}, named)[0]
    split = named_subjects(argparse.Namespace(subjects="Doe, John", subjects_file=None))
    assert split == ["Doe", "John"]  # what the comma-separated flag reads


def test_a_model_on_an_uploaded_dataset_with_subjects_forgets_by_subject(api: Api, tmp_path: Path) -> None:
    model_on_uploaded_subjects(api, tmp_path, "people", ["ann", "bob", "", "ann"])
    r = api.post({"subject_ids": ["ann"]}, model="people")
    assert r.status_code == 202, r.text
    assert stored(api, r.json()["id"]).sample_ids == ["s0", "s3"]
    listed = api.client.get("/v1/models/people/samples", params={"subject_id": "ann"}, headers=api.auth())
    assert [(i["sample_id"], i["subject_id"]) for i in listed.json()["items"]] == [
        ("s0", "ann"),
        ("s3", "ann"),
    ]


def test_one_subject_spelled_with_and_without_combining_marks_is_one(api: Api, tmp_path: Path) -> None:
    """A probe's data held "Zoë" once as one code point and three times with a combining diaeresis: a
    request naming Zoë as typed, and the samples view, found one sample of four."""
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"
    model_on_uploaded_subjects(api, tmp_path, "zoe", [composed, decomposed, decomposed + " ", "zoe"])
    for named in (composed, decomposed):
        listed = api.client.get("/v1/models/zoe/samples", params={"subject_id": named}, headers=api.auth())
        assert [i["sample_id"] for i in listed.json()["items"]] == ["s0", "s1", "s2"]
        assert {i["subject_id"] for i in listed.json()["items"]} == {composed}
        r = api.post({"subject_ids": [named]}, model="zoe")
        assert r.status_code == 202, r.text
        assert stored(api, r.json()["id"]).sample_ids == ["s0", "s1", "s2"]  # "zoe" is someone else
    # named in both spellings, she is one subject, and a certificate binds her however she is typed
    from service.cli.documents import _subjects_match, named_subjects
    from service.core.proofs import ids_sha256
    from service.core.subjects import spellings

    both = api.post({"subject_ids": [composed, decomposed, f" {decomposed}"]}, model="zoe")
    assert both.status_code == 202 and both.json()["subject_ids"] == [composed], both.text
    cert = {"subject_ids_sha256": ids_sha256([composed])}
    for given in (decomposed, f"{composed}, {decomposed}"):
        named = named_subjects(argparse.Namespace(subjects=given, subjects_file=None))
        assert named is not None and _subjects_match(cert, named)[0]
    older = {"subject_ids_sha256": ids_sha256([decomposed])}  # a request made before subjects were composed
    assert _subjects_match(older, [decomposed])[0] and not _subjects_match(older, ["zoe"])[0]
    # a dataset registered before subjects were normalised may hold either form: both are looked for

    assert set(spellings(composed)) == set(spellings(decomposed + " ")) == {composed, decomposed}


# -- requests that name subjects --------------------------------------------------------------------------


def test_a_subject_stands_for_exactly_its_samples_and_the_view_shows_it(api: Api) -> None:
    r = api.post({"subject_ids": ["person-2"], "reference": "gdpr-17"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["subject_ids"] == ["person-2"] and body["sample_count"] == 8
    req = stored(api, body["id"])
    assert req.sample_ids == samples_of(2) and req.subject_ids == ["person-2"]
    got = api.client.get(f"/v1/deletion-requests/{body['id']}", headers=api.auth()).json()
    assert got["subject_ids"] == ["person-2"]
    plain = api.post({"sample_ids": ["toy-0041"]}).json()
    assert plain["subject_ids"] == [] and stored(api, plain["id"]).subject_ids is None
    with session_scope(api.url) as s:
        event = s.scalars(
            select(AuditEvent).where(
                AuditEvent.entity_id == body["id"], AuditEvent.action == "deletion_request.received"
            )
        ).one()
    assert event.data["sample_ids_sha256"] == ids_digest(samples_of(2))
    assert event.data["subject_ids_sha256"] == ids_digest(["person-2"]) and event.data["subject_count"] == 1


def test_subjects_and_samples_together_are_the_union_without_duplicates(api: Api) -> None:
    r = api.post(
        {"sample_ids": ["toy-0045", "toy-0001"], "subject_ids": ["person-1", "person-3", "person-1"]}
    )
    assert r.status_code == 202, r.text
    req = stored(api, r.json()["id"])
    # Named samples first, then the subjects' samples in dataset order; toy-0001 is person-1's, kept once.
    assert req.sample_ids == [
        "toy-0045",
        "toy-0001",
        *sorted(set(samples_of(1) + samples_of(3)) - {"toy-0001"}),
    ]
    assert req.subject_ids == ["person-1", "person-3"] and r.json()["sample_count"] == 17


def test_a_subject_is_named_as_registration_stores_it_trimmed(api: Api) -> None:
    """Registration stores " person-2 " as "person-2"; a request (or the samples view) that named it with
    its spaces found no one and was refused as an unknown subject."""
    r = api.post({"subject_ids": [" person-2", "person-2 "]})
    assert r.status_code == 202, r.text
    assert r.json()["subject_ids"] == ["person-2"] and r.json()["sample_count"] == 8
    listed = api.client.get("/v1/models/toy/samples", params={"subject_id": " person-2 "}, headers=api.auth())
    assert sorted(s["sample_id"] for s in listed.json()["items"]) == samples_of(2)
    blank = api.client.get("/v1/models/toy/samples", params={"subject_id": "  "}, headers=api.auth())
    assert blank.status_code == 422 and "more than spaces" in blank.json()["detail"]
    named = api.post({"subject_ids": ["person-2", "   "]})  # the refusal names the item (a probe)
    assert named.status_code == 422 and named.json()["errors"][0]["loc"] == ["body", "subject_ids", 1]


def test_unknown_subjects_are_refused_by_name_and_nothing_is_written(api: Api) -> None:
    before = api.counts()
    r = api.post({"subject_ids": ["person-0", "nobody", "ghost"], "sample_ids": ["toy-0001", "nope"]})
    assert r.status_code == 422
    body = r.json()
    assert body["unknown_subject_ids"] == ["nobody", "ghost"] and body["unknown_subject_count"] == 2
    assert body["unknown_ids"] == ["nope"] and body["unknown_count"] == 1
    assert "2 subject ID(s) have no sample in the training set" in body["detail"]
    assert api.counts() == before


def test_a_training_set_without_subjects_says_so(api: Api) -> None:
    before = api.counts()
    r = api.post({"subject_ids": ["person-0"]}, model="plain")
    assert r.status_code == 422
    assert "has no subjects" in r.json()["detail"] and r.json()["unknown_subject_ids"] == ["person-0"]
    assert api.counts() == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"sample_ids": [], "subject_ids": []},
        {"sample_ids": None, "subject_ids": None},
        {"sample_ids": None, "subject_ids": []},
        {"sample_ids": None},
        {"subject_ids": [""]},
        {"subject_ids": ["  "]},
        {"subject_ids": ["a\x00"]},
        {"subject_ids": "p"},
    ],
)
def test_a_request_must_name_something_well_formed(api: Api, body: object) -> None:
    r = api.post(body)
    assert r.status_code == 422 and r.json()["errors"], r.text


def test_a_null_list_is_taken_as_absent(api: Api) -> None:
    """SDKs send null for a list they leave out; it was a 422 "Input should be a valid list"."""
    r = api.post({"subject_ids": None, "sample_ids": ["toy-0041"]})
    assert r.status_code == 202, r.text
    assert (r.json()["sample_count"], r.json()["subject_ids"]) == (1, [])
    r = api.post({"sample_ids": None, "subject_ids": ["person-1"]})
    assert r.status_code == 202, r.text
    assert (r.json()["sample_count"], r.json()["subject_ids"]) == (8, ["person-1"])
    items = [
        {"sample_ids": None, "subject_ids": ["person-2"]},
        {"sample_ids": ["toy-0042"], "subject_ids": None},
    ]
    r = api.client.post(
        "/v1/models/toy/deletion-requests/batch", json={"requests": items}, headers=api.auth()
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text


def test_the_sample_limit_counts_the_expanded_samples(api: Api) -> None:
    before = api.counts()
    r = api.post({"subject_ids": ["person-0", "person-1", "person-2"]})  # 24 samples, the limit is 20
    assert r.status_code == 413, r.text
    assert "24 distinct sample IDs once the 3 subject(s) are expanded" in r.json()["detail"]
    assert api.counts() == before
    assert api.post({"subject_ids": ["person-0", "person-1"]}).status_code == 202  # 16


def test_idempotency_covers_the_subjects(api: Api) -> None:
    first = api.post({"subject_ids": ["person-4"]}, **{"Idempotency-Key": "k1"})
    again = api.post({"subject_ids": ["person-4", "person-4"]}, **{"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200) and again.json()["id"] == first.json()["id"]
    other = api.post({"subject_ids": ["person-3"]}, **{"Idempotency-Key": "k1"})
    assert other.status_code == 422 and "different body" in other.json()["detail"]
    # The same samples named directly are another body than the subject that stands for them.
    direct = api.post({"sample_ids": samples_of(4)}, **{"Idempotency-Key": "k1"})
    assert direct.status_code == 422


# -- certificates -------------------------------------------------------------------------------------------


def complete(api: Api, request_id: str) -> dict[str, Any]:
    """Close the request's job as completed (as a worker would) and fetch its signed certificate."""
    req = stored(api, request_id)
    with session_scope(api.url) as s:
        model = s.get_one(Model, req.model_id)
        job = claims.claim_pending(s, model)
        assert job is not None
        job.base_version = model.latest_version
        number = publish_version(s, model, list(req.sample_ids), job_id=job.id)
        jobs.close(s, job, JobState.COMPLETED, result_version=number)
    r = api.client.get(f"/v1/deletion-requests/{request_id}/certificate", headers=api.auth())
    assert r.status_code == 200, r.text
    return dict(r.json())


def signing_key(api: Api) -> Any:
    return api.client.app.state.signing_key  # type: ignore[attr-defined]


def test_a_subject_certificate_verifies_offline_and_binds_the_subjects(api: Api, tmp_path: Path) -> None:
    rid = api.post({"subject_ids": ["person-0", "person-1"]}).json()["id"]
    signed = complete(api, rid)
    cert = signed["certificate"]
    assert cert["subject_count"] == 2 and cert["subject_ids_sha256"] == ids_digest(["person-1", "person-0"])
    assert (
        cert["sample_ids_sha256"] == ids_digest(samples_of(0) + samples_of(1)) and cert["sample_count"] == 16
    )
    trusted = public_key_b64(signing_key(api))
    assert verify_document(signed, trusted)[0]
    ok, why = certificate_evidence(signed, trusted)
    assert ok and "sample and subject digests are those in the log" in why, why

    # Change a subject: the signature no longer matches ...
    forged = json.loads(json.dumps(signed))
    forged["certificate"]["subject_ids_sha256"] = ids_digest(["person-0", "person-9"])
    assert not verify_document(forged, trusted)[0]
    # ... and even re-signed with the service's own key, the audit log contradicts it.
    resigned = sign_document(signing_key(api), forged["certificate"])
    assert verify_document(resigned, trusted)[0]
    ok, why = certificate_evidence(resigned, trusted)
    assert not ok and "subject digest" in why
    # Dropping the subjects is caught the same way.
    dropped = {k: v for k, v in cert.items() if k not in ("subject_count", "subject_ids_sha256")}
    ok, why = certificate_evidence(sign_document(signing_key(api), dropped), trusted)
    assert not ok and "subject digest" in why

    # `unlearn verify-certificate --subjects` recomputes the digest from the names a data subject holds.
    path, pem = tmp_path / "cert.json", tmp_path / "key.pem"
    path.write_text(json.dumps(signed))
    pem.write_text(api.client.get("/v1/audit/public-key", headers=api.auth()).json()["pem"])
    args = argparse.Namespace(file=str(path), public_key=str(pem), subjects="person-1,person-0")
    assert cmd_verify_certificate(args) == 0
    args.subjects = "person-1"
    assert cmd_verify_certificate(args) == 1


def test_a_certificate_without_subjects_still_verifies(api: Api) -> None:
    signed = complete(api, api.post({"sample_ids": ["toy-0042"]}).json()["id"])
    cert, trusted = signed["certificate"], public_key_b64(signing_key(api))
    assert (cert["subject_count"], cert["subject_ids_sha256"]) == (0, None)
    assert certificate_evidence(signed, trusted)[0]
    # A certificate issued before subjects existed has neither field; its event carries null: it verifies.
    old = {k: v for k, v in cert.items() if k not in ("subject_count", "subject_ids_sha256")}
    assert certificate_evidence(sign_document(signing_key(api), old), trusted)[0]
    # An event written before events carried digests binds nothing beyond the signature.
    event = dict(
        cert["audit"]["event"], data={"job_id": cert["job_id"], "model_version": "v2", "error": None}
    )
    ok, why = proofs.verify_certificate_binding(old, event)
    assert ok and "predates" in why


# -- the CLI -------------------------------------------------------------------------------------------------


def cli_client(api: Api) -> Client:
    """The CLI's own client, speaking HTTP to the real app (through Starlette's test transport)."""
    client = Client("http://testserver", api.key)
    client._http = TestClient(api.client.app, headers={"Authorization": f"Bearer {api.key}"})
    return client


def request_args(**kw: Any) -> argparse.Namespace:
    base = {
        "model": "toy",
        "ids_file": None,
        "subjects": None,
        "subjects_file": None,
        "reference": None,
        "reason": "erasure",
        "wait": False,
    }
    return argparse.Namespace(**(base | kw))


def test_unlearn_request_sends_subjects(api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = cli_client(api)
    assert cmd_request(client, request_args(subjects="person-1, person-2")) == 0
    assert "16 sample(s) of 2 subject(s)" in capsys.readouterr().out
    (tmp_path / "s.txt").write_text("person-3\n# a comment\n\n")
    (tmp_path / "i.txt").write_text("toy-0041\n")
    assert (
        cmd_request(
            client, request_args(subjects_file=str(tmp_path / "s.txt"), ids_file=str(tmp_path / "i.txt"))
        )
        == 0
    )
    with session_scope(api.url) as s:
        sent = [
            (r.subject_ids, sorted(r.sample_ids))
            for r in s.scalars(select(DeletionRequest).order_by(DeletionRequest.created_at))
        ]
    assert sent == [
        (["person-1", "person-2"], sorted(samples_of(1) + samples_of(2))),
        (["person-3"], sorted(["toy-0041", *samples_of(3)])),
    ]
    assert build_parser().parse_args(["request", "toy", "--reason", "mislabeled"]).reason == "mislabeled"
    assert cmd_request(client, request_args(subjects="person-4", reason="mislabeled")) == 0
    with session_scope(api.url) as s:
        reasons = [r.reason for r in s.scalars(select(DeletionRequest).order_by(DeletionRequest.created_at))]
    assert reasons == ["erasure", "erasure", "mislabeled"]
    with pytest.raises(UsageError, match="name what to forget"):
        cmd_request(client, request_args())
    with pytest.raises(UsageError, match="names no subject"):
        cmd_request(client, request_args(subjects=" , "))


def test_the_cli_names_unknown_subjects_and_why_each_field_is_invalid(api: Api, tmp_path: Path) -> None:
    """Only unknown samples were shown (`unknown_ids`); unknown subjects, and the reason of each invalid
    field of a validation error ("invalid fields: query.limit", no bound), were left out."""
    client = cli_client(api)
    with pytest.raises(ApiError, match=r"1 subject ID\(s\) have no sample .* \(e\.g\. ghost\)$"):
        cmd_request(client, request_args(subjects="ghost,person-1"))
    (tmp_path / "i.txt").write_text("nope1\n")
    with pytest.raises(ApiError, match=r"\(e\.g\. samples nope1; subjects ghost\)$"):
        cmd_request(client, request_args(subjects="ghost", ids_file=str(tmp_path / "i.txt")))
    with pytest.raises(ApiError) as refused:
        client.requests(limit=1000)
    assert refused.value.message == "invalid fields: query.limit (Input should be less than or equal to 500)"


def test_an_ids_file_keeps_each_id_exactly_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line was cut at its first `#` and stripped: `u-1#old` was sent as `u-1`, and a probe's job forgot
    that other sample without a word. Only whole lines that start with `#`, and empty lines, are skipped."""
    from service.cli.request import read_ids

    path = tmp_path / "ids.txt"
    path.write_text("# ticket 7\nu-1#old\n  padded \ntab|#hash|00016\n\n   \r\nlast\r\n")
    assert read_ids(str(path)) == ["u-1#old", "  padded ", "tab|#hash|00016", "last"]
    path.write_text("line\u2028sep\nnel\x85next\n", encoding="utf-8")  # split at newlines only (a review)
    assert read_ids(str(path)) == ["line\u2028sep", "nel\x85next"]
    path.write_text("\ufeffbom-first\nsecond\n", encoding="utf-8")  # a Windows editor's byte-order mark
    assert read_ids(str(path)) == ["bom-first", "second"]
    path.write_text('["#starts-with-hash", "   "]')
    assert read_ids(str(path)) == ["#starts-with-hash", "   "]
    path.write_text("a\nb\n", encoding="utf-16")  # what PowerShell's `>` writes: one line, not a traceback
    with pytest.raises(UsageError, match="is not UTF-8 text; save it as UTF-8"):
        read_ids(str(path))
    with pytest.raises(UsageError, match="cannot read the sample IDs file .*No such file"):
        read_ids(str(tmp_path / "missing.txt"))
    # the same from standard input: a pipe of UTF-16 had ended in a traceback (a review)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("a\nb\n".encode("utf-16"))))
    with pytest.raises(UsageError, match="given on standard input is not UTF-8 text"):
        read_ids("-")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffpiped\r\nu-2#x\n".encode())))
    assert read_ids("-") == ["piped", "u-2#x"]
    from service.cli.registration import json_arg

    with pytest.raises(UsageError, match="cannot read the --spec file"):
        json_arg(f"@{tmp_path / 'missing.json'}", "--spec")
    (tmp_path / "bom.json").write_text('\ufeff{"a": 1}', encoding="utf-8")
    assert json_arg(f"@{tmp_path / 'bom.json'}", "--spec") == {"a": 1}
    path.write_text("# only a comment\n")
    with pytest.raises(UsageError, match="holds no sample IDs"):
        read_ids(str(path))


def test_the_request_parser_takes_subjects() -> None:
    from service.cli.parser import build_parser

    args = build_parser().parse_args(["request", "toy", "--subjects", "a,b"])
    assert (args.subjects, args.ids_file) == ("a,b", None)
    assert build_parser().parse_args(["verify-certificate", "c.json", "--subjects", "a"]).subjects == "a"


def test_register_dataset_checks_subject_lengths(db_url: str) -> None:
    with session_scope(db_url) as s, pytest.raises(ValueError, match="differ in length"):
        register_dataset(
            s, tenant="t", name="d", kind="npz", uri="/x", sample_ids=["a", "b"], labels=[0, 1], actor="t",
            subject_ids=["p"],
        )  # fmt: skip


def test_repeated_sample_ids_are_refused_naming_them(api: Api, tmp_path: Path) -> None:
    npz = tmp_path / "data" / "twice.npz"
    np.savez(npz, x=np.zeros((3, 4), np.float32), y=np.zeros(3, np.int64), ids=np.array(["a", "b", "a"]))
    r = api.client.post(
        "/v1/datasets", json={"name": "twice", "kind": "npz", "uri": str(npz)}, headers=api.auth(api.admin)
    )
    assert r.status_code == 422, r.text
    assert "1 repeat, e.g. ['a']" in r.json()["detail"]
