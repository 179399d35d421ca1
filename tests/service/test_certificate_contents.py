"""What a deletion certificate says about which version forgot the request's samples, on a fresh SQLite
database per test (versions are published the way the worker's `JobStore.publish` records them)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from service.cli.documents import _versions
from service.core import certificates, jobs
from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest, Job, Model
from service.core.states import JobState
from tests.factories import make_model, publish_version, submit_request
from workers import claims


def claim(s: Session, model: Model) -> Job:
    job = claims.claim_pending(s, model)
    assert job is not None
    job.base_version = model.latest_version  # as the worker's load_context stamps it
    return job


def publish(s: Session, model: Model, job: Job, ids: list[str]) -> int:
    """Publish the next version, forgetting `ids`, and complete `job` with it."""
    number = publish_version(s, model, ids, job_id=job.id)
    jobs.close(s, job, JobState.COMPLETED, result_version=number)
    return number


def test_a_request_accepted_while_another_job_forgot_its_samples_is_certified_with_the_version_that_did(
    db_url: str,
) -> None:
    key = Ed25519PrivateKey.generate()
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        first = submit_request(s, model, ["toy-0001", "toy-0002"])
        running = claim(s, model)
        # While the first job runs, a second request names one of its samples and a new one: at intake
        # nothing is forgotten yet, so it cannot count the shared one as already forgotten.
        second = submit_request(s, model, ["toy-0002", "toy-0003"])
        assert second.already_forgotten_count == 0
        assert publish(s, model, running, ["toy-0001", "toy-0002"]) == 2
        assert publish(s, model, claim(s, model), ["toy-0003"]) == 3  # the next job forgets what is new
    with session_scope(db_url) as s:
        cert = certificates.build(s, s.get_one(DeletionRequest, second.id), key)
        assert cert["version_before"]["version"] == "v2" and cert["version_after"]["version"] == "v3"
        assert cert["forgotten_by"] == [
            {"version": "v2", "sample_count": 1},
            {"version": "v3", "sample_count": 1},
        ]
        first_cert = certificates.build(s, s.get_one(DeletionRequest, first.id), key)
        assert first_cert["forgotten_by"] == [{"version": "v2", "sample_count": 2}]


def test_a_request_whose_samples_an_earlier_job_forgot_is_summed_up_with_the_versions_that_did(
    db_url: str,
) -> None:
    """Its job publishes nothing (the worker completes it on the version it found), and `unlearn
    verify-certificate` said "forgotten by toy v2 -> v2", as if a job had done nothing (a probe)."""
    key = Ed25519PrivateKey.generate()
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001", "toy-0002"])
        running = claim(s, model)
        late = submit_request(s, model, ["toy-0002"])
        assert publish(s, model, running, ["toy-0001", "toy-0002"]) == 2
        jobs.close(s, claim(s, model), JobState.COMPLETED, result_version=2)  # nothing left: a no-op
    with session_scope(db_url) as s:
        cert = certificates.build(s, s.get_one(DeletionRequest, late.id), key)
    assert cert["version_before"] == cert["version_after"]
    assert _versions(cert) == "v2 (no new version: earlier jobs forgot them, 1 in v2)"
    published = dict(cert, version_before={"version": "v1"})
    assert _versions(published) == "v1 -> v2"
    # completed on a version another job made, its own samples forgotten before (a probe's two requests
    # for the same IDs: "forgotten by tab v4 -> v5" where v4 had forgotten both)
    later = dict(cert, version_after={"version": "v3"})
    assert _versions(later) == "v2 -> v3 (v3 forgot none of them: earlier jobs did, 1 in v2)"
    by = [{"version": "v2", "sample_count": 1}, {"version": "v3", "sample_count": 2}]
    split = dict(later, forgotten_by=by)
    assert _versions(split) == "v2 -> v3 (1 in v2, 2 in v3)"


def test_a_certificate_is_bound_to_the_version_checkpoint_and_method_its_log_records(db_url: str) -> None:
    """A certificate is built from tables when it is asked for; a probe edited them (the request's version
    set back to v1, the version's checkpoint hash, the job's method) and every such certificate verified.
    The log's completion and publication events, proved in the same head, now say otherwise."""
    from service.cli.audit_log import certificate_evidence
    from service.core import events
    from service.core.db.tables import ModelVersion
    from service.core.signing import public_key_b64, sign_document

    key = Ed25519PrivateKey.generate()
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        req = submit_request(s, model, ["toy-0001", "toy-0002"])
        job = claim(s, model)
        job.method, job.params, job.metrics = "ugradsl_plus", {"lr": 0.03}, {"result": {"test_accuracy": 0.9}}
        number = publish_version(s, model, ["toy-0001", "toy-0002"], job_id=job.id)
        version = s.query(ModelVersion).filter_by(model_id=model.id, number=number).one()
        version.metrics = {"test_accuracy": 0.9, "test_scores_sha256": "ab"}
        events.version_published(s, model, version, method=job.method, params=job.params)
        jobs.close(s, job, JobState.COMPLETED, result_version=number)

    def verified() -> tuple[bool, str]:
        with session_scope(db_url) as s:
            cert = certificates.build(s, s.get_one(DeletionRequest, req.id), key)
        return certificate_evidence(sign_document(key, cert), public_key_b64(key))

    ok, why = verified()
    assert ok and "v2's checkpoint, method and metrics as logged" in why, why
    with session_scope(db_url) as s:  # another model, its own v2 published, for a request moved there
        other = make_model(s, name="other")
        moved = s.query(ModelVersion).filter_by(model_id=other.id, number=publish_version(s, other, [])).one()
        moved.metrics = {"test_accuracy": 0.9, "test_scores_sha256": "ab"}
        events.version_published(s, other, moved, method=job.method, params=job.params)
        other_id, toy_id = other.id, model.id
    cases = [  # (edits as (table, column, value), what verification says)
        ([(DeletionRequest, "model_version", 1)], "the certificate's version (v1) is not the one the audit"),
        ([(ModelVersion, "sha256", "0" * 64)], "the certificate's checkpoint_sha256 is not what the log"),
        ([(Job, "method", "retrain")], "the certificate's method is not what the log recorded for v2"),
        ([(Job, "metrics", {"result": {"test_accuracy": 1.0}})], "the certificate's metrics is not what"),
        # a review's: the job's base set to its result (to skip the method's check), the request moved to
        # another model's v2, the model renamed with its checkpoint hash changed
        ([(Job, "base_version", 2), (Job, "method", "retrain")], "the certificate's version before (v2)"),
        ([(DeletionRequest, "model_id", other_id)], "the proved version event is another model's"),
        ([(Model, "name", "renamed"), (ModelVersion, "sha256", "0" * 64)], "the certificate's checkpoint"),
    ]

    def edit(s: Session, table: type, column: str, value: object) -> object:
        row = {
            ModelVersion: lambda: s.query(ModelVersion).filter_by(model_id=toy_id, number=number).one(),
            DeletionRequest: lambda: s.get_one(DeletionRequest, req.id),
            Job: lambda: s.get_one(Job, job.id),
            Model: lambda: s.get_one(Model, toy_id),
        }[table]()
        kept = getattr(row, column)
        setattr(row, column, value)
        return kept

    for edits, says in cases:
        with session_scope(db_url) as s:
            kept = [(table, column, edit(s, table, column, value)) for table, column, value in edits]
        ok, why = verified()
        assert not ok and why.startswith(says), (edits, why)
        with session_scope(db_url) as s:
            for table, column, value in kept:
                edit(s, table, column, value)
    with session_scope(db_url) as s:
        edit(s, Model, "name", "renamed")  # a rename alone changes nothing the log recorded
    assert verified()[0]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"signature": "x"}, "`signature` must be an object with `public_key` and `value`"),
        ({"signature": {}}, "`signature.public_key` must be a base64 string"),
        ({"signature": {"public_key": "AAAA", "value": 7}}, "`signature.value` must be a base64 string"),
        ({"certificate": []}, "`certificate` must be an object"),
    ],
)
def test_a_malformed_certificate_is_refused_naming_the_field(change: dict, says: str) -> None:
    """Python's words came through: "malformed certificate: string indices must be integers, not 'str'"
    and "malformed certificate: 'public_key'" (a client probe)."""
    from service.core.signing import sign_document, verify_document

    signed = sign_document(Ed25519PrivateKey.generate(), {"request_id": "r"})
    assert verify_document(signed)[0]
    ok, reason = verify_document({**signed, **change})
    assert not ok and reason == f"malformed certificate: {says}"
