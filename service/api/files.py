"""A checkpoint download whose Range refusals are problem bodies like every other error.

Starlette's FileResponse answered a malformed Range with a text/plain 400, an unsatisfiable one with an
empty 416, and a range unit it does not know with a 400, where RFC 9110 (14.2) has a server ignore such a
Range and send the whole file (a probe).
"""

from __future__ import annotations

import os

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from service.api.errors import problem


class CheckpointFile(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stat_result is None:  # the ETag and Last-Modified that If-Range is read against
            self.stat_result = await anyio.to_thread.run_sync(os.stat, self.path)
            self.set_stat_headers(self.stat_result)
        headers = Headers(scope=scope)
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
