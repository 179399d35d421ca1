from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import AuditReader, RequestReader, SessionDep
from service.api.errors import KEYED, problems
from service.api.schemas.common import IsoTime
from service.core import audit, certificates, transparency
from service.core.canonical import canonical_json
from service.core.errors import Unprocessable
from service.core.lookups import get_model, get_request
from service.core.signing import public_key_b64, public_key_pem, sign_document

router = APIRouter(tags=["audit"], responses=problems(*KEYED))

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
    "leaf_hash",
]


# Characters a JSON string may hold raw that many line readers (Python's str.splitlines, JavaScript
# before ES2019) take for line ends: escaped, so each event is one line to every reader.
_LINE_ENDS = {ord("\u0085"): "\\u0085", ord("\u2028"): "\\u2028", ord("\u2029"): "\\u2029"}


def jsonl_line(event: dict[str, Any]) -> str:
    """One event of a JSONL export: its JSON, readable text kept, line-end characters escaped (a
    reference holding U+2028 broke every later offline check of the tenant's log, a probe)."""
    return json.dumps(event, ensure_ascii=False).translate(_LINE_ENDS) + "\n"


def _matches(
    ev: dict[str, Any], since: datetime | None, until: datetime | None, model_id: str | None
) -> bool:
    ts = datetime.fromisoformat(ev["ts"])
    return (
        (since is None or ts >= since)
        and (until is None or ts < until)
        and (model_id is None or ev["model_id"] == model_id)
    )


@router.get(
    "/v1/audit/export",
    summary="Stream the tenant's audit log (JSON lines or CSV)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One event per line, in log order",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
def export_audit(
    request: Request,
    session: SessionDep,
    key: AuditReader,
    format: Literal["jsonl", "csv"] = Query("jsonl"),
    since: IsoTime | None = None,
    until: IsoTime | None = None,
    model: str | None = None,
) -> StreamingResponse:
    """Streams: events are read in batches as the response is written, never held in memory all at once.
    Filters select events but never alter them: each exported event still carries its own `prev_hash`
    and `hash`, so a filtered export can be checked against a full one."""
    model_id = get_model(session, key.tenant, model).id if model is not None else None
    if any(b is not None and b.tzinfo is None for b in (since, until)):
        raise Unprocessable("`since` and `until` need a timezone, e.g. 2026-01-01T00:00:00Z")
    if since is not None and until is not None and until <= since:
        raise Unprocessable(f"`until` ({until.isoformat()}) must be after `since` ({since.isoformat()})")
    _sequence_and_sign(request, session, key.tenant)  # the export holds every event committed before it
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
    return StreamingResponse((jsonl_line(ev) for ev in events()), media_type="application/x-ndjson")


@router.get(
    "/v1/audit/verify", summary="Recompute the chain, the leaves and the tree; name the first broken event"
)
def verify_audit(request: Request, session: SessionDep, key: AuditReader) -> dict[str, Any]:
    """Checks the stored log against itself and against the latest signed head. A client that kept a
    head of its own checks it without trusting this answer: `unlearn audit verify --head FILE`.

    The sequenced events are checked before new ones are sequenced and a head is signed over them: a
    probe's event whose seq was cleared was sequenced again at the end, and a new head signed over the
    broken chain. Rows that cannot be read back (data that is not JSON, a missing tree node) are a failed
    check saying so, not a 500."""
    tenant, signer = key.tenant, request.app.state.signing_key

    def checked(after_head: int = 0) -> dict[str, Any]:
        report = audit.verify_chain(session, tenant, transparency.latest_head(session, tenant))
        if report["ok"]:
            problem = transparency.stored_tree_problem(
                session, tenant, report["events"], report["root_hash"], signer, after_head
            )
            if problem is not None:
                report |= {"ok": False, "detail": problem}
        return report

    try:
        report = checked()  # all of it before a head is signed over it (a review: one was, over a bad tree)
        seen = transparency.latest_head_id(session, tenant)
        if report["ok"] and _sequence_and_sign(request, session, tenant):
            report = checked(seen)  # the heads checked above are not checked again
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        session.rollback()
        return {"ok": False, "detail": f"the stored log cannot be read back: {type(exc).__name__}: {exc}"}
    return report


def _sequence_and_sign(request: Request, session: SessionDep, tenant: str) -> bool:
    """Sequence what is committed and, where that sequenced anything, sign a head over it. The workers
    sign heads only for tenants with events left unsequenced: a tenant whose events an export or a verify
    had sequenced kept a head behind its log until it wrote again (a probe's stayed at 6 of 101 events)."""
    sequenced = audit.sequence_all(session, tenant)
    head = transparency.latest_head(session, tenant)
    signs = bool(sequenced) or (
        head is not None and head["tree_head"]["tree_size"] < audit.tree_size(session, tenant)
    )
    if signs:
        transparency.sign_head(session, request.app.state.signing_key, tenant)  # a stale one is caught up too
    session.commit()
    return signs


@router.get("/v1/audit/head", summary="The latest signed tree head of the tenant's audit log")
def get_tree_head(
    request: Request,
    session: SessionDep,
    key: RequestReader,
    fresh: Annotated[
        bool, Query(description="sequence what is committed and sign a head over it where none covers it")
    ] = False,
) -> dict[str, Any]:
    """Heads are signed periodically by the workers and on demand here; keep one, and any later change
    to the events it covers is detectable (`GET /v1/audit/proof/consistency`). A fresh head is signed only
    where the latest does not cover every event: each call stored one, for any key (a probe's 50)."""
    if fresh:
        _sequence_and_sign(request, session, key.tenant)
    head = transparency.latest_head(session, key.tenant)
    if head is None:
        head = transparency.sign_head(session, request.app.state.signing_key, key.tenant)
        session.commit()
    return head


@router.get("/v1/audit/proof/inclusion", summary="Proof that event `seq` is in the tree of `tree_size`")
def get_inclusion_proof(
    session: SessionDep,
    key: RequestReader,
    seq: Annotated[int, Query(ge=1, lt=2**31)],
    tree_size: Annotated[int, Query(ge=1, lt=2**31)],
) -> dict[str, Any]:
    return transparency.inclusion_proof(session, key.tenant, seq, tree_size)


@router.get("/v1/audit/proof/consistency", summary="Proof that the tree of `second` extends that of `first`")
def get_consistency_proof(
    session: SessionDep,
    key: RequestReader,
    first: Annotated[int, Query(ge=1, lt=2**31)],
    second: Annotated[int, Query(ge=1, lt=2**31)],
) -> dict[str, Any]:
    return transparency.consistency_proof(session, key.tenant, first, second)


@router.get("/v1/audit/public-key", summary="The Ed25519 key that signs deletion certificates and tree heads")
def get_public_key(request: Request, key: RequestReader) -> dict[str, str]:
    signer = request.app.state.signing_key
    return {"algorithm": "Ed25519", "public_key": public_key_b64(signer), "pem": public_key_pem(signer)}


@router.get(
    "/v1/deletion-requests/{request_id}/certificate",
    summary="A signed certificate for a completed deletion request, with its audit inclusion proof",
    tags=["deletion requests"],
)
def get_certificate(
    request_id: str, request: Request, session: SessionDep, key: RequestReader
) -> dict[str, Any]:
    req = get_request(session, key.tenant, request_id)
    document = certificates.build(session, req, request.app.state.signing_key)
    session.commit()  # a head signed for it is kept
    return sign_document(request.app.state.signing_key, document)
