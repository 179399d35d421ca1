from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import AuditReader, RequestReader, SessionDep
from service.core import audit, certificates
from service.core.canonical import canonical_json
from service.core.errors import Unprocessable
from service.core.lookups import get_model, get_request
from service.core.signing import public_key_b64, public_key_pem, sign_document

router = APIRouter(tags=["audit"])

CSV_FIELDS = [
    "seq",
    "ts",
    "tenant",
    "actor",
    "action",
    "entity_type",
    "entity_id",
    "model_id",
    "data",
    "prev_hash",
    "hash",
]


def _matches(
    ev: dict[str, Any], since: datetime | None, until: datetime | None, model_id: str | None
) -> bool:
    ts = datetime.fromisoformat(ev["ts"])
    return (
        (since is None or ts >= since)
        and (until is None or ts < until)
        and (model_id is None or ev["model_id"] == model_id)
    )


@router.get("/v1/audit/export", summary="Stream the tenant's hash-chained audit trail")
def export_audit(
    request: Request,
    session: SessionDep,
    key: AuditReader,
    format: Literal["jsonl", "csv"] = Query("jsonl"),
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
) -> StreamingResponse:
    """Streams: events are read in batches as the response is written, never held in memory all at once.
    Filters select events but never alter them: each exported event still carries its own `prev_hash`
    and `hash`, so a filtered export can be checked against a full one."""
    model_id = get_model(session, key.tenant, model).id if model else None
    if any(b is not None and b.tzinfo is None for b in (since, until)):
        raise Unprocessable("`since` and `until` need a timezone, e.g. 2026-01-01T00:00:00Z")
    tenant, make_session = key.tenant, request.app.state.sessionmaker

    def events() -> Iterator[dict[str, Any]]:
        # A short session per page: the request's own is closed before the body is sent, and a slow
        # reader must not hold a transaction (on SQLite, the write lock) open while it downloads.
        after = 0
        while True:
            with make_session() as s:
                page = [audit.export_dict(ev) for ev in audit.events_page(s, tenant, after)]
                s.rollback()
            if not page:
                return
            after = page[-1]["seq"]
            yield from (ev for ev in page if _matches(ev, since, until, model_id))

    if format == "csv":

        def rows() -> Iterator[str]:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for ev in events():
                writer.writerow({**ev, "data": canonical_json(ev["data"])})
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
            yield buf.getvalue()

        return StreamingResponse(
            rows(), media_type="text/csv", headers={"Content-Disposition": "attachment; filename=audit.csv"}
        )
    return StreamingResponse(
        (json.dumps(ev, ensure_ascii=False) + "\n" for ev in events()), media_type="application/x-ndjson"
    )


@router.get("/v1/audit/verify", summary="Recompute the hash chain and name the first broken link")
def verify_audit(session: SessionDep, key: AuditReader) -> dict[str, Any]:
    return audit.verify_chain(session, key.tenant)


@router.get("/v1/audit/public-key", summary="The Ed25519 key that signs deletion certificates")
def get_public_key(request: Request, key: RequestReader) -> dict[str, str]:
    signer = request.app.state.signing_key
    return {"algorithm": "Ed25519", "public_key": public_key_b64(signer), "pem": public_key_pem(signer)}


@router.get(
    "/v1/deletion-requests/{request_id}/certificate",
    summary="A signed certificate for a completed deletion request",
    tags=["deletion requests"],
)
def get_certificate(
    request_id: str, request: Request, session: SessionDep, key: RequestReader
) -> dict[str, Any]:
    req = get_request(session, key.tenant, request_id)
    return sign_document(request.app.state.signing_key, certificates.build(session, req))
