"""The per-model loop a worker runs: take the lease, run jobs until no request is pending, let go."""

from __future__ import annotations

from collections.abc import Callable

from service.core.db.engine import session_scope
from service.core.liveness import takeover_seconds
from service.core.settings import Settings
from workers import claims, leases
from workers.jobstore import LeaseLost
from workers.runner import run_job


def process_model(
    settings: Settings,
    model_id: str,
    on_job_done: Callable[[list[str]], None] | None = None,
    requeue: Callable[[str], object] | None = None,
) -> str:
    """Serve a model's pending requests. Returns why it stopped: `busy` (another worker holds the
    lease and will see our requests), `idle` (nothing left), `yielded` (one job done and the model sent
    to the back of the queue, so one busy model cannot starve the others on a worker) or `lost` (our
    lease was taken over). Without `requeue` it runs jobs until nothing is pending."""
    url = settings.resolved_database_url
    owner = leases.worker_identity()
    while True:
        with session_scope(url) as s:
            if not leases.acquire(
                s, model_id, owner, settings.lease_seconds, takeover_seconds(settings.heartbeat_seconds)
            ):
                return "busy"
        ran = 0
        try:
            while requeue is None or ran == 0:
                with session_scope(url) as s:
                    job_id = claims.next_job(s, model_id)
                if job_id is None:
                    break
                run_job(settings, job_id, owner)
                ran += 1
                if on_job_done is not None:
                    with session_scope(url) as s:
                        pending_hooks = claims.webhooks_of_job(s, job_id)
                    on_job_done(pending_hooks)
        except LeaseLost:
            return "lost"
        finally:
            with session_scope(url) as s:
                leases.release(s, model_id, owner)
        # Requests committed while we were releasing found the lease taken and gave up: look again (and
        # a job handed back at a database outage is still running, ours to resume).
        with session_scope(url) as s:
            if not claims.has_work(s, model_id):
                return "idle"
        if requeue is not None:
            requeue(model_id)  # if the broker is down, the reconciler enqueues it instead
            return "yielded"
