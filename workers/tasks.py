"""Celery tasks. Arguments are ids; every task is idempotent (a duplicate delivery finds the lease taken
or nothing pending, and does nothing)."""

from __future__ import annotations

import logging

from service.db.engine import session_scope
from service.queue import RECONCILE, RUN_MODEL, send_run_model
from service.settings import get_settings
from workers import claims
from workers.celery_app import app
from workers.orchestrate import process_model

log = logging.getLogger(__name__)


@app.task(name=RUN_MODEL, acks_late=True, reject_on_worker_lost=True)
def run_model(model_id: str) -> str:
    outcome = process_model(get_settings(), model_id)
    log.info("model %s: %s", model_id, outcome)
    return outcome


@app.task(name=RECONCILE)
def reconcile() -> int:
    """Enqueue every model that has pending requests (or a dead worker's job) and no live lease: the
    safety net behind "a down broker never loses an accepted request"."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as s:
        model_ids = claims.models_needing_work(s)
    sent = sum(send_run_model(app, m) for m in model_ids)
    if sent:
        log.info("reconciler enqueued %d model(s)", sent)
    return sent
