"""State transitions of deletion requests and jobs in the domain core (`service.core.deletions`,
`service.core.jobs`) with the audit events each one writes, on a fresh SQLite database per test; and the
API's state literals checked against the domain's enums so the two cannot drift."""

from __future__ import annotations

from typing import get_args

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.schemas import deletion as deletion_schema
from service.api.schemas import jobs as jobs_schema
from service.core import deletions, jobs, states
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, DeletionRequest, Job, Model
from service.core.errors import Conflict, NotFound, Unprocessable
from service.core.events import ids_digest
from service.core.keys import create_key
from service.core.states import JobPhase, JobState, RequestState, WebhookState
from tests.conftest import Backend
from tests.factories import make_model, submit_request, verified_log
from workers import claims

HOOK = "https://hooks.example/done"


def claim(s: Session, model: Model) -> Job:
    job = claims.claim_pending(s, model)
    assert job is not None
    return job


def events(s: Session, tenant: str = "default") -> list[AuditEvent]:
    return list(s.scalars(select(AuditEvent).where(AuditEvent.tenant == tenant).order_by(AuditEvent.seq)))


def actions(s: Session, tenant: str = "default") -> list[str]:
    return [e.action for e in events(s, tenant)]


@pytest.fixture
def model(db_url: str) -> Model:
    with session_scope(db_url) as s:
        return make_model(s, name="toy")


# -- submit ------------------------------------------------------------------------------------------


