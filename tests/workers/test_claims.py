"""Claiming work (`workers.claims`): a job coalesces every pending request of its model, a job whose worker
died is resumed a bounded number of times, and the reconciler's queries find the right models, webhooks
and validations. Every transition leaves its audit events and an intact chain."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core import deletions, jobs
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, DeletionRequest, Job, Model, utcnow
from service.core.states import JobPhase, JobState, ModelStatus, RequestState, WebhookState
from tests.factories import make_model, submit_request, verified_log
from workers import claims

HOOKS = "hooks.example"


def actions(s: Session, tenant: str = "default") -> list[str]:
    return list(
        s.scalars(select(AuditEvent.action).where(AuditEvent.tenant == tenant).order_by(AuditEvent.seq))
    )


def events_of(s: Session, entity_id: str) -> list[AuditEvent]:
    return list(
        s.scalars(select(AuditEvent).where(AuditEvent.entity_id == entity_id).order_by(AuditEvent.seq))
    )


def claimed_job(s: Session, model: Model) -> Job:
    job = claims.claim_pending(s, model)
    assert job is not None
    return job


# -- claim_pending -------------------------------------------------------------------------------------


def test_a_job_claims_every_pending_request_of_its_model_oldest_first(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        a, b, c = (submit_request(s, model, [f"toy-000{i}"]) for i in range(3))
        b.state = RequestState.QUEUED  # received and queued (rows from earlier releases) are both pending
        now = utcnow()
        c.created_at, a.created_at, b.created_at = (
            now - timedelta(seconds=3),
            now - timedelta(seconds=2),
            now - timedelta(seconds=1),
        )
        job = claimed_job(s, model)
        assert job.request_ids == [c.id, a.id, b.id]
        job_id = job.id
    with session_scope(db_url) as s:
        rows = s.scalars(select(DeletionRequest)).all()
        assert [(r.state, r.job_id) for r in rows] == [(RequestState.PROCESSING, job_id)] * 3
        assert s.scalars(select(Job.id)).all() == [job_id]


def test_a_job_starts_running_from_the_models_latest_version_with_its_defaults(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        model.latest_version, model.default_method, model.default_params = 4, "retrain", {"epochs": 2}
        submit_request(s, model, ["toy-0001"])
        job = claimed_job(s, model)
        job_id = job.id
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert (job.tenant, job.model_id, job.state, job.phase) == (
            "default",
            model.id,
            JobState.RUNNING,
            JobPhase.QUEUED,
        )
        assert (job.base_version, job.method, job.params) == (4, "retrain", {"epochs": 2})
        assert (job.attempts, job.progress, job.cancel_requested, job.result_version) == (1, 0.0, False, None)


def test_a_claim_leaves_other_models_requests_pending(db_url: str) -> None:
    with session_scope(db_url) as s:
        toy, other = make_model(s, name="toy"), make_model(s, name="other")
        mine = submit_request(s, toy, ["toy-0001"])
        theirs = submit_request(s, other, ["other-0001"])
        assert claimed_job(s, toy).request_ids == [mine.id]
    with session_scope(db_url) as s:
        left = s.get_one(DeletionRequest, theirs.id)
        assert (left.state, left.job_id) == (RequestState.RECEIVED, None)
        assert claims.has_pending(s, other.id)


def test_cancelled_requests_are_not_claimed(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        kept = submit_request(s, model, ["toy-0001"])
        gone = submit_request(s, model, ["toy-0002"])
        deletions.cancel(s, "default", gone.id, actor="test")
        assert claimed_job(s, model).request_ids == [kept.id]
    with session_scope(db_url) as s:
        req = s.get_one(DeletionRequest, gone.id)
        assert (req.state, req.job_id) == (RequestState.CANCELLED, None)


def test_with_no_pending_request_no_job_is_created(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        before = actions(s)
        assert claims.claim_pending(s, model) is None
        assert s.scalars(select(Job)).all() == []
        assert actions(s) == before


def test_requests_already_claimed_are_not_claimed_again(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        claimed_job(s, model)
    with session_scope(db_url) as s:
        assert claims.claim_pending(s, s.get_one(Model, model.id)) is None


def test_a_claim_writes_one_processing_event_per_request_then_job_created(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        reqs = [submit_request(s, model, [f"toy-000{i}"]) for i in range(2)]
        start = len(actions(s))
        job = claimed_job(s, model)
        assert actions(s)[start:] == ["deletion_request.processing"] * 2 + ["job.created"]
        for r in reqs:
            processing = events_of(s, r.id)[-1]
            assert (processing.actor, processing.data) == ("worker", {"job_id": job.id})
        created = events_of(s, job.id)[-1]
        assert created.data == {"requests": 2, "base_version": "v1", "method": "ugradsl_plus", "params": {}}
    with session_scope(db_url) as s:
        assert verified_log(s)["ok"]


def test_a_job_claims_at_most_max_requests_per_job_and_leaves_the_newest(db_url: str) -> None:
    n = claims.MAX_REQUESTS_PER_JOB + 1
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        start = utcnow() - timedelta(hours=1)
        rows = [
            DeletionRequest(
                tenant="default",
                model_id=model.id,
                sample_ids=["toy-0001"],
                sample_count=1,
                body_sha256="0" * 64,
                created_at=start + timedelta(milliseconds=i),
            )
            for i in range(n)
        ]
        s.add_all(rows)
        s.flush()
        job = claimed_job(s, model)
        assert job.request_ids == [r.id for r in rows[:-1]]
    with session_scope(db_url) as s:
        assert s.get_one(DeletionRequest, rows[-1].id).state == RequestState.RECEIVED
        assert claims.has_pending(s, model.id)


# -- has_pending ---------------------------------------------------------------------------------------


def test_a_model_without_requests_has_nothing_pending(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert not claims.has_pending(s, make_model(s, name="toy").id)


@pytest.mark.parametrize("queued", [False, True])
def test_a_received_or_queued_request_is_pending(db_url: str, queued: bool) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        req = submit_request(s, model, ["toy-0001"])
        if queued:
            req.state = RequestState.QUEUED
        assert claims.has_pending(s, model.id)


def test_claimed_and_cancelled_requests_are_not_pending(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        claimed_job(s, model)
        cancelled = submit_request(s, model, ["toy-0002"])
        deletions.cancel(s, "default", cancelled.id, actor="test")
        assert not claims.has_pending(s, model.id)


# -- resume_unfinished and next_job --------------------------------------------------------------------


def test_there_is_nothing_to_resume_without_a_running_job(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        job = claimed_job(s, model)
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
        assert claims.resume_unfinished(s, model.id) is None


def test_a_resumed_job_counts_the_attempt_and_restarts_from_the_beginning(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        req = submit_request(s, model, ["toy-0001"])
        job = claimed_job(s, model)
        job.progress, job.phase = 0.6, "unlearn:ugradsl_plus"  # where the dead worker got to
        job_id = job.id
    with session_scope(db_url) as s:
        resumed = claims.resume_unfinished(s, model.id)
        assert resumed is not None and resumed.id == job_id
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.attempts, job.progress, job.phase) == (
            JobState.RUNNING,
            2,
            0.0,
            JobPhase.QUEUED,
        )
        # ... and the record keeps where the lost attempt had got to
        [lost] = job.metrics["interrupted"]
        assert (lost["attempt"], lost["phase"], lost["progress"]) == (1, "unlearn:ugradsl_plus", 0.6)
        assert lost["cause"] == "worker died"
        assert s.get_one(DeletionRequest, req.id).state == RequestState.PROCESSING
        last = events_of(s, job_id)[-1]
        assert (last.action, last.actor, last.data) == ("job.resumed", "worker", {"attempt": 2})
        assert verified_log(s)["ok"]


def test_a_job_is_resumed_until_it_has_had_max_attempts_then_failed(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        job_id = claimed_job(s, model).id
    resumes = 0
    while True:
        with session_scope(db_url) as s:
            if claims.resume_unfinished(s, model.id) is None:
                break
        resumes += 1
        assert resumes < 10, "resumed forever"
    assert resumes == claims.MAX_ATTEMPTS - 1  # the first attempt plus the resumes
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.attempts) == (JobState.FAILED, claims.MAX_ATTEMPTS)
        # every attempt's death is on the record, the one that exhausted the budget too
        assert [a["attempt"] for a in job.metrics["interrupted"]] == list(range(1, claims.MAX_ATTEMPTS + 1))
        assert {a["cause"] for a in job.metrics["interrupted"]} == {"worker died"}


def test_a_hand_back_the_database_cannot_take_is_tried_until_its_deadline_then_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deploy's stop during a database failover: the stopping worker tries again, and past its deadline
    leaves the job to be resumed as a death instead of failing its task with the database's error."""
    from workers.jobstore import JobStore
    from workers.runner import hand_back

    unreachable = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/none", "job", "owner")
    hand_back(unreachable, within_s=0.6)  # returns: no OperationalError out of the shutdown
    assert "the hand-back could not be recorded" in caplog.text


