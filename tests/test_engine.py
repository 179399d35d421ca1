"""How the service connects to its database (`service.core.db.engine`)."""

from __future__ import annotations

import pytest

from service.core.db.engine import CONNECT_TIMEOUT_S, make_engine
from tests.helpers import PG_ADMIN_URL, services_available


def test_a_postgresql_connect_gives_up_after_a_bounded_wait() -> None:
    """Without a connect timeout a server that does not answer (a partition, a failover) held a connect
    for the OS's minutes of SYN retries: a job's check whether the database went away hung with it."""
    reason = services_available()
    if reason:
        pytest.skip(reason)
    engine = make_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.info.get_parameters()["connect_timeout"] == str(CONNECT_TIMEOUT_S)
    finally:
        engine.dispose()
