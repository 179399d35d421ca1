"""Prometheus metrics and readiness. HTTP metrics are observed in-process; request/job gauges and the
job-duration histogram are read from the database at scrape time, so every API replica reports the
same truth without shared memory."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.tables import DeletionRequest, Job
from service.core.states import JobState

JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class DatabaseCollector(Collector):
    def __init__(self, make_session: sessionmaker[Session]) -> None:
        self.make_session = make_session

    def collect(self) -> Iterator[Any]:
        with self.make_session() as s:
            requests = GaugeMetricFamily(
                "unlearn_deletion_requests", "Deletion requests by state", labels=["state"]
            )
            for state, n in s.execute(
                select(DeletionRequest.state, func.count()).group_by(DeletionRequest.state)
            ):
                requests.add_metric([state], n)
            jobs = GaugeMetricFamily("unlearn_jobs", "Jobs by state", labels=["state"])
            for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
                jobs.add_metric([state], n)
            durations = [
                (f - st).total_seconds()
                for st, f in s.execute(
                    select(Job.started_at, Job.finished_at).where(
                        Job.state == JobState.COMPLETED,
                        Job.started_at.is_not(None),
                        Job.finished_at.is_not(None),
                    )
                )
                if st is not None and f is not None
            ]
            s.rollback()
        hist = HistogramMetricFamily("unlearn_job_duration_seconds", "Duration of completed jobs")
        buckets = [
            (str(b) if b != float("inf") else "+Inf", sum(d <= b for d in durations)) for b in JOB_BUCKETS
        ]
        hist.add_metric([], buckets=buckets, sum_value=sum(durations))
        yield from (requests, jobs, hist)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.count = Counter(
            "unlearn_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "unlearn_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template, so IDs do not explode the label set
        self.count.labels(request.method, path, str(response.status_code)).inc()
        self.latency.labels(request.method, path).observe(time.perf_counter() - started)
        return response
