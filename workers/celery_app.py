"""The worker's Celery app: the shared client configuration plus this package's tasks.

Start a worker with `celery -A workers.celery_app worker --pool=solo` (one job at a time per process:
a GPU worker should never run two unlearning jobs at once).
"""

from __future__ import annotations

from service.core.queue import make_celery
from service.core.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]
