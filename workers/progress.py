"""Job progress, heartbeat and lease renewal.

A background thread writes progress and heartbeat and renews the model's lease every `interval` seconds,
whatever the job is doing (loading data, fitting the MIA classifier, a slow step), so a live job never
looks dead. The unlearning loop only sets a number in memory: it does no database I/O per step.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from sqlalchemy import select

from service.core.db.clock import db_now
from service.core.db.engine import session_scope
from service.core.db.tables import Job
from service.core.errors import one_line
from service.core.states import JobState
from workers import leases
from workers.jobstore import JobCancelled, JobTimedOut, LeaseLost, WorkerStopping
from workers.shutdown import shutting_down

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        url: str,
        job_id: str,
        model_id: str,
        owner: str,
        *,
        lease_s: float,
        interval: float,
        time_limit_s: float | None = None,
    ):
        self.url, self.job_id, self.model_id, self.owner = url, job_id, model_id, owner
        self.lease_s, self.interval, self.time_limit_s = lease_s, interval, time_limit_s
        self._started = time.monotonic()
        self._phase, self._lo, self._hi, self._fraction = "load", 0.0, 0.0, 0.0
        self._cancel = False
        self._lost: str | None = None
        self._phase_started: float | None = None
        self.timings: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Reporter:
        self.flush()
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except LeaseLost:
                return
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed; retrying: %s", self.job_id, one_line(exc))

    def flush(self) -> None:
        """Write progress and heartbeat, renew the lease, read the cancel flag (one short transaction)."""
        phase, overall = self.where()
        with session_scope(self.url) as s:
            if not leases.renew(s, self.model_id, self.owner, self.lease_s):
                self._lost = f"lease on model {self.model_id} lost"
                raise LeaseLost(self._lost)
            job = s.scalar(select(Job).where(Job.id == self.job_id))
            if (
                job is not None and job.state != JobState.RUNNING
            ):  # ended (published/cancelled): nothing to report
                return
            if job is None:
                self._lost = f"job {self.job_id} vanished"
                raise LeaseLost(self._lost)
            job.progress, job.phase, job.heartbeat_at = overall, phase, db_now(s)
            self._cancel = job.cancel_requested

    # --- called by the job --------------------------------------------------------------------------
    def phase(self, name: str, start: float, end: float) -> None:
        """Enter a phase that spans [start, end] of the job's overall progress (and time the last one).
        A cancel seen by the heartbeat stops the job here, between phases, as well as between steps."""
        self._check()
        if self._cancel:
            raise JobCancelled(f"cancelled before {name}")
        self._close_phase()
        with self._lock:
            self._phase, self._lo, self._hi, self._fraction = name, start, end, 0.0
        self._phase_started = time.perf_counter()

    def report(self, fraction: float) -> None:
        """The unlearning loop's progress callback: memory only, plus the lease check."""
        self._check()
        self._fraction = fraction

    def waiting(self) -> None:
        """Called while a job waits (for storage): stop for a lost lease, a shutdown, the time limit or an
        admin's cancel, as between steps."""
        self._check()
        if self._cancel:
            raise JobCancelled(f"cancelled in {self._phase}")

    def cancelled(self) -> bool:
        """The cancel flag as of the last heartbeat (at most `interval` old)."""
        return self._cancel

    def _check(self) -> None:
        """Called between phases and every few steps: stop for a lost lease or an exhausted time limit."""
        if self._lost is not None:
            raise LeaseLost(self._lost)
        if shutting_down():
            raise WorkerStopping(f"the worker is shutting down; stopped in {self._phase}")
        if self.time_limit_s is not None and time.monotonic() - self._started > self.time_limit_s:
            raise JobTimedOut(
                f"stopped after {time.monotonic() - self._started:.0f} s in {self._phase}: the job's time "
                f"limit is {self.time_limit_s:.0f} s (the model's time_limit_seconds, bounded by "
                "UNLEARN_JOB_TIME_LIMIT_SECONDS)"
            )

    def where(self) -> tuple[str, float]:
        """The phase the job is in now and its overall progress (the database may be a heartbeat behind)."""
        with self._lock:
            return self._phase, self._lo + (self._hi - self._lo) * min(max(self._fraction, 0.0), 1.0)

    def _close_phase(self) -> None:
        if self._phase_started is not None:
            took = time.perf_counter() - self._phase_started
            self.timings[self._phase] = self.timings.get(self._phase, 0.0) + took
            self._phase_started = None

    def finished_timings(self) -> dict[str, float]:
        """Seconds per phase, the current one closed now (recorded with the job: where a job's time goes)."""
        self._close_phase()
        return {k: round(v, 4) for k, v in self.timings.items()}
