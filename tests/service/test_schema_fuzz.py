"""Property-based fuzzing of every endpoint from the app's own OpenAPI schema (schemathesis), with a valid
admin key: no input may produce a 5xx or a response that breaks the documented schema."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from service.core.db.engine import session_scope
from service.core.settings import Settings
from tests.factories import make_key, make_model
from tests.helpers import migrated

_VAR = Path(tempfile.mkdtemp(prefix="unlearn-fuzz-"))
_SETTINGS = Settings(UNLEARN_VAR_DIR=str(_VAR), UNLEARN_QUEUE="fuzz")  # type: ignore[call-arg]
migrated(_SETTINGS.resolved_database_url)
with session_scope(_SETTINGS.resolved_database_url) as _s:
    make_model(_s, name="toy", n_train=30)
    ADMIN_KEY = make_key(_s, scopes=("admin",))

APP = create_app(_SETTINGS)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_breaks_the_api(case: schemathesis.Case) -> None:
    conformance = [response_schema_conformance, status_code_conformance, content_type_conformance]
    # /readyz answers its documented 503 here: no worker runs beside this app. Every other route must
    # never answer 5xx.
    checks = conformance if case.path == "/readyz" else [not_a_server_error, *conformance]
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, checks=checks)
