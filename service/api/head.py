"""HEAD answered wherever GET is.

RFC 9110 asks a server that answers GET to answer HEAD too, and monitors probe `/healthz` with it; FastAPI
routes take only the methods they name, so every HEAD was a 405. A HEAD that no route takes itself (the
checkpoint download has its own, which reads no file) runs as the GET, whose body the server does not send
for a HEAD request. Pure ASGI: other methods pass with one comparison.
"""

from __future__ import annotations

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app, self.router = app, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD" and not self._routed(scope):
            scope = {**scope, "method": "GET"}  # the server's own scope still says HEAD: no body is sent
        await self.app(scope, receive, send)

    def _routed(self, scope: Scope) -> bool:
        """Whether a route takes this HEAD itself."""
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)
