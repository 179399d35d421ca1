"""Whether the worker process was asked to stop (Celery's warm or cold shutdown).

Long work checks it at its safe points and ends there: a planned stop (a deploy, Ctrl-C) then neither
waits out the whole task nor is taken for a crash. Outside a Celery worker it is always False."""

from __future__ import annotations

from celery.worker import state as worker_state


def shutting_down() -> bool:
    return worker_state.should_stop is not None or worker_state.should_terminate is not None
