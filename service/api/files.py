"""A checkpoint download whose Range refusals are problem bodies like every other error.

Starlette's FileResponse answered a malformed Range with a text/plain 400, an unsatisfiable one with an
empty 416, and a range unit it does not know with a 400, where RFC 9110 (14.2) has a server ignore such a
Range and send the whole file (a probe). Its ETag is the checkpoint's SHA-256 rather than Starlette's
hash of the modification time and size, so a copy of the store (a restore, another volume) keeps it, and
an If-None-Match that names it is a 304 without the file (a client that caches checkpoints re-reads none).
"""

from __future__ import annotations

import os

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response
from starlette.types import Receive, Scope, Send

from service.api.errors import problem

_VALIDATORS = ("etag", "last-modified", "x-checkpoint-sha256")  # what a 304 repeats of the 200


class CheckpointFile(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stat_result is None:  # the ETag and Last-Modified that If-Range is read against
            self.stat_result = await anyio.to_thread.run_sync(os.stat, self.path)
            self.set_stat_headers(self.stat_result)
        headers = Headers(scope=scope)
        if _matches(headers.get("if-none-match"), self.headers["etag"]):
            kept = {k: v for k, v in self.headers.items() if k in _VALIDATORS}
            return await Response(status_code=304, headers=kept)(scope, receive, send)
        wanted, if_range = headers.get("range"), headers.get("if-range")
        if if_range is not None and not self._should_use_range(if_range):
            wanted = None  # the file changed since: the whole file is sent, whatever the range (RFC 9110)
        if wanted is not None and wanted.partition("=")[0].strip().lower() != "bytes":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"range"]}
        elif wanted is not None:
            size = self.stat_result.st_size
            try:
                self._parse_range_header(wanted, size)
            except MalformedRangeHeader as exc:
                refusal = problem(400, "Bad request", f"unreadable Range header {wanted!r}: {exc.content}")
                return await refusal(scope, receive, send)
            except RangeNotSatisfiable:
                refusal = problem(416, "Range not satisfiable", f"the file holds {size} bytes: {wanted!r}")
                refusal.headers["Content-Range"] = f"bytes */{size}"
                return await refusal(scope, receive, send)
        await super().__call__(scope, receive, send)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: a weak comparison against any of the listed tags, or `*` for any."""
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags
