"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.orm import Session

from service.api.unicode import unencodable_at
from service.core.errors import Unprocessable


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


BAD_CURSOR = "invalid cursor: pass back the `next_cursor` of a previous page"


def decode_cursor(cursor: str, arity: int, kind: type = str) -> list[Any]:
    """The cursor's values, each of type `kind` (ints within 32 bits); a 422 for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, RecursionError) as exc:
        raise Unprocessable(BAD_CURSOR) from exc
    if not isinstance(values, list) or len(values) != arity:
        raise Unprocessable(BAD_CURSOR)
    for v in values:
        ok = type(v) is kind and (
            (isinstance(v, int) and -(2**31) <= v < 2**31)
            or (isinstance(v, str) and "\x00" not in v and unencodable_at(v) is None)
        )
        if not ok:
            raise Unprocessable(BAD_CURSOR)
    return values


def utc(ts: datetime) -> datetime:
    """A timestamp the database can store: aware, in UTC, within datetime's range (else 422)."""
    try:
        return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise Unprocessable(f"timestamp {ts.isoformat()} is out of range") from exc


def newest_first(
    session: Session, query: Any, table: Any, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """Run `query` newest first (by `table.created_at`, then id), one page after `cursor`; returns the
    rows and the cursor of the next page (None on the last)."""
    if cursor is not None:
        ts, last_id = decode_cursor(cursor, 2)
        try:
            ts = utc(datetime.fromisoformat(ts))
        except (TypeError, ValueError) as exc:
            raise Unprocessable(BAD_CURSOR) from exc
        query = query.where(or_(table.created_at < ts, and_(table.created_at == ts, table.id < last_id)))
    rows = list(
        session.execute(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)).all()
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return rows[:limit], next_cursor
