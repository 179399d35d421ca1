"""The Celery client configuration shared by the API (which only sends tasks, by name) and the workers."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.core import fs_broker
from service.core.db.tables import Model, utcnow
from service.core.settings import Settings

RUN_MODEL = "workers.process_model"
RECONCILE = "workers.reconcile"
DELIVER_WEBHOOK = "workers.deliver_webhook"
VALIDATE_MODEL = "workers.validate_model"
SIGN_HEADS = "workers.sign_audit_heads"
SWEEP_CHECKPOINTS = "workers.sweep_checkpoints"
BROKER_SOCKET_TIMEOUT_S = 2.0  # the API's longest wait on one broker read or write
SWEEP_SECONDS = 3600.0  # orphan checkpoints are rare (a kill between write and commit): hourly is plenty


def make_celery(settings: Settings, *, fail_fast: bool = False) -> Celery:
    """The Celery app. `fail_fast` (the API): give up on an unreachable broker within a second instead of
    retrying for seconds per request; the request is already committed and the reconciler enqueues it."""
    app = Celery("unlearn", broker=settings.resolved_broker_url)
    conf: dict[str, object] = {
        "task_default_queue": settings.queue_name,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "beat_schedule": {
            # Expires: ticks that wait behind a long job are dropped, not piled up.
            "reconcile": {
                "task": RECONCILE,
                "schedule": settings.reconcile_seconds,
                "options": {"expires": settings.reconcile_seconds},
            },
            "audit-heads": {
                "task": SIGN_HEADS,
                "schedule": settings.audit_head_seconds,
                "options": {"expires": settings.audit_head_seconds},
            },
            "sweep-checkpoints": {
                "task": SWEEP_CHECKPOINTS,
                "schedule": SWEEP_SECONDS,
                "options": {"expires": SWEEP_SECONDS},
            },
        },
    }
    if settings.broker_url is None:
        # Embedded default: a broker that needs no server, messages as files under the state directory.
        folder = settings.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport"] = fs_broker.TRANSPORT  # messages appear whole (see there)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        # Longer than any job, so a running job is never redelivered while its worker is alive.
        options: dict[str, float] = {"visibility_timeout": 6 * 3600}
        if fail_fast:
            options |= {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
            # A broker that takes the connection and never answers (frozen, partitioned, overloaded) held
            # every send, and /readyz, on a read without end: a probe's requests were committed minutes
            # after their clients had given up. The API only sends, so no blocking read is cut short.
            options |= {"socket_timeout": BROKER_SOCKET_TIMEOUT_S, "socket_connect_timeout": 2}
            conf["broker_connection_timeout"] = 2
        conf["broker_transport_options"] = options
    app.conf.update(conf)
    return app


def wake_due(session: Session, model: Model, interval: float) -> float | None:
    """Decide, in the request's transaction, whether a worker must be woken for `model`: None (a wake is
    already on its way), 0 (send now) or a countdown in seconds (send one trailing wake at the end of
    the current window). So a model gets at most about one message per `interval` however many requests
    arrive, and a request that lands just after a wake still gets one. Each decision is a compare-and-set
    on `models.woken_at`: concurrent requests that read the same value cannot both win."""
    now, last = utcnow(), model.woken_at
    if last is not None and last > now:
        return None  # a trailing wake is already scheduled for `last`
    due = (
        now
        if last is None or last <= now - timedelta(seconds=interval)
        else last + timedelta(seconds=interval)
    )
    won = session.execute(
        update(Model)
        .where(Model.id == model.id, Model.woken_at.is_(None) if last is None else Model.woken_at == last)
        .values(woken_at=due)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return max((due - now).total_seconds(), 0.0)


def send_run_model(app: Celery, model_id: str, countdown: float = 0.0) -> bool:
    """Ask a worker to process a model's pending requests. False if the broker is unreachable: the
    request is already committed, and the reconciler will enqueue it later."""
    try:
        app.send_task(RUN_MODEL, args=[model_id], retry=False, countdown=countdown or None)
        return True
    except Exception:  # noqa: BLE001 - any broker failure means "try later", never a lost request
        return False


def send_deliver_webhook(app: Celery, request_id: str, countdown: float = 0.0, tries: int = 0) -> bool:
    """Ask a worker to deliver a request's pending webhook (after ``countdown`` seconds; ``tries``: the
    attempts before this one, for its backoff). False if the broker is unreachable: the pending webhook is
    committed, and the reconciler sends it later (`claims.stale_webhooks`)."""
    try:
        kwargs = {"tries": tries} if tries else {}
        app.send_task(
            DELIVER_WEBHOOK, args=[request_id], kwargs=kwargs, countdown=countdown or None, retry=False
        )
        return True
    except Exception:  # noqa: BLE001
        return False


def send_validate_model(app: Celery, model_id: str) -> bool:
    """Ask a worker to load a newly registered checkpoint and measure v1 (the reconciler retries)."""
    try:
        app.send_task(VALIDATE_MODEL, args=[model_id], retry=False)
        return True
    except Exception:  # noqa: BLE001
        return False
