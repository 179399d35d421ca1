from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null on the last.")


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: object) -> object:
    """Pydantic reads a number as Unix seconds, or milliseconds past 2e10 (a probe's since=99999999999
    exported every event, as of 1973): a time filter is an ISO 8601 time, as documented."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("give an ISO 8601 time with a timezone, e.g. 2026-01-01T00:00:00Z, not a number")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_not_a_number)]
