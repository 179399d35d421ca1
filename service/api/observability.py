"""Prometheus metrics. HTTP metrics are observed in-process and hold no tenant data; request/job gauges
and the job-duration histogram are one tenant's, read from the database at scrape time (so every API
replica reports the same truth without shared memory) and shown only to a scrape with that tenant's key:
nobody learns another tenant's deletion volume from /metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import liveness
from service.core.db.clock import db_now
from service.core.db.tables import DeletionRequest, Job
from service.core.states import JobState, RequestState

JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def render(
    http: CollectorRegistry, make_session: sessionmaker[Session], tenant: str | None, heartbeat_s: float
) -> bytes:
    """The exposition text: the server's HTTP metrics, plus `tenant`'s own gauges when a key named one."""
    body = generate_latest(server_wide(http))
    if tenant is not None:
        own = CollectorRegistry()
        own.register(TenantCollector(make_session, tenant, heartbeat_s))
        body += generate_latest(own)
    return body


def server_wide(own: CollectorRegistry) -> CollectorRegistry:
    """This process's HTTP metrics or, when the API runs as several processes, their sum over all of them.

    Why: under `unlearn api --workers N` each process counted only what it served, and a scrape was
    answered by whichever process took the connection, so a counter read 58, 217, 58 from one scrape to
    the next and Prometheus took every drop for a reset. `unlearn api` (or a gunicorn deployment) sets
    PROMETHEUS_MULTIPROC_DIR before the processes start; prometheus-client then keeps every process's
    values in files there, and the scrape adds them up."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return own
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


class TenantCollector(Collector):
    """One tenant's requests and jobs by state, and its completed jobs' durations. Every state is shown,
    at 0 when empty: a series that vanished once a backlog drained read as "no data" instead of "none"
    (an alert on `received > 100` could never resolve, a graph had gaps)."""

    def __init__(self, make_session: sessionmaker[Session], tenant: str, heartbeat_s: float) -> None:
        self.make_session, self.tenant, self.heartbeat_s = make_session, tenant, heartbeat_s

    def _by_state(
        self, s: Session, table: type[DeletionRequest] | type[Job], states: type[StrEnum]
    ) -> list[tuple[str, int]]:
        """(state, count) of the tenant's rows for every state, 0 where it has none."""
        rows = s.execute(
            select(table.state, func.count()).where(table.tenant == self.tenant).group_by(table.state)
        ).all()
        counts = dict.fromkeys((str(state) for state in states), 0) | {str(k): n for k, n in rows}
        return list(counts.items())

    def collect(self) -> Iterator[Any]:
        with self.make_session() as s:
            requests = GaugeMetricFamily(
                "unlearn_deletion_requests", "Deletion requests by state", labels=["tenant", "state"]
            )
            for state, n in self._by_state(s, DeletionRequest, RequestState):
                requests.add_metric([self.tenant, state], n)
            jobs = GaugeMetricFamily("unlearn_jobs", "Jobs by state", labels=["tenant", "state"])
            for state, n in self._by_state(s, Job, JobState):
                jobs.add_metric([self.tenant, state], n)
            durations = [
                (f - st).total_seconds()
                for st, f in s.execute(
                    select(Job.started_at, Job.finished_at).where(
                        Job.tenant == self.tenant,
                        Job.state == JobState.COMPLETED,
                        Job.started_at.is_not(None),
                        Job.finished_at.is_not(None),
                    )
                )
                if st is not None and f is not None
            ]
            # Whether work is being done: a job frozen by an outage showed only in one job's heartbeat age
            # (a probe). Workers are not a tenant's: their count says nothing of any tenant's volume.
            workers = GaugeMetricFamily(
                "unlearn_workers_alive", "Worker processes heard from within a few heartbeats"
            )
            workers.add_metric([], liveness.alive(s, liveness.takeover_seconds(self.heartbeat_s)))
            oldest = s.scalar(
                select(func.min(Job.heartbeat_at)).where(
                    Job.tenant == self.tenant, Job.state == JobState.RUNNING
                )
            )
            stale = GaugeMetricFamily(
                "unlearn_running_job_heartbeat_age_seconds",
                "Seconds since the least recent heartbeat of a running job (0: none running)",
                labels=["tenant"],
            )
            stale.add_metric([self.tenant], liveness.age_s(oldest, db_now(s)) or 0.0)
            s.rollback()
        hist = HistogramMetricFamily(
            "unlearn_job_duration_seconds", "Duration of completed jobs", labels=["tenant"]
        )
        buckets = [
            (str(b) if b != float("inf") else "+Inf", sum(d <= b for d in durations)) for b in JOB_BUCKETS
        ]
        hist.add_metric([self.tenant], buckets=buckets, sum_value=sum(durations))
        yield from (requests, jobs, hist, workers, stale)


class HttpMetrics:
    """Request count and latency per route template, as pure ASGI middleware (Starlette's
    BaseHTTPMiddleware would add a task and a stream per request)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.count = Counter(
            "unlearn_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "unlearn_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = route_template(scope)
            self.count.labels(scope["method"], path, str(status)).inc()
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The route template, so IDs do not explode the label set. The router puts the route in the scope;
    a request refused before routing (no key, an oversized body, the database down while the key is
    checked) is matched here, or every such refusal was counted under "unmatched" and an operator could
    not tell which endpoint was failing in an outage."""
    route = scope.get("route")
    if route is None and isinstance(scope.get("app"), Starlette):
        matches = [(r.matches(scope)[0], r) for r in _leaves(scope["app"].router.routes)]
        full = [r for m, r in matches if m == Match.FULL]
        partial = [r for m, r in matches if m == Match.PARTIAL]  # the path matched, the method did not
        route = (full or partial or [None])[0]
    return getattr(route, "path", "unmatched")


def _leaves(routes: list[Any]) -> Iterator[Any]:
    """The routes themselves, inside FastAPI's included routers (this app includes them unprefixed, so a
    route's own pattern is the full path)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        yield from _leaves(inner.routes) if inner is not None else (r,)
