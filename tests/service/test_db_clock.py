"""Times written on a host whose clock is off: the database's clock, not the host's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db import clock
from service.core.db.engine import make_engine
from service.core.db.tables import AuditEvent, Model
from tests.conftest import Backend
from tests.factories import make_model, submit_request


def test_a_host_whose_clock_steps_half_an_hour_ahead_writes_the_databases_time(backend: Backend) -> None:
    """A worker host five minutes fast wrote jobs created after they started, audit times running
    backwards by `seq` and lists ordered by its skew (an operations probe). Rows' `created_at` and
    `updated_at` and the audit log's `ts` follow the database's clock, measured when a connection opens
    and again at a checkout once a minute old (here: the host's clock steps ahead between two sessions
    of one pool, as an NTP correction does). (Slow to start: freezegun patches a process that may hold
    torch.)"""
    if backend.name != "postgres":
        pytest.skip("the embedded default (SQLite) is one host: its own clock is the shared one")
    from freezegun import freeze_time

    engine = make_engine(backend.env["DATABASE_URL"])
    try:
        with Session(engine) as s:  # a pooled connection, opened while the host's clock was right
            make_model(s, name="before")
            s.commit()
        with freeze_time(datetime.now(UTC) + timedelta(minutes=30), tick=True), Session(engine) as s:
            model = make_model(s, name="toy")
            request = submit_request(s, model, ["toy-0000"])
            s.commit()
            written = [model.created_at, request.created_at, request.updated_at]
            # this session's events only: the first session's came before freezegun's patching, which
            # took over 30 s on a loaded machine
            ours = select(AuditEvent.ts).where(AuditEvent.entity_id.in_([model.id, request.id]))
            written += [datetime.fromisoformat(ts) for ts in s.scalars(ours)]
            assert len(written) > 3, written  # the request's audit events are among them
            theirs = s.scalar(select(func.statement_timestamp()))
            assert theirs is not None
            host = datetime.now(UTC)
        assert host - theirs > timedelta(minutes=29)  # the host really was half an hour ahead
        for t in written:
            assert abs(t - theirs) < timedelta(seconds=30), (t, theirs)
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(Model)) == 2
    finally:
        engine.dispose()
        clock.forget_offset()  # this process's later tests run on its real clock
