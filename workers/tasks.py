"""Celery tasks. Arguments are ids; every task is idempotent (a duplicate delivery finds the lease taken
or nothing pending, and does nothing)."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select

from service.core import liveness, transparency
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent
from service.core.proofs import verify_head
from service.core.queue import (
    DELIVER_WEBHOOK,
    RECONCILE,
    RUN_MODEL,
    SIGN_HEADS,
    SWEEP_CHECKPOINTS,
    VALIDATE_MODEL,
    send_deliver_webhook,
    send_run_model,
    send_validate_model,
)
from service.core.settings import Settings, get_settings
from service.core.signing import load_key, public_key_b64
from workers import claims, courier, storage, validate
from workers.celery_app import app
from workers.orchestrate import process_model
from workers.shutdown import shutting_down

log = logging.getLogger(__name__)
DEAD_ROWS_KEPT_S = 3600.0  # a killed worker's heartbeat row stays an hour (or two lease terms) for readiness


@app.task(name=RUN_MODEL, acks_late=True, reject_on_worker_lost=True)
def run_model(model_id: str) -> str:
    outcome = process_model(
        get_settings(), model_id, on_job_done=send_webhooks, requeue=lambda m: send_run_model(app, m)
    )
    said = OUTCOMES.get(outcome, outcome)
    if outcome == "lost" and shutting_down():  # a planned stop's hand-over, not a takeover
        said = "this worker is stopping; its job is left to the next one"
    log.info("model %s: %s", model_id, said)
    return outcome


# What each of process_model's outcomes means, for the log: operators read "idle" after a job that
# completed, and "lost" for a planned stop's hand-over, as faults.
OUTCOMES = {
    "busy": "another worker holds its lease and will serve its requests",
    "idle": "no request left pending",
    "yielded": "one job done; the model goes to the back of the queue",
    "lost": "its lease was taken over by another worker; nothing published here",
}


@app.task(name=DELIVER_WEBHOOK, acks_late=True)
def deliver_webhook(request_id: str, tries: int = 0) -> None:
    """Hand the delivery to this process's couriers and return: a job waits for no receiver
    (``workers.courier``)."""
    courier.dispatch(request_id, tries)


def send_webhooks(request_ids: list[str], broker: Celery = app, settings: Settings | None = None) -> None:
    """Queue each finished request's webhook; where the broker does not take it, this worker's couriers
    deliver it themselves. Left to the reconciler, a 20 s broker outage at a job's end delayed its
    webhook ten minutes (a probe); a courier attempt that fails still goes back to the broker or, failing
    that, to the reconciler."""
    for rid in request_ids:
        if not send_deliver_webhook(broker, rid):
            log.warning("could not enqueue the webhook for %s; this worker delivers it", rid)
            courier.dispatch(rid, settings=settings, broker=broker)


@app.task(name=VALIDATE_MODEL, acks_late=True)
def validate_model_task(model_id: str) -> str:
    return validate.validate_model(get_settings(), model_id)


@app.task(name=RECONCILE)
def reconcile() -> int:
    """Enqueue every model that has pending requests (or a dead worker's job) and no live lease: the
    safety net behind "a down broker never loses an accepted request"."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as s:
        model_ids = claims.models_needing_work(s, liveness.takeover_seconds(settings.heartbeat_seconds))
        stale_webhooks = claims.stale_webhooks(s)
        unvalidated = claims.models_validating(s)
        liveness.prune(s, max(2 * settings.lease_seconds, DEAD_ROWS_KEPT_S))  # killed workers' heartbeats
    for m in unvalidated:
        send_validate_model(app, m)
    sent = sum(send_run_model(app, m) for m in model_ids)
    send_webhooks(stale_webhooks)
    if sent:
        log.info("reconciler enqueued %d model(s)", sent)
    return sent


@app.task(name=SIGN_HEADS)
def sign_audit_heads() -> int:
    """Sequence each tenant's new audit events and sign a tree head over them, so a head a client fetches
    is never far behind the log. Returns how many heads were signed. A shutdown stops it between batches
    of events (`transparency.sequence_and_sign`)."""
    return sign_heads(get_settings())


def sign_heads(settings: Settings) -> int:
    """``sign_audit_heads`` on ``settings``: with the key the API created, never one of the worker's own, and
    only for a tenant whose latest head that key signed."""
    url = settings.resolved_database_url
    try:
        key = load_key(settings.signing_key_path)
    except (OSError, ValueError) as exc:  # the API creates it; a worker never makes one of its own
        log.error(
            "no audit heads signed: cannot read the signing key %s (%s)", settings.signing_key_path, exc
        )
        return 0
    with session_scope(url) as s:
        tenants = list(s.scalars(select(AuditEvent.tenant).where(AuditEvent.seq.is_(None)).distinct()))
    signed = 0
    for tenant in tenants:  # one tenant's failure is logged and the others go on
        try:
            with session_scope(url) as s:
                earlier = transparency.latest_head(s, tenant)
            verified, why = (True, "") if earlier is None else verify_head(earlier, public_key_b64(key))
            if not verified:  # another key's (the file replaced), or a head nobody signed
                log.error(
                    "tenant %s: no head signed: its latest head does not verify with the key at %s (%s); "
                    "restore the key its heads were signed with, and run GET /v1/audit/verify",
                    tenant,
                    settings.signing_key_path,
                    why,
                )
                continue
            if transparency.sequence_and_sign(url, key, tenant, shutting_down):
                signed += 1
        except Exception:
            log.exception("tenant %s: its audit events could not be sequenced and signed", tenant)
    return signed


@app.task(name=SWEEP_CHECKPOINTS)
def sweep_checkpoints() -> int:
    """Delete orphan checkpoint files (`storage.sweep_orphans`); returns how many went."""
    return len(storage.sweep_orphans(get_settings()))
