"""Webhooks: a signed POST to a request's callback_url when it completes, fails or is cancelled.

Signed as Standard Webhooks (https://www.standardwebhooks.com) describe, so receivers verify with an
existing library: headers `webhook-id` (the same on every retry of one message, so receivers can drop
duplicates), `webhook-timestamp` (unix seconds of this attempt, so they can refuse replays) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`. The key is each active secret
of the request's tenant (`service.core.webhook_secrets`; during a rotation's grace period there are
several, space-separated), or the service-wide `Settings.webhook_key` for a tenant that never rotated.

Delivery is retried with exponential backoff; the request row records the outcome, and a delivery
given up on leaves a `deletion_request.webhook_failed` audit event that says why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import events, webhook_secrets
from service.core.callbacks import DEFAULT_PORTS, check_callback_url
from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest, Model
from service.core.errors import Unprocessable
from service.core.settings import Settings
from service.core.states import WebhookState

log = logging.getLogger(__name__)

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature, `v1,<base64>`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(k, msg_id, timestamp, body) for k in keys),
    }


def verify(key: bytes | str, body: bytes, headers: Mapping[str, str], tolerance_s: float = 300) -> bool:
    """Whether `headers` carry a valid signature of `body` under `key` (raw bytes, or a `whsec_`
    secret) with a timestamp within `tolerance_s` of now. What a receiver does; for our own tests."""
    if isinstance(key, str):
        key = webhook_secrets.key_bytes(key)
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, signatures = h.get(ID_HEADER, ""), h.get(SIGNATURE_HEADER, "").split()
    try:
        ts = int(h.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if not msg_id or abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(key, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def message_id(req: DeletionRequest) -> str:
    """Stable across retries of one message, distinct between messages: a retried request that fails
    again under a new job is a new message."""
    return f"{req.id}:{req.state}" + (f":{req.job_id}" if req.job_id else "")


def signing_keys(session: Session, settings: Settings, tenant: str) -> list[bytes]:
    """The tenant's active secrets, newest first; the service-wide key if it never rotated one, or while
    its first rotation's grace period lasts."""
    wide = webhook_secrets.SERVICE_WIDE
    rows = webhook_secrets.active(session, tenant)
    keys = [settings.webhook_key if r.secret == wide else webhook_secrets.key_bytes(r.secret) for r in rows]
    return keys or [settings.webhook_key]


def payload(req: DeletionRequest, model_name: str) -> dict[str, Any]:
    return {
        "event": f"deletion_request.{req.state}",
        "request": {
            "id": req.id,
            "model": model_name,
            "state": req.state,
            "reference": req.reference,
            "reason": req.reason,
            "sample_count": req.sample_count,
            "job_id": req.job_id,
            "model_version": f"v{req.model_version}" if req.model_version else None,
            "error": req.error,
        },
    }


def address_problem(addr: IpAddress) -> str | None:
    """Why a webhook must not go to `addr` (loopback, private, ...), or None for a public address."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is not None:
            return address_problem(embedded)
    for kind in (
        "loopback",
        "link_local",
        "multicast",
        "unspecified",
        "reserved",
        "private",
    ):  # most telling first
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    if not addr.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT
        return "not globally routable"
    return None


class Refused(Exception):
    """This URL must not receive the webhook now, and retrying will not change that."""


async def check_destination(url: str, settings: Settings) -> None:
    """Refuse a callback the current settings no longer allow, or whose host resolves to any address
    that is not public (unless UNLEARN_WEBHOOK_ALLOW_PRIVATE): a callback must not reach the service's
    own network (SSRF). Raises Refused, or OSError when the name does not resolve (worth a retry).

    A DNS-rebinding window remains: httpx resolves the name again when it connects, so a hostile DNS
    server could answer a public address here and a private one a moment later. Closing it means
    connecting to the address checked here while keeping the name for TLS (SNI and certificate checks);
    until then, the allow-list of host names the operator trusts is the first line of defence.
    """
    try:
        check_callback_url(url, settings.webhook_allowed_hosts, allow_http=settings.webhook_allow_http)
    except Unprocessable as exc:
        raise Refused(f"no longer allowed: {exc.detail}") from None
    if settings.webhook_allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        problem = address_problem(addr)
        if problem is not None:
            raise Refused(
                f"{host} resolves to {addr}, a {problem} address (set UNLEARN_WEBHOOK_ALLOW_PRIVATE to allow)"
            )


def _finish(settings: Settings, request_id: str, ok: bool, reason: str | None = None) -> None:
    with session_scope(settings.resolved_database_url) as s:
        req = s.get_one(DeletionRequest, request_id)
        req.webhook_state = WebhookState.DELIVERED if ok else WebhookState.FAILED
        if not ok:
            log.warning("webhook for %s failed: %s", request_id, reason)
            events.webhook_failed(s, req, reason=reason or "unknown", attempts=req.webhook_attempts)


def attempt(url: str, body: bytes, headers: Mapping[str, str], settings: Settings) -> int:
    """Check the destination and POST, reading the whole answer, within UNLEARN_WEBHOOK_TIMEOUT_SECONDS
    in all, or raise TimeoutError; Refused or OSError from the check. httpx's own timeouts bound each
    read, not the exchange: a probe's receiver that sent a byte every 5 s held a delivery for a minute,
    on every attempt. Name lookups run in the loop's resolver threads, which are never waited for: a
    lookup that hangs is left behind with the loop, not waited out (``asyncio.run`` would join them)."""
    within_s = settings.webhook_timeout_seconds

    async def exchange() -> int:
        await check_destination(url, settings)
        async with httpx.AsyncClient(timeout=within_s, follow_redirects=False) as client:
            response = await client.post(url, content=body, headers=dict(headers))
            return response.status_code

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(exchange(), within_s))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()  # shuts its resolver threads down without waiting for them


def deliver(settings: Settings, request_id: str) -> bool:
    """Try once. True when done with (delivered, given up, or nothing to deliver); False: retry later."""
    with session_scope(settings.resolved_database_url) as s:
        req = s.scalar(select(DeletionRequest).where(DeletionRequest.id == request_id))
        if req is None or req.callback_url is None or req.webhook_state != WebhookState.PENDING:
            return True
        body = json.dumps(payload(req, s.get_one(Model, req.model_id).name), sort_keys=True).encode()
        url, msg_id = req.callback_url, message_id(req)
        keys = signing_keys(s, settings, req.tenant)
        req.webhook_attempts += 1
        attempts = req.webhook_attempts
    try:
        headers = {"Content-Type": "application/json", **signed_headers(keys, msg_id, int(time.time()), body)}
        status = attempt(url, body, headers, settings)
        ok, reason = 200 <= status < 300, f"the receiver answered HTTP {status}"
    except (Refused, httpx.InvalidURL) as exc:  # InvalidURL: no attempt could send it (one too long)
        _finish(settings, request_id, False, f"refused: {exc}")
        return True
    except TimeoutError:  # before OSError, which it is
        ok, reason = (
            False,
            f"the receiver did not answer in full within {settings.webhook_timeout_seconds:g} s",
        )
    except Exception as exc:  # noqa: BLE001 - OSError: the name did not resolve; any other counts too
        # an error that is not httpx's HTTPError (its InvalidURL, say) went up to the courier, which sent
        # the attempt again without counting it against webhook_max_attempts: pending for good (a probe)
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    if ok or attempts >= settings.webhook_max_attempts:
        _finish(
            settings, request_id, ok, None if ok else f"gave up after {attempts} attempts; last: {reason}"
        )
        return True
    return False
