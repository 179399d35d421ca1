"""The interactive schema at ``/docs``, served with the copy of Swagger UI that ``fastapi-offline`` ships
(Swagger UI 5: it reads OpenAPI 3.1, which FastAPI writes). FastAPI's own page loads Swagger UI from a
CDN: blank where the service has no internet (as it is meant to run), and a third party's script on the
page where users paste their API keys. Only the three files the page reads are served, and the page gets
the dashboard's kind of headers: nothing from elsewhere, no framing."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.core.errors import NotFound

STATIC = Path(fastapi_offline.__file__).parent / "static"
ASSETS = {  # served name -> the package's file
    "swagger-ui-bundle.js": "swagger-ui-bundle.js",
    "swagger-ui.css": "swagger-ui.css",
    "favicon.png": "favicon.png",
}
_INLINE = re.compile(r"<script>(.*?)</script>", re.S)


def install_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url or '/openapi.json'}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        )
        inline = [_sha256(s) for s in _INLINE.findall(bytes(page.body).decode())]
        page.headers.update(
            {
                "Content-Security-Policy": (
                    f"default-src 'none'; script-src 'self' {' '.join(inline)}; style-src 'self' "
                    "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                    "form-action 'none'; frame-ancestors 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            }
        )
        return page

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFound(f"no docs asset {name!r}")
        return FileResponse(STATIC / ASSETS[name], headers={"X-Content-Type-Options": "nosniff"})


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
