"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets."""

from __future__ import annotations

import base64
import json
from typing import Any

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
