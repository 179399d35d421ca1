"""A checkpoint download whose refusals are problem bodies like every other error, and whose validators
mean something.

Starlette's FileResponse answered a malformed Range with a text/plain 400, an unsatisfiable one with an
empty 416, and a range unit it does not know with a 400, where RFC 9110 (14.2) has a server ignore such a
Range and send the whole file (a probe); an unreadable range is ignored the same way. Its ETag is the
checkpoint's SHA-256 rather than Starlette's hash of the modification time and size, so a copy of the
store (a restore, another volume) keeps it, and an If-None-Match that names it is a 304 without the file
(a client that caches checkpoints re-reads none); If-Modified-Since, If-Match and If-Unmodified-Since are
answered too, where Starlette ignored them all.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope, Send

from service.api.errors import problem
from service.core.dataset_ids import file_sha256

_VALIDATORS = ("etag", "last-modified", "x-checkpoint-sha256")  # what a 304 repeats of the 200
_REFUSALS = {
    "if-match": "the checkpoint is not the one If-Match names (its ETag is its SHA-256)",
    "if-unmodified-since": "the checkpoint was written after the If-Unmodified-Since date",
}


class CheckpointFile(FileResponse):
    """The file is opened once, before anything is sent, and every byte comes from that open file:
    Starlette stats the path, sends the headers and only then opens it, so a checkpoint deleted (or
    replaced) in between was a 500 or a 200 closed after its headers (a probe deleting versions while
    downloading them). An open file outlives its deletion."""

    _held: BinaryIO | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._held = await anyio.to_thread.run_sync(open, self.path, "rb")
        except FileNotFoundError:
            gone = problem(
                404, "Not found", "the checkpoint file was deleted from storage as it was asked for"
            )
            return await gone(scope, receive, send)
        except OSError as exc:  # storage the server cannot read (permissions, a volume gone): no 500
            why = f"the checkpoint file cannot be read from storage ({type(exc).__name__}); retry later"
            return await problem(503, "Service unavailable", why)(scope, receive, send)
        try:
            await self._send(scope, receive, send)
        finally:
            self._held.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        """Starlette's one way into the file (each handler reads through it): the file opened above."""
        assert self._held is not None
        self._held.seek(0)
        yield anyio.wrap_file(self._held)  # closed by __call__

    async def _send(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._held is not None
        if self.stat_result is None:  # the ETag and Last-Modified the preconditions are read against
            self.stat_result = os.fstat(self._held.fileno())
            self.set_stat_headers(self.stat_result)
        headers = Headers(scope=scope)
        status = self._precondition(headers)
        if status in _REFUSALS:
            return await problem(412, "Precondition failed", _REFUSALS[status])(scope, receive, send)
        if status == 304:
            kept = {k: v for k, v in self.headers.items() if k in _VALIDATORS}
            return await Response(status_code=304, headers=kept)(scope, receive, send)
        wanted, if_range = headers.get("range"), headers.get("if-range")
        if if_range is not None and not self._should_use_range(if_range):
            wanted = None  # the file changed since: the whole file is sent, whatever the range (RFC 9110)
        if wanted is not None:
            size = self.stat_result.st_size
            members = satisfiable(wanted, size)
            if members == []:
                refusal = problem(416, "Range not satisfiable", f"the file holds {size} bytes: {wanted!r}")
                refusal.headers["Content-Range"] = f"bytes */{size}"
                return await refusal(scope, receive, send)
            others = [(k, v) for k, v in scope["headers"] if k != b"range"]
            # another unit or an unreadable range is ignored (the whole file); else the members that fit
            ranges = [] if members is None else [(b"range", f"bytes={','.join(members)}".encode("latin-1"))]
            scope = {**scope, "headers": [*others, *ranges]}
        await super().__call__(scope, receive, send)

    def _precondition(self, headers: Headers) -> int | str | None:
        """The field that fails (a 412), 304, or None to send the file, in RFC 9110's order (13.2.2). A
        field sent on several lines is one list (RFC 9110 5.3)."""
        etag = self.headers["etag"]
        if_match = ", ".join(headers.getlist("if-match")) or None
        if_none_match = ", ".join(headers.getlist("if-none-match")) or None
        if if_match is not None:
            if not _listed(if_match, etag, weak=False):
                return "if-match"
        elif _not_after(headers.get("if-unmodified-since"), self.stat_result) is False:
            return "if-unmodified-since"
        if if_none_match is not None:
            return 304 if _listed(if_none_match, etag, weak=True) else None
        return 304 if _not_after(headers.get("if-modified-since"), self.stat_result) else None


# ASCII digits: int() also read "1_0" and "+5" (a review); at most 19, a 64-bit offset: int() refuses
# 4,300 and more, which was a 500 (a review)
_MEMBER = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")


def satisfiable(field: str, size: int) -> list[str] | None:
    """The members of a byte-range set that a file of ``size`` bytes satisfies ([] for none: a 416), or
    None where the field is not one we read (another unit, a malformed member), which RFC 9110 (14.2) has
    ignored: the whole file. A set is satisfiable if any member is (14.1.1): Starlette refused all of
    ``bytes=0-10, 5000-`` for its second member."""
    unit, _, spec = field.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    kept = []
    for member in (m.strip() for m in spec.split(",")):
        if not member:
            continue  # an empty list element (RFC 9110 5.6.1)
        found = _MEMBER.fullmatch(member)
        if found is None or found.group(1) == found.group(2) == "":
            return None
        first, last = found.groups()
        if first and last and int(last) < int(first):
            return None
        if (first and int(first) < size) or (not first and int(last) > 0 and size > 0):
            kept.append(member)
    return kept if any(m.strip() for m in spec.split(",")) else None  # "bytes=," names no range: ignored


def stored_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` as it is now, hashed once per (inode, size, mtime, ctime): a
    probe copied v1's weights over v3's file and the download served them under v3's recorded hash."""
    st = path.stat()
    return _sha256_of(str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@lru_cache(maxsize=256)
def _sha256_of(path: str, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return file_sha256(path)


def _listed(field: str, etag: str, *, weak: bool) -> bool:
    """Whether the ETag list ``field`` names ``etag`` (or is ``*``): a weak comparison for If-None-Match,
    a strong one (no ``W/`` tag matches) for If-Match (RFC 9110 8.8.3.2)."""
    tags = [t.strip() for t in field.split(",")]
    if weak:
        tags = [t.removeprefix("W/") for t in tags]
    return "*" in tags or etag in tags


def _not_after(field: str | None, stat: os.stat_result | None) -> bool | None:
    """Whether the file was last modified at or before the HTTP-date ``field``; None where there is no
    date to read (absent or not an HTTP-date: RFC 9110 has the field ignored then) or it is in the
    future (a client's clock ahead of ours, not a date we sent: ignored, as Apache does). asctime's
    form carries no zone and is GMT (RFC 9110 5.6.7)."""
    if field is None or stat is None:
        return None
    try:
        when = parsedate_to_datetime(field)
    except (TypeError, ValueError):
        return None
    stamp = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if stamp > time.time():
        return None
    return int(stat.st_mtime) <= stamp
