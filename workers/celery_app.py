"""The worker's Celery app: the shared client configuration plus this package's tasks.

Start a worker with `celery -A workers.celery_app worker --pool=solo` (one job at a time per process:
a GPU worker should never run two unlearning jobs at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from celery.signals import beat_embedded_init, beat_init, worker_init, worker_ready, worker_shutdown

from service.core import liveness
from service.core.db.engine import session_scope
from service.core.errors import one_line
from service.core.lifetimes import die_with_parent
from service.core.queue import make_celery
from service.core.settings import get_settings

log = logging.getLogger(__name__)
_stopping = threading.Event()
_names: list[str] = []
_worker_pid: int | None = None  # set in the worker's main process; a forked beat inherits it

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]


@worker_init.connect
def _note_worker_pid(**_: object) -> None:
    """Runs in the worker's main process, before it forks its embedded beat (which inherits this)."""
    global _worker_pid
    _worker_pid = os.getpid()


@beat_embedded_init.connect
def _beat_dies_with_its_worker(**_: object) -> None:
    """The beat `worker -B` forks must not outlive the worker: a SIGKILLed worker (or a SIGKILLed
    `unlearn run`, whose worker the kernel then kills) would leave it scheduling beside the next one's.
    The worker may die between the fork and this call, so the beat also checks that its parent is still
    the worker. (Celery forks it with billiard, so multiprocessing.parent_process() knows nothing of it.)"""
    die_with_parent(_worker_pid)


@worker_ready.connect
def _start_heartbeat(**_: object) -> None:
    """From the moment the worker takes tasks, a thread of its own records that it is alive (every
    heartbeat interval, whatever the task at hand is doing)."""
    _names.append(_heartbeat(f"{socket.gethostname()}:{os.getpid()}", "worker"))


@beat_init.connect  # standalone (`unlearn beat`) and embedded (`worker -B`) alike
def _start_beat_heartbeat(**_: object) -> None:
    """The beat's scheduler says it is alive too: it is the reconciler's clock, the safety net for requests
    accepted while the broker was down, and nothing showed that it had stopped (a probe killed it and
    /readyz stayed as it was). It beats until the process ends; a killed one's row is pruned."""
    _heartbeat(f"{liveness.BEAT_PREFIX}{socket.gethostname()}:{os.getpid()}", "beat")


def _heartbeat(name: str, what: str) -> str:
    settings = get_settings()

    def loop() -> None:
        while True:
            try:
                with session_scope(settings.resolved_database_url) as s:
                    liveness.beat(s, name)
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the thread; beat again later
                log.warning("%s heartbeat failed; retrying: %s", what, one_line(exc))
            if _stopping.wait(settings.heartbeat_seconds):
                return

    threading.Thread(target=loop, name=f"{what}-heartbeat", daemon=True).start()
    return name


@worker_ready.connect
def _warm_torch(**_: object) -> None:
    """Make the process fast for deletions once, as it starts taking tasks (``models.process.warm_up``:
    torch's ~1 s of one-time imports in the background, and glibc kept from mapping fresh pages for every
    tensor), so its first deletion does not pay them; a task that comes sooner waits on the import."""
    from models.process import warm_up

    threading.Thread(target=warm_up, name="torch-warm-up", daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    _stopping.set()
    settings = get_settings()
    for name in _names:
        with contextlib.suppress(Exception), session_scope(settings.resolved_database_url) as s:
            liveness.gone(s, name)
