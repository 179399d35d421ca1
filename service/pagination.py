"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.orm import Session

from service.errors import Unprocessable


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except ValueError as exc:
        raise Unprocessable("invalid cursor: pass back the `next_cursor` of a previous page") from exc
    if not isinstance(values, list) or len(values) != arity:
        raise Unprocessable("invalid cursor: pass back the `next_cursor` of a previous page")
    return values


def newest_first(
    session: Session, query: Any, table: Any, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    """Run `query` newest first (by `table.created_at`, then id), one page after `cursor`; returns the
    rows and the cursor of the next page (None on the last)."""
    if cursor is not None:
        ts, last_id = decode_cursor(cursor, 2)
        try:
            ts = datetime.fromisoformat(ts)
        except (TypeError, ValueError) as exc:
            raise Unprocessable("invalid cursor: pass back the `next_cursor` of a previous page") from exc
        query = query.where(or_(table.created_at < ts, and_(table.created_at == ts, table.id < last_id)))
    rows = list(
        session.execute(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)).all()
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return rows[:limit], next_cursor
