"""Job progress, heartbeat and lease renewal, written in short transactions at most every few seconds.

The unlearning loop calls `report()` often; we touch the database only when `interval` has passed, so
progress costs nothing measurable per step.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from service.db.engine import session_scope
from service.db.tables import Job, utcnow
from workers import leases


class LeaseLost(RuntimeError):
    """Our lease lapsed and another worker may have taken the model over: stop without publishing."""


class JobCancelled(RuntimeError):
    pass


class Reporter:
    def __init__(self, url: str, job_id: str, model_id: str, owner: str, *, lease_s: float, interval: float):
        self.url, self.job_id, self.model_id, self.owner = url, job_id, model_id, owner
        self.lease_s, self.interval = lease_s, interval
        self._phase, self._lo, self._hi = "load", 0.0, 0.0
        self._last = 0.0
        self._cancel = False
        self._phase_started: float | None = None
        self.timings: dict[str, float] = {}

    def phase(self, name: str, start: float, end: float) -> None:
        """Enter a phase that spans [start, end] of the job's overall progress (and time the last one)."""
        self._close_phase()
        self._phase, self._lo, self._hi = name, start, end
        self._phase_started = time.perf_counter()
        self.report(0.0, force=True)

    def _close_phase(self) -> None:
        if self._phase_started is not None:
            took = time.perf_counter() - self._phase_started
            self.timings[self._phase] = self.timings.get(self._phase, 0.0) + took
            self._phase_started = None

    def finished_timings(self) -> dict[str, float]:
        """Seconds per phase, the current one closed now (recorded with the job: where a job's time goes)."""
        self._close_phase()
        return {k: round(v, 4) for k, v in self.timings.items()}

    def report(self, fraction: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        overall = self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0)
        with session_scope(self.url) as s:
            if not leases.renew(s, self.model_id, self.owner, self.lease_s):
                raise LeaseLost(f"lease on model {self.model_id} lost")
            job = s.scalar(select(Job).where(Job.id == self.job_id))
            if job is None:
                raise LeaseLost(f"job {self.job_id} vanished")
            job.progress, job.phase, job.heartbeat_at = overall, self._phase, utcnow()
            self._cancel = job.cancel_requested

    def cancelled(self) -> bool:
        """The cancel flag as of the last heartbeat (at most `interval` old)."""
        return self._cancel