def test_submit_records_a_received_request_of_distinct_ids_with_its_event(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        key, _ = create_key(s, tenant="default", scopes=["deletion:write"])
        ids = ["toy-0002", "toy-0001", "toy-0002"]
        req = deletions.submit(s, model=model, key=key, sample_ids=ids, reference="r-1", max_ids=100)
    with session_scope(db_url) as s:
        req = s.get_one(DeletionRequest, req.id)
        assert (req.state, req.sample_ids, req.sample_count, req.job_id) == (
            RequestState.RECEIVED,
            ["toy-0002", "toy-0001"],
            2,
            None,
        )
        event = events(s)[-1]
        assert (event.action, event.entity_id, event.actor) == (
            "deletion_request.received",
            req.id,
            f"key:{key.prefix}",
        )
        assert event.data["sample_count"] == 2 and event.data["reference"] == "r-1"


def test_a_rejected_submission_writes_nothing(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        before = actions(s)
        with pytest.raises(Unprocessable):
            submit_request(s, model, ["toy-0001", "not-a-sample"])
        assert s.scalars(select(DeletionRequest)).all() == []
        assert actions(s) == before


# -- cancel a request --------------------------------------------------------------------------------


@pytest.mark.parametrize("queued", [False, True])
def test_cancelling_a_pending_request_cancels_it_with_an_event(
    db_url: str, model: Model, queued: bool
) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
        if queued:
            req.state = RequestState.QUEUED  # as rows written before wakes were throttled are
    with session_scope(db_url) as s:
        returned = deletions.cancel(s, "default", req.id, actor="key:abc")
        assert returned.id == req.id
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, req.id).state == RequestState.CANCELLED
        last = events(s)[-1]
        assert (last.action, last.entity_id, last.actor) == ("deletion_request.cancelled", req.id, "key:abc")
        assert verified_log(s)["ok"]


def test_cancelling_a_request_with_a_callback_makes_its_webhook_pending(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        hooked = submit_request(s, model, ["toy-0001"], callback_url=HOOK)
        silent = submit_request(s, model, ["toy-0002"])
    with session_scope(db_url) as s:
        deletions.cancel(s, "default", hooked.id, actor="test")
        deletions.cancel(s, "default", silent.id, actor="test")
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, hooked.id).webhook_state == WebhookState.PENDING
        assert s.get_one(DeletionRequest, silent.id).webhook_state is None


def test_cancelling_a_processing_request_is_a_conflict_and_changes_nothing(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
        claim(s, model)
        before = actions(s)
    with session_scope(db_url) as s, pytest.raises(Conflict, match="processing"):
        deletions.cancel(s, "default", req.id, actor="test")
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, req.id).state == RequestState.PROCESSING
        assert actions(s) == before


def test_cancelling_a_cancelled_request_again_is_a_conflict(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
        deletions.cancel(s, "default", req.id, actor="test")
        with pytest.raises(Conflict):
            deletions.cancel(s, "default", req.id, actor="test")
        assert actions(s).count("deletion_request.cancelled") == 1


def test_cancelling_another_tenants_request_is_not_found_and_changes_nothing(
    db_url: str, model: Model
) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
    with session_scope(db_url) as s, pytest.raises(NotFound):
        deletions.cancel(s, "intruder", req.id, actor="test")
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, req.id).state == RequestState.RECEIVED
        assert actions(s, "intruder") == []


def test_cancelling_an_unknown_request_is_not_found(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s, pytest.raises(NotFound):
        deletions.cancel(s, "default", "no-such-request", actor="test")


# -- cancel a job ------------------------------------------------------------------------------------


def test_request_cancel_flags_a_running_job_once_with_one_event(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        submit_request(s, model, ["toy-0001"])
        job_id = claim(s, model).id
    for _ in range(2):
        with session_scope(db_url) as s:
            job = jobs.request_cancel(s, "default", job_id, actor="key:admin")
            assert job.cancel_requested
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.cancel_requested) == (JobState.RUNNING, True)  # the worker ends it
        flagged = [e for e in events(s) if e.action == "job.cancel_requested"]
        assert [(e.entity_id, e.actor) for e in flagged] == [(job_id, "key:admin")]


def test_request_cancel_refuses_a_job_that_is_not_running(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s, pytest.raises(Conflict, match="completed"):
        jobs.request_cancel(s, "default", job.id, actor="test")
    with session_scope(db_url) as s:
        assert not s.get_one(Job, job.id).cancel_requested
        assert "job.cancel_requested" not in actions(s)


def test_request_cancel_of_another_tenants_job_is_not_found(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        submit_request(s, model, ["toy-0001"])
        job_id = claim(s, model).id
    with session_scope(db_url) as s, pytest.raises(NotFound):
        jobs.request_cancel(s, "intruder", job_id, actor="test")
    with session_scope(db_url) as s:
        assert not s.get_one(Job, job_id).cancel_requested


# -- retry -------------------------------------------------------------------------------------------


def failed_job(url: str, model: Model, n: int = 2, callback_url: str | None = None) -> tuple[str, list[str]]:
    with session_scope(url) as s:
        reqs = [submit_request(s, model, [f"toy-000{i}"], callback_url=callback_url) for i in range(n)]
        jobs.close(s, claim(s, model), JobState.FAILED, error="boom")
        return s.scalars(select(Job.id)).one(), [r.id for r in reqs]


@pytest.mark.parametrize("state", [JobState.RUNNING, JobState.COMPLETED, JobState.CANCELLED])
def test_retry_refuses_a_job_that_did_not_fail(db_url: str, model: Model, state: JobState) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        if state != JobState.RUNNING:
            jobs.close(s, job, state, result_version=2 if state == JobState.COMPLETED else None)
    with session_scope(db_url) as s, pytest.raises(Conflict, match=str(state)):
        jobs.retry(s, "default", job.id, actor="test")
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, req.id).job_id == job.id
        assert "deletion_request.retried" not in actions(s)


def test_retry_sends_a_failed_jobs_requests_back_to_received(db_url: str, model: Model) -> None:
    job_id, req_ids = failed_job(db_url, model, callback_url=HOOK)
    with session_scope(db_url) as s:
        assert jobs.retry(s, "default", job_id, actor="key:admin").id == job_id
    with session_scope(db_url) as s:
        rows = [s.get_one(DeletionRequest, i) for i in req_ids]
        assert [(r.state, r.job_id, r.error, r.webhook_state) for r in rows] == [
            (RequestState.RECEIVED, None, None, None)
        ] * 2
        assert s.get_one(Job, job_id).state == JobState.FAILED  # the job itself stays a record of the failure


def test_retry_writes_one_retried_event_per_request_naming_the_failed_job(db_url: str, model: Model) -> None:
    job_id, req_ids = failed_job(db_url, model)
    with session_scope(db_url) as s:
        start = len(events(s))
        jobs.retry(s, "default", job_id, actor="key:admin")
        new = events(s)[start:]
        assert [(e.action, e.entity_id, e.actor, e.data) for e in new] == [
            ("deletion_request.retried", i, "key:admin", {"failed_job_id": job_id}) for i in req_ids
        ]
        assert verified_log(s)["ok"]


def test_retried_requests_are_claimed_by_the_next_job(db_url: str, model: Model) -> None:
    job_id, req_ids = failed_job(db_url, model)
    with session_scope(db_url) as s:
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        again = claim(s, s.get_one(Model, model.id))
        assert again.id != job_id and sorted(again.request_ids) == sorted(req_ids)


def test_a_failed_job_is_retryable_until_its_requests_are_retried(db_url: str, model: Model) -> None:
    """The dashboard offered Retry on a job whose requests were retried already, and the click met a 409."""
    job_id, _ = failed_job(db_url, model)
    with session_scope(db_url) as s:
        assert jobs.retryable(s, [s.get_one(Job, job_id)]) == {job_id}
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        assert jobs.retryable(s, [s.get_one(Job, job_id)]) == set()
        again = claim(s, s.get_one(Model, model.id))
        assert jobs.retryable(s, [again]) == set()  # running: nothing to retry


def test_a_job_cancelled_by_an_admin_that_then_fails_ends_cancelled_and_cannot_be_retried(
    db_url: str, model: Model
) -> None:
    """The cancel was answered 200 and audited, then the run missed its gates: the job and its requests
    ended `failed`, `retryable`, and a retry would have brought the cancelled deletions back (a probe)."""
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        jobs.request_cancel(s, "default", job.id, actor="test")
    with session_scope(db_url) as s:
        job = s.get_one(Job, job.id)
        jobs.close(s, job, JobState.FAILED, error="every method failed its gates (x)")
    with session_scope(db_url) as s:
        job, req = s.get_one(Job, job.id), s.get_one(DeletionRequest, req.id)
        assert (job.state, req.state) == (JobState.CANCELLED, RequestState.CANCELLED)
        assert job.error == "cancelled by an admin; the attempt had failed: every method failed its gates (x)"
        assert jobs.retryable(s, [job]) == set()
        assert actions(s)[-2:] == ["deletion_request.cancelled", "job.cancelled"]


def test_retrying_a_job_whose_requests_failed_again_in_a_later_job_names_that_job(
    db_url: str, model: Model
) -> None:
    """It said "no longer failed (now: 1 failed)": they had failed again, in the job they joined."""
    job_id, _ = failed_job(db_url, model, n=1)
    with session_scope(db_url) as s:
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        later = claim(s, s.get_one(Model, model.id))
        jobs.close(s, later, JobState.FAILED, error="boom again")
    with session_scope(db_url) as s, pytest.raises(Conflict) as refused:
        jobs.retry(s, "default", job_id, actor="test")
    assert f"(now: 1 failed in job {later.id}); retry job {later.id} instead" in refused.value.detail


def test_retrying_a_job_again_is_a_conflict_naming_its_requests_states_and_writes_nothing(
    db_url: str, model: Model
) -> None:
    """A second retry found no failed request left on the job and answered it as if it had re-queued them;
    it says why there is nothing to do, whether the requests still wait or a later job finished them."""
    job_id, req_ids = failed_job(db_url, model)
    with session_scope(db_url) as s:
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        before = actions(s)
        with pytest.raises(Conflict, match=r"already retried .*\(now: 2 received\)"):
            jobs.retry(s, "default", job_id, actor="test")
        assert actions(s) == before
    with session_scope(db_url) as s:
        jobs.close(s, claim(s, s.get_one(Model, model.id)), JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s, pytest.raises(Conflict, match=r"its 2 request\(s\).*now: 2 completed"):
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        assert {s.get_one(DeletionRequest, i).state for i in req_ids} == {RequestState.COMPLETED}


def test_retry_of_another_tenants_job_is_not_found(db_url: str, model: Model) -> None:
    job_id, req_ids = failed_job(db_url, model)
    with session_scope(db_url) as s, pytest.raises(NotFound):
        jobs.retry(s, "intruder", job_id, actor="test")
    with session_scope(db_url) as s:
        assert {s.get_one(DeletionRequest, i).state for i in req_ids} == {RequestState.FAILED}


def test_a_retried_requests_new_webhook_has_its_full_delivery_budget(db_url: str, model: Model) -> None:
    job_id, [req_id] = failed_job(db_url, model, n=1, callback_url=HOOK)
    with session_scope(db_url) as s:  # what workers.webhooks.deliver leaves after giving up
        req = s.get_one(DeletionRequest, req_id)
        req.webhook_attempts, req.webhook_state = 8, WebhookState.FAILED
    with session_scope(db_url) as s:
        jobs.retry(s, "default", job_id, actor="test")
    with session_scope(db_url) as s:
        jobs.close(s, claim(s, s.get_one(Model, model.id)), JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s:
        req = s.get_one(DeletionRequest, req_id)
        assert (req.state, req.webhook_state) == (RequestState.COMPLETED, WebhookState.PENDING)
        assert req.webhook_attempts == 0


# -- close -------------------------------------------------------------------------------------------


def test_closing_a_job_completed_finishes_it(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        job.progress, job.phase = 0.9, JobPhase.PUBLISH
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s:
        job = s.get_one(Job, job.id)
        assert (job.state, job.progress, job.phase, job.result_version, job.error) == (
            JobState.COMPLETED,
            1.0,
            JobPhase.DONE,
            2,
            None,
        )
        assert job.finished_at is not None


def test_closing_a_job_completed_completes_its_requests_at_the_new_version(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        reqs = [submit_request(s, model, [f"toy-000{i}"]) for i in range(2)]
        job = claim(s, model)
        other = submit_request(s, model, ["toy-0009"])  # arrived after the claim: not this job's
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s:
        finished_at = s.get_one(Job, job.id).finished_at
        rows = [s.get_one(DeletionRequest, r.id) for r in reqs]
        assert [(r.state, r.model_version, r.completed_at, r.error) for r in rows] == [
            (RequestState.COMPLETED, 2, finished_at, None)
        ] * 2
        left = s.get_one(DeletionRequest, other.id)
        assert (left.state, left.model_version, left.completed_at) == (RequestState.RECEIVED, None, None)


def test_closing_a_job_sets_a_pending_webhook_only_where_there_is_a_callback(
    db_url: str, model: Model
) -> None:
    with session_scope(db_url) as s:
        hooked = submit_request(s, model, ["toy-0001"], callback_url=HOOK)
        silent = submit_request(s, model, ["toy-0002"])
        jobs.close(s, claim(s, model), JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, hooked.id).webhook_state == WebhookState.PENDING
        assert s.get_one(DeletionRequest, silent.id).webhook_state is None


def test_closing_a_job_writes_one_event_per_request_then_the_jobs(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        reqs = [submit_request(s, model, [f"toy-000{i}"]) for i in range(2)]
        job = claim(s, model)
        start = len(events(s))
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
        new = events(s)[start:]
        assert [(e.action, e.entity_id) for e in new] == [
            ("deletion_request.completed", reqs[0].id),
            ("deletion_request.completed", reqs[1].id),
            ("job.completed", job.id),
        ]
        assert new[0].data == {
            "job_id": job.id,
            "model_version": "v2",
            "error": None,
            # what a certificate's digests are checked against (proofs.verify_certificate_binding)
            "sample_ids_sha256": ids_digest(["toy-0000"]),
            "subject_ids_sha256": None,
        }
        assert new[-1].data == {"result_version": "v2", "error": None, "attempts": 1}
    with session_scope(db_url) as s:
        assert verified_log(s)["ok"]


def test_closing_a_job_failed_copies_the_error_to_its_requests(db_url: str, model: Model) -> None:
    with session_scope(db_url) as s:
        reqs = [submit_request(s, model, [f"toy-000{i}"], callback_url=HOOK) for i in range(2)]
        job = claim(s, model)
        job.progress = 0.4
        start = len(events(s))
        jobs.close(s, job, JobState.FAILED, error="every method failed its gates")
        assert [e.action for e in events(s)[start:]] == ["deletion_request.failed"] * 2 + ["job.failed"]
    with session_scope(db_url) as s:
        job = s.get_one(Job, job.id)
        assert (job.state, job.error, job.result_version, job.progress) == (
            JobState.FAILED,
            "every method failed its gates",
            None,
            0.4,
        )
        rows = [s.get_one(DeletionRequest, r.id) for r in reqs]
        assert [(r.state, r.error, r.model_version, r.completed_at, r.webhook_state) for r in rows] == [
            (RequestState.FAILED, "every method failed its gates", None, None, WebhookState.PENDING)
        ] * 2
        assert verified_log(s)["ok"]


def test_closing_a_job_cancelled_cancels_its_requests_and_announces_them_by_webhook(
    db_url: str, model: Model
) -> None:
    with session_scope(db_url) as s:
        req = submit_request(s, model, ["toy-0001"], callback_url=HOOK)
        silent = submit_request(s, model, ["toy-0002"])
        job = claim(s, model)
        jobs.close(s, job, JobState.CANCELLED)
        assert actions(s)[-3:] == ["deletion_request.cancelled"] * 2 + ["job.cancelled"]
    with session_scope(db_url) as s:
        req = s.get_one(DeletionRequest, req.id)
        assert (req.state, req.webhook_state, req.model_version) == (
            RequestState.CANCELLED,
            WebhookState.PENDING,
            None,
        )
        assert s.get_one(DeletionRequest, silent.id).webhook_state is None
        assert s.get_one(Job, job.id).state == JobState.CANCELLED
        assert claims.webhooks_of_job(s, job.id) == [req.id]  # what the worker sends after the job


# -- the API's state names are the domain's ------------------------------------------------------------


def test_the_api_request_states_are_exactly_the_domain_request_states() -> None:
    assert set(get_args(deletion_schema.RequestState)) == {s.value for s in states.RequestState}


def test_the_api_job_states_are_exactly_the_domain_job_states() -> None:
    assert set(get_args(jobs_schema.JobState)) == {s.value for s in states.JobState}


def test_every_terminal_job_state_is_also_a_request_state() -> None:
    # jobs.close gives a job's requests the job's own final state
    terminal = {s.value for s in states.JobState} - {states.JobState.RUNNING.value}
    assert terminal <= {s.value for s in states.RequestState}


def test_the_sample_id_digest_tells_one_id_holding_a_newline_from_two_ids() -> None:
    from service.core.events import ids_digest

    assert ids_digest(["a\nb"]) != ids_digest(["a", "b"])
    assert ids_digest(["b", "a"]) == ids_digest(["a", "b"])  # order does not matter


def test_only_a_running_jobs_heartbeat_has_an_age(db_url: str, model: Model) -> None:
    """A finished job's `heartbeat_age_s` grew for ever (633 s on a job done ten minutes before; a probe)."""
    from service.api.views import job_out
    from service.core.db.tables import utcnow

    with session_scope(db_url) as s:
        submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        job.heartbeat_at = utcnow()
        assert job_out(job, "toy", now=utcnow()).heartbeat_age_s is not None
        jobs.close(s, job, JobState.COMPLETED, result_version=1)
        finished = job_out(job, "toy", now=utcnow())
        assert finished.heartbeat_age_s is None and finished.heartbeat_at is not None


def test_a_model_with_the_longest_name_allowed_publishes_and_retires_versions(backend: Backend) -> None:
    """A version's events name it `<model name>/v<n>`: on PostgreSQL a 98-character model name failed every
    publish (the column held 100 characters), its requests failed for good, and showed them the SQL."""
    from service.core import events as audit_events
    from service.core.db.tables import ModelVersion
    from tests.factories import publish_version

    url = backend.settings().resolved_database_url
    with session_scope(url) as s:
        model = make_model(s, name="L" * 100, sample_id=lambda i: f"toy-{i:04d}")
        submit_request(s, model, ["toy-0001"])
        job = claim(s, model)
        number = publish_version(s, model, ["toy-0001"], job_id=job.id)
        version = s.scalars(select(ModelVersion).filter_by(model_id=model.id, number=number)).one()
        audit_events.version_published(s, model, version, method="ugradsl_plus", params={})
        first = s.scalars(select(ModelVersion).filter_by(model_id=model.id, number=1)).one()
        audit_events.checkpoint_retired(s, model, first, actor="test")
        jobs.close(s, job, JobState.COMPLETED, result_version=number)
    with session_scope(url) as s:
        named = s.scalars(select(AuditEvent.entity_id).where(AuditEvent.entity_id.like("%/v%"))).all()
        assert sorted(named) == ["L" * 100 + "/v1", "L" * 100 + "/v2"]
        assert verified_log(s)["ok"]
