"""Text that UTF-8 cannot carry. JSON's ``\\ud800`` escapes decode to lone surrogates, which a Python str
holds but nothing downstream can write: the audit chain's hashes (canonical JSON encoded as UTF-8),
PostgreSQL, a JSON response. A probe's ``arch_kwargs`` key ``"\\ud800"`` was stored, and from then on its
tenant's audit events could not be sequenced: verify, export and every certificate were 500s.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from service.core.errors import Unprocessable
from service.core.keys import is_utf8

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a body without one holds none


def unencodable_at(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The path of the first string (a key or a value) in decoded JSON that UTF-8 cannot encode; None if
    there is none. A key on the path is given as ``ascii()`` spells it, so an error naming it renders."""
    if isinstance(value, str):
        return None if is_utf8(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and not is_utf8(k):
                return (*path, ascii(k))
            if (found := unencodable_at(v, (*path, k))) is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            if (found := unencodable_at(v, (*path, i))) is not None:
                return found
    return None


def refuse_unencodable(value: Any, where: str) -> None:
    """A 422 naming the field of ``value`` (decoded JSON, the part ``where`` of the request) that holds a
    lone surrogate."""
    path = unencodable_at(value)
    if path is not None:
        field = ".".join(str(p) for p in (where, *path))
        raise Unprocessable(
            f"{field} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which "
            "UTF-8 cannot encode: send the character itself, or a valid surrogate pair",
            errors=[{"loc": [where, *path], "msg": "lone surrogate", "type": "string_unicode"}],
        )


async def utf8_json_body(request: Request) -> None:
    """An app-wide dependency: a JSON body that is not UTF-8 (RFC 8259 8.1), or whose strings UTF-8
    cannot encode, is a 422 naming the field. Python's JSON parser took UTF-16 bodies and raw surrogate
    bytes (CESU-8) as text holding lone surrogates, past the escape search (a review). Only a body
    holding a surrogate escape is decoded a second time (a regex search otherwise)."""
    if "json" not in request.headers.get("content-type", "").lower():  # any case, as FastAPI reads it
        return
    body = await request.body()
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unprocessable(
            f"the body is not UTF-8 ({exc.reason} at byte {exc.start}): send JSON encoded as UTF-8"
        ) from exc
    if b"\x00" in body:  # UTF-16 or UTF-32 text of ASCII is valid UTF-8 byte for byte (a probe)
        raise Unprocessable("the body holds NUL bytes (UTF-16 or UTF-32?): send JSON encoded as UTF-8")
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return  # FastAPI's own parse says what is wrong with it
    refuse_unencodable(value, "body")