@pytest.mark.timeout(60)
def test_an_outage_wait_gives_up_at_the_stop_deadline_once_the_worker_is_told_to_stop(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job an outage stopped waits up to a minute for the database; a deploy's stop during that wait
    had the worker killed at the end of its grace. Told to stop, it leaves at the stop's deadline (the
    timeout fails the test if it waits out the outage's)."""
    from celery.worker import state as worker_state

    from workers import runner
    from workers.jobstore import JobStore

    monkeypatch.setattr(runner, "HAND_BACK_S", 0.5)
    monkeypatch.setattr(worker_state, "should_stop", 0)  # EX_OK: a warm shutdown was asked for
    unreachable = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/none", "job", "owner")
    assert runner.hand_back(unreachable, within_s=10_000, cause=claims.DATABASE_GONE) is None
    assert "the hand-back could not be recorded" in caplog.text


def test_a_job_handed_back_at_a_planned_stop_records_the_stop_not_a_death(db_url: str) -> None:
    from workers import leases
    from workers.jobstore import JobStore
    from workers.runner import hand_back

    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        assert leases.acquire(s, model.id, "owner", 60)
        job = claimed_job(s, model)
        job.progress, job.phase = 0.4, "unlearn:ugradsl_plus"  # where the stopped worker got to
        job_id = job.id
    hand_back(JobStore(db_url, job_id, "owner"))
    with session_scope(db_url) as s:
        assert claims.resume_unfinished(s, model.id) is not None
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert job.attempts == 1  # the stop cost no attempt
        [stopped] = job.metrics["interrupted"]  # and added no death beside its own entry
        assert (stopped["cause"], stopped["phase"], stopped["progress"]) == (
            "stopped",
            "unlearn:ugradsl_plus",
            0.4,
        )
        # a death of the resumed attempt is recorded as one, beside the stop
        job.phase = "unlearn:ugradsl_plus"
    with session_scope(db_url) as s:
        assert claims.resume_unfinished(s, model.id) is not None
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert [(a["attempt"], a["cause"]) for a in job.metrics["interrupted"]] == [
            (1, "stopped"),
            (1, "worker died"),
        ]
        assert job.attempts == 2


def test_outages_in_a_row_fail_the_job_once_and_the_last_attempt_counts(db_url: str, tmp_path: Path) -> None:
    """Each attempt a lost connection ends is handed back at no cost, as where the job was starting (a
    review: one lost as the job loaded failed it for good); the third in a row fails the job, and that
    attempt stays counted (a job failed so had shown 0 attempts)."""
    from sqlalchemy.exc import OperationalError

    from service.core.settings import Settings
    from workers import leases
    from workers.jobstore import JobStore
    from workers.runner import OUTAGES_IN_A_ROW, lost_database

    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_DATABASE_URL=db_url)  # type: ignore[call-arg]
    gone = OperationalError(
        "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
    )
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        assert leases.acquire(s, model.id, "owner", 60)
        job_id = claimed_job(s, model).id
    for outage in range(1, OUTAGES_IN_A_ROW + 1):
        lost_database(settings, JobStore(db_url, job_id, "owner"), None, gone)
        with session_scope(db_url) as s:
            job = s.get_one(Job, job_id)
            if outage < OUTAGES_IN_A_ROW:
                assert (job.state, job.attempts, job.phase) == (JobState.RUNNING, 0, JobPhase.QUEUED)
                assert claims.resume_unfinished(s, model.id) is not None  # at no attempt's cost
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.attempts) == (JobState.FAILED, 1), job.error
        assert f"lost in {OUTAGES_IN_A_ROW} attempts in a row" in (job.error or "")
        assert [a["cause"] for a in job.metrics["interrupted"]] == ["database unavailable"] * OUTAGES_IN_A_ROW
        [request] = s.scalars(select(DeletionRequest)).all()
        assert request.state == RequestState.FAILED


