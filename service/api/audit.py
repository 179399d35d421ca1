from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from service import audit
from service.deps import AuditReader, SessionDep

router = APIRouter(tags=["audit"])


@router.get("/v1/audit/export", summary="Stream the tenant's hash-chained audit trail")
def export_audit(
    session: SessionDep, key: AuditReader, format: Literal["jsonl"] = Query("jsonl")
) -> StreamingResponse:
    # Materialise inside the request's session; rows stream out as JSON lines.
    events = [audit.export_dict(ev) for ev in audit.iter_events(session, key.tenant)]

    def lines() -> Iterator[str]:
        for ev in events:
            yield json.dumps(ev, ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/v1/audit/verify", summary="Recompute the hash chain and name the first broken link")
def verify_audit(session: SessionDep, key: AuditReader) -> dict[str, Any]:
    return audit.verify_chain(session, key.tenant)
