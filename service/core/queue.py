"""The Celery client configuration shared by the API (which only sends tasks, by name) and the workers."""

from __future__ import annotations

from celery import Celery

from service.core.settings import Settings

RUN_MODEL = "workers.process_model"
RECONCILE = "workers.reconcile"
DELIVER_WEBHOOK = "workers.deliver_webhook"
VALIDATE_MODEL = "workers.validate_model"


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
        },
    }
    if settings.broker_url is None:
        # Embedded default: a broker that needs no server, messages as files under the state directory.
        folder = settings.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
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
            conf["broker_connection_timeout"] = 2
        conf["broker_transport_options"] = options
    app.conf.update(conf)
    return app


def send_run_model(app: Celery, model_id: str) -> bool:
    """Ask a worker to process a model's pending requests. False if the broker is unreachable: the
    request is already committed, and the reconciler will enqueue it later."""
    try:
        app.send_task(RUN_MODEL, args=[model_id], retry=False)
        return True
    except Exception:  # noqa: BLE001 - any broker failure means "try later", never a lost request
        return False


def send_validate_model(app: Celery, model_id: str) -> bool:
    """Ask a worker to load a newly registered checkpoint and measure v1 (the reconciler retries)."""
    try:
        app.send_task(VALIDATE_MODEL, args=[model_id], retry=False)
        return True
    except Exception:  # noqa: BLE001
        return False