def test_a_job_that_reached_max_attempts_fails_with_its_requests(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        reqs = [submit_request(s, model, [f"toy-000{i}"]) for i in range(2)]
        job = claimed_job(s, model)
        job.attempts = claims.MAX_ATTEMPTS
        job_id = job.id
    with session_scope(db_url) as s:
        start = len(actions(s))
        assert claims.resume_unfinished(s, model.id) is None
        assert actions(s)[start:] == ["deletion_request.failed"] * 2 + ["job.failed"]
    with session_scope(db_url) as s:
        job = s.get_one(Job, job_id)
        error = f"gave up after {claims.MAX_ATTEMPTS} attempts: the worker died each time"
        assert (job.state, job.error, job.attempts) == (JobState.FAILED, error, claims.MAX_ATTEMPTS)
        assert job.finished_at is not None
        assert [(r.state, r.error) for r in s.scalars(select(DeletionRequest))] == [
            (RequestState.FAILED, error)
        ] * len(reqs)
        assert verified_log(s)["ok"]


def test_next_job_is_none_when_there_is_no_work(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert claims.next_job(s, make_model(s, name="toy").id) is None


def test_next_job_claims_pending_requests_when_no_job_is_unfinished(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        req = submit_request(s, model, ["toy-0001"])
        job_id = claims.next_job(s, model.id)
        assert job_id is not None
        assert s.get_one(Job, job_id).request_ids == [req.id]


def test_next_job_resumes_an_unfinished_job_before_claiming_new_requests(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        job_id = claimed_job(s, model).id
        waiting = submit_request(s, model, ["toy-0002"])
    with session_scope(db_url) as s:
        assert claims.next_job(s, model.id) == job_id
        assert s.get_one(DeletionRequest, waiting.id).state == RequestState.RECEIVED
        assert s.scalar(select(Job.attempts).where(Job.id == job_id)) == 2


def test_next_job_gives_up_on_a_job_past_its_attempts_and_claims_the_waiting_requests(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        dead = claimed_job(s, model)
        dead.attempts = claims.MAX_ATTEMPTS
        waiting = submit_request(s, model, ["toy-0002"])
    with session_scope(db_url) as s:
        job_id = claims.next_job(s, model.id)
        assert job_id is not None and job_id != dead.id
        assert s.get_one(Job, dead.id).state == JobState.FAILED
        assert s.get_one(Job, job_id).request_ids == [waiting.id]


# -- models_needing_work -------------------------------------------------------------------------------


def model_with_pending_request(s: Session, name: str) -> Model:
    model = make_model(s, name=name)
    submit_request(s, model, [f"{name}-0001"])
    return model


def test_a_model_with_pending_requests_and_a_free_lease_needs_work(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = model_with_pending_request(s, "toy")
        make_model(s, name="idle")
        assert claims.models_needing_work(s) == [model.id]


def test_a_model_whose_lease_is_live_is_not_offered(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = model_with_pending_request(s, "toy")
        model.lease_owner, model.lease_expires_at = "A", utcnow() + timedelta(seconds=60)
        assert claims.models_needing_work(s) == []


def test_a_model_whose_lease_lapsed_is_offered_again(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = model_with_pending_request(s, "toy")
        model.lease_owner, model.lease_expires_at = "A", utcnow() - timedelta(seconds=1)
        assert claims.models_needing_work(s) == [model.id]


def test_a_model_with_an_unfinished_job_needs_work_without_pending_requests(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = model_with_pending_request(s, "toy")
        claimed_job(s, model)
        assert not claims.has_pending(s, model.id)
        assert claims.models_needing_work(s) == [model.id]


def test_a_model_whose_requests_are_all_finished_needs_no_work(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = model_with_pending_request(s, "toy")
        jobs.close(s, claimed_job(s, model), JobState.COMPLETED, result_version=2)
        cancelled = submit_request(s, model, ["toy-0002"])
        deletions.cancel(s, "default", cancelled.id, actor="test")
        assert claims.models_needing_work(s) == []


# -- webhooks and validations --------------------------------------------------------------------------


def test_webhooks_of_a_job_are_its_requests_with_a_pending_webhook(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        hooked = submit_request(s, model, ["toy-0001"], callback_url=f"https://{HOOKS}/done")
        submit_request(s, model, ["toy-0002"])
        job = claimed_job(s, model)
        assert claims.webhooks_of_job(s, job.id) == []  # nothing to announce while it runs
        jobs.close(s, job, JobState.COMPLETED, result_version=2)
        other = submit_request(s, model, ["toy-0003"], callback_url=f"https://{HOOKS}/done")
        second = claimed_job(s, model)
        jobs.close(s, second, JobState.FAILED, error="boom")
        assert claims.webhooks_of_job(s, job.id) == [hooked.id]
        assert claims.webhooks_of_job(s, second.id) == [other.id]


def test_stale_webhooks_are_pending_ones_not_touched_for_longer_than_the_cutoff(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        url = f"https://{HOOKS}/done"
        old, recent, delivered = (
            submit_request(s, model, [f"toy-000{i}"], callback_url=url) for i in range(3)
        )
        jobs.close(s, claimed_job(s, model), JobState.COMPLETED, result_version=2)
    with session_scope(db_url) as s:
        ago = utcnow() - timedelta(seconds=700)
        s.execute(update(DeletionRequest).where(DeletionRequest.id == old.id).values(updated_at=ago))
        s.execute(
            update(DeletionRequest)
            .where(DeletionRequest.id == delivered.id)
            .values(updated_at=ago, webhook_state=WebhookState.DELIVERED)
        )
    with session_scope(db_url) as s:
        assert claims.stale_webhooks(s, older_than_s=600) == [old.id]
        assert sorted(claims.stale_webhooks(s, older_than_s=0)) == sorted([old.id, recent.id])


def test_models_validating_lists_only_models_still_being_checked(db_url: str) -> None:
    with session_scope(db_url) as s:
        checking = make_model(s, name="toy")
        checking.status = ModelStatus.VALIDATING
        make_model(s, name="ready")
        make_model(s, name="broken").status = ModelStatus.INVALID
        assert claims.models_validating(s) == [checking.id]


# -- the audit chain across a job's life ---------------------------------------------------------------


def test_the_audit_chain_stays_intact_through_claim_resume_and_failure(db_url: str) -> None:
    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0001"])
        job_id = claimed_job(s, model).id
    for _ in range(claims.MAX_ATTEMPTS):
        with session_scope(db_url) as s:
            claims.resume_unfinished(s, model.id)
    with session_scope(db_url) as s:
        job_actions = [e.action for e in events_of(s, job_id)]
        assert job_actions == ["job.created"] + ["job.resumed"] * (claims.MAX_ATTEMPTS - 1) + ["job.failed"]
        report = verified_log(s)
        assert report["ok"] and report["events"] == len(actions(s))


def test_requests_that_together_would_forget_every_sample_are_not_coalesced(db_url: str) -> None:
    """Each leaves samples (intake refuses one that leaves none), together they leave none: the job takes
    the first; the second waits for a job of its own, where it fails alone, saying why."""
    with session_scope(db_url) as s:
        model = make_model(s, name="toy", n_train=50)
        ids = [f"toy-{i:04d}" for i in range(50)]
        first = submit_request(s, model, ids[:30])
        second = submit_request(s, model, ids[25:])  # 5 named by both: 20 new
        assert claimed_job(s, model).request_ids == [first.id]
        s.flush()
        assert claimed_job(s, model).request_ids == [second.id]  # alone: nothing else rides on it
        third = submit_request(s, model, ids[:10])  # well short of emptying: coalesced as ever
        fourth = submit_request(s, model, ids[10:20])
        assert claimed_job(s, model).request_ids == [third.id, fourth.id]


def test_a_job_is_judged_against_the_newest_exact_version_v1_or_a_retrains(db_url: str) -> None:
    """The test-accuracy gate's reference (workers.gates.check): v1's scores until a retrain publishes,
    then that retrain's; versions an unlearning method published are not references."""
    from service.core.db.tables import ModelVersion
    from workers import leases
    from workers.jobstore import JobStore

    def version(s: Session, model: Model, number: int, method: str, accuracy: float) -> None:
        done = Job(
            tenant=model.tenant,
            model_id=model.id,
            state=JobState.COMPLETED,
            method=method,
            request_ids=[],
            params={},
            base_version=number - 1,
        )
        s.add(done)
        s.flush()
        s.add(ModelVersion(model_id=model.id, number=number, parent_number=number - 1, checkpoint_uri="x",
                           sha256="0" * 64, metrics={"test_accuracy": accuracy}, job_id=done.id))  # fmt: skip
        model.latest_version = number

    def reference() -> dict | None:
        with session_scope(db_url) as s:
            model = s.scalars(select(Model)).one()
            submit_request(s, model, ["toy-0001"])
            assert leases.acquire(s, model.id, "owner", 60)
            job_id = claimed_job(s, model).id
        ctx = JobStore(db_url, job_id, "owner").load_context()
        with session_scope(db_url) as s:
            s.get_one(Job, job_id).state = JobState.COMPLETED
            leases.release(s, ctx.model_id, "owner")
        return ctx.reference_test

    with session_scope(db_url) as s:
        model = make_model(s, name="toy")
        s.get_one(ModelVersion, s.scalars(select(ModelVersion.id)).one()).metrics = {"test_accuracy": 0.9}
        version(s, model, 2, "ugradsl_plus", 0.85)
    assert reference() == {"test_accuracy": 0.9}  # v1
    with session_scope(db_url) as s:
        model = s.scalars(select(Model)).one()
        version(s, model, 3, "retrain", 0.8)
        version(s, model, 4, "ugradsl_plus", 0.78)
    assert reference() == {"test_accuracy": 0.8}  # the retrain's
