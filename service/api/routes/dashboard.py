"""The admin dashboard: static files (a page, a stylesheet, ES modules with no build step) served at
/dashboard without a key. Everything it shows comes from the public API, called by the browser with the
user's own key (kept in the tab's sessionStorage), so this router holds no data and no auth of its own."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from service.core.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parents[2] / "dashboard"
# The only names served (an allow-list: no path from the URL ever reaches the file system). The page loads
# app.js as an ES module; the others are the modules it imports, all in this one folder (no subfolders).
FILES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    **{
        name: "text/javascript; charset=utf-8"
        for name in (
            "app.js",
            "api.js",
            "certificate.js",
            "chart.js",
            "dom.js",
            "format.js",
            "page-audit.js",
            "page-jobs.js",
            "page-models.js",
            "page-requests.js",
            "poll.js",
            "readiness.js",
            "router.js",
            "session.js",
            "state.js",
            "widgets.js",
        )
    },
}
# Only our own scripts and styles, calls to this origin only; no framing, no referrer leaking the hash.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag) so a new release is picked up at once
}

router = APIRouter(include_in_schema=False)


@router.api_route("/dashboard", methods=["GET", "HEAD"])
def dashboard_root() -> Response:
    return RedirectResponse("/dashboard/", status_code=307)


@router.api_route("/dashboard/", methods=["GET", "HEAD"])
def dashboard_index() -> Response:
    return dashboard_file("index.html")


@router.api_route("/dashboard/{name}", methods=["GET", "HEAD"])
def dashboard_file(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)
