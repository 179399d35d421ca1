"""Where webhooks may go: a deletion request's `callback_url` is checked against the allow-list when the
request is accepted, so a bad URL is the client's 422 now rather than a failed delivery later.

Allow-list entries are `host[:port]`; a bare host allows only the scheme's default port (443, or 80 for
http), so allowing `hooks.example` does not open every port on that machine. Only https is accepted
unless UNLEARN_WEBHOOK_ALLOW_HTTP is set. Which addresses a host resolves to is checked at delivery time
(`workers.webhooks`), because DNS answers change.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from service.core.errors import Unprocessable

DEFAULT_PORTS = {"https": 443, "http": 80}


def parse_allowed(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (lower-case host, port or None). IPv6 literals are written `[::1]:8443`."""
    try:
        parts = urlsplit(f"//{entry.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"webhook allow-list entry {entry!r} is not host[:port]: {exc}") from None
    if not host or parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"webhook allow-list entry {entry!r} is not host[:port]")
    return host, port


def _refuse(detail: str, msg: str) -> Unprocessable:
    return Unprocessable(
        detail, errors=[{"loc": ["body", "callback_url"], "msg": msg, "type": "value_error"}]
    )


def check_no_credentials(url: str) -> None:
    """A 422 for a URL holding user:password@, which would be stored, audited and echoed in every answer
    about the request (a receiver checks the webhook's signature instead). Checked when a request is
    accepted only: requests accepted before it was refused still get their webhooks."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise _refuse(
            "callback_url must not carry credentials (user:password@): a receiver checks the webhook's "
            "signature instead",
            "credentials not allowed",
        )


def check_callback_url(url: str, allowed: Sequence[str], *, allow_http: bool = False) -> None:
    """Raise a 422 naming what is wrong (scheme, host or port) unless `url` may receive webhooks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    schemes = ("https", "http") if allow_http else ("https",)
    if scheme not in schemes:
        why = "https" if not allow_http else "http or https"
        extra = " (http needs UNLEARN_WEBHOOK_ALLOW_HTTP)" if scheme == "http" else ""
        raise _refuse(
            f"callback_url must use {why}, not {scheme or 'no scheme'!r}{extra}", "scheme not allowed"
        )
    try:
        port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    except ValueError:
        raise _refuse("callback_url has an invalid port", "invalid port") from None
    host = (parts.hostname or "").lower()
    entries = [parse_allowed(e) for e in allowed]
    ports = [p for h, p in entries if h == host]
    if not ports:
        raise _refuse(f"callback_url host {host!r} is not on the webhook allow-list", "host not allowed")
    if not any(p == port or (p is None and port == DEFAULT_PORTS[scheme]) for p in ports):
        named = ", ".join(sorted({str(p or DEFAULT_PORTS[scheme]) for p in ports}))
        raise _refuse(
            f"callback_url port {port} is not allowed for host {host!r} (allowed: {named})",
            "port not allowed",
        )
