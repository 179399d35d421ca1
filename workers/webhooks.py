"""Webhooks: a signed POST to a request's callback_url when it completes or fails.

Signature: header `X-Unlearn-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the same
scheme as Stripe's, so receivers can reject replays by the timestamp. Delivery is retried with
exponential backoff; the request row records the outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from sqlalchemy import select

from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest, Model
from service.core.settings import Settings
from service.core.states import WebhookState

SIGNATURE_HEADER = "X-Unlearn-Signature"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, tolerance_s: float = 300) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return abs(time.time() - ts) <= tolerance_s and hmac.compare_digest(expected, parts.get("v1", ""))


def payload(req: DeletionRequest, model_name: str) -> dict[str, Any]:
    return {
        "event": f"deletion_request.{req.state}",
        "request": {
            "id": req.id,
            "model": model_name,
            "state": req.state,
            "reference": req.reference,
            "sample_count": req.sample_count,
            "job_id": req.job_id,
            "model_version": f"v{req.model_version}" if req.model_version else None,
            "error": req.error,
        },
    }


def deliver(settings: Settings, request_id: str) -> bool:
    """Try once. True when delivered (or nothing to deliver); False means retry later."""
    with session_scope(settings.resolved_database_url) as s:
        req = s.scalar(select(DeletionRequest).where(DeletionRequest.id == request_id))
        if req is None or req.callback_url is None or req.webhook_state != WebhookState.PENDING:
            return True
        body = json.dumps(payload(req, s.get_one(Model, req.model_id).name), sort_keys=True).encode()
        url = req.callback_url
        req.webhook_attempts += 1
        attempts = req.webhook_attempts
    ok = False
    try:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(settings.webhook_key, body, int(time.time())),
        }
        response = httpx.post(url, content=body, headers=headers, timeout=10, follow_redirects=False)
        ok = 200 <= response.status_code < 300
    except httpx.HTTPError:
        ok = False
    if ok or attempts >= settings.webhook_max_attempts:
        with session_scope(settings.resolved_database_url) as s:
            s.get_one(DeletionRequest, request_id).webhook_state = (
                WebhookState.DELIVERED if ok else WebhookState.FAILED
            )
        return True
    return False
