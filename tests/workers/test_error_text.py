"""What a failed job tells the client (`workers.runner.error_text`)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from service.core.db.engine import session_scope
from service.core.db.tables import ApiKey
from tests.conftest import Backend
from workers.runner import error_text


def test_a_database_error_says_what_the_database_said_without_the_statement(backend: Backend) -> None:
    """A job that failed on a statement showed every key of its tenant the SQL and its parameters (a probe
    read an INSERT into the audit log, rows of it, in a request's error)."""
    url = backend.settings().resolved_database_url
    row = {"tenant": "t", "name": "secret-name", "prefix": "p", "key_hash": "h" * 64, "scopes": ["admin"]}
    with session_scope(url) as s:
        s.add(ApiKey(**row))
    with pytest.raises(IntegrityError) as caught, session_scope(url) as s:
        s.add(ApiKey(**row))  # the same key hash again: a unique constraint
    said = error_text(caught.value)
    assert said.startswith("IntegrityError: the database refused a statement: "), said
    assert "INSERT" not in said and "secret-name" not in said and "\n" not in said
    assert "unique" in said.lower() or "duplicate" in said.lower(), said
