"""Accepting deletion requests: validate every ID against the model's training set, then record the
request and its audit event in one transaction. Nothing is written for a rejected request."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.core import audit
from service.core.audit import canonical_json
from service.core.db.engine import is_postgres
from service.core.db.tables import ApiKey, DatasetSample, DeletionRequest, ForgottenSample, Model
from service.core.errors import Conflict, PayloadTooLarge, Unprocessable

PENDING_STATES = ("received", "queued")
MAX_REPORTED_UNKNOWN = 100
_CHUNK = 500


def dedupe(ids: Iterable[str]) -> list[str]:
    """Distinct IDs in first-seen order."""
    return list(dict.fromkeys(ids))


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _present(session: Session, column: Any, scope: Any, ids: Sequence[str]) -> set[str]:
    """Which of `ids` appear in `column` (within `scope`), queried in chunks to bound the IN list."""
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(session.scalars(select(column).where(scope, column.in_(chunk))))
    return found


def unknown_ids(session: Session, dataset_id: str, ids: Sequence[str]) -> list[str]:
    """IDs that are not in the dataset, in request order."""
    known = _present(session, DatasetSample.sample_id, DatasetSample.dataset_id == dataset_id, ids)
    return [i for i in ids if i not in known]


def forgotten_ids(session: Session, model_id: str, ids: Sequence[str]) -> set[str]:
    return _present(session, ForgottenSample.sample_id, ForgottenSample.model_id == model_id, ids)


def body_digest(ids: Sequence[str], reference: str | None, callback_url: str | None = None) -> str:
    body = {"sample_ids": sorted(ids), "reference": reference, "callback_url": callback_url}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def find_idempotent(
    session: Session, *, tenant: str, idempotency_key: str, digest: str
) -> DeletionRequest | None:
    """The request an Idempotency-Key already created, if any. The same key with another body is an error:
    the client is reusing keys, and silently returning the old request would hide that."""
    if is_postgres(session):
        # Two concurrent first attempts: one proceeds, the other is told to retry (409), never a duplicate.
        lock_key = zlib.crc32(f"{tenant}\x00{idempotency_key}".encode())
        if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key}):
            raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")
    existing = session.scalar(
        select(DeletionRequest).where(
            DeletionRequest.tenant == tenant, DeletionRequest.idempotency_key == idempotency_key
        )
    )
    if existing is not None and existing.body_sha256 != digest:
        raise Unprocessable(
            "this Idempotency-Key was already used with a different body; use a new key for a new request"
        )
    return existing


def submit(
    session: Session,
    *,
    model: Model,
    key: ApiKey,
    sample_ids: Sequence[str],
    reference: str | None,
    max_ids: int,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> DeletionRequest:
    """Validate and record a request (state `received`) with its audit event; the caller commits."""
    if model.status != "ready":
        detail = f": {model.status_detail}" if model.status_detail else ""
        raise Conflict(f"model {model.name!r} is {model.status}{detail}; it accepts requests once ready")
    if callback_url is not None:
        host = urlsplit(callback_url).hostname or ""
        if host not in allowed_hosts:
            raise Unprocessable(
                f"callback_url host {host!r} is not on the webhook allow-list",
                errors=[{"loc": ["body", "callback_url"], "msg": "host not allowed", "type": "value_error"}],
            )
    ids = dedupe(sample_ids)
    if len(ids) > max_ids:
        raise PayloadTooLarge(f"{len(ids)} distinct sample IDs; at most {max_ids} per request", limit=max_ids)
    unknown = unknown_ids(session, model.train_dataset_id, ids)
    if unknown:
        raise Unprocessable(
            f"{len(unknown)} sample ID(s) are not in the training set of model {model.name!r}",
            unknown_ids=unknown[:MAX_REPORTED_UNKNOWN],
            unknown_count=len(unknown),
        )
    already = forgotten_ids(session, model.id, ids)
    req = DeletionRequest(
        tenant=model.tenant,
        model_id=model.id,
        sample_ids=ids,
        sample_count=len(ids),
        already_forgotten_count=len(already),
        requester_key_id=key.id,
        idempotency_key=idempotency_key,
        body_sha256=body_digest(ids, reference, callback_url),
        reference=reference,
        callback_url=callback_url,
        state="received",
    )
    session.add(req)
    session.flush()
    audit.record(
        session,
        tenant=model.tenant,
        actor=f"key:{key.prefix}",
        action="deletion_request.received",
        entity_type="deletion_request",
        entity_id=req.id,
        model_id=model.id,
        data={
            "model": model.name,
            "sample_count": len(ids),
            "sample_ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
            "already_forgotten_count": len(already),
            "reference": reference,
        },
    )
    return req


def mark_queued(session: Session, req: DeletionRequest, actor: str) -> None:
    """Record that a worker has been asked to process the request (only if nothing has claimed it yet)."""
    if req.state != "received":
        return
    req.state = "queued"
    audit.record(
        session,
        tenant=req.tenant,
        actor=actor,
        action="deletion_request.queued",
        entity_type="deletion_request",
        entity_id=req.id,
        model_id=req.model_id,
    )
