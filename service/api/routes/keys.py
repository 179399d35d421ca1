from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlalchemy import select

from service.api.deps import Admin, AnyKey, SessionDep
from service.api.errors import KEYED, problems
from service.api.schemas.keys import KeyCreate, KeyOut
from service.core import events
from service.core.db.tables import ApiKey
from service.core.errors import Forbidden, NotFound
from service.core.keys import create_key, refuse_revoking_the_last_admin, revoke_key

router = APIRouter(tags=["keys"], responses=problems(*KEYED))


def key_out(k: ApiKey, plaintext: str | None = None) -> KeyOut:
    return KeyOut(
        id=k.id,
        tenant=k.tenant,
        name=k.name,
        prefix=k.prefix,
        scopes=k.scopes,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
        key=plaintext,
    )


@router.post("/v1/keys", response_model=KeyOut, status_code=status.HTTP_201_CREATED)
def create_key_route(body: KeyCreate, session: SessionDep, caller: Admin) -> KeyOut:
    """Admins create keys for their own tenant. (Keys for other tenants: `unlearn keys create`.)"""
    tenant = body.tenant or caller.tenant
    if tenant != caller.tenant:  # whether that tenant exists or not: the answer tells nothing about it
        raise Forbidden(
            f"an admin key can only create keys in its own tenant ({caller.tenant!r}), not in {tenant!r}; "
            "use an admin key of that tenant, or `unlearn keys create --tenant` on the server"
        )
    key, plaintext = create_key(session, tenant=tenant, scopes=body.scopes, name=body.name)
    events.key_created(session, key, actor=events.key_actor(caller))
    session.commit()
    return key_out(key, plaintext)


@router.get("/v1/keys/me", response_model=KeyOut, summary="The calling key: its tenant and scopes")
def who_am_i(caller: AnyKey) -> KeyOut:
    """Lets a dashboard or script learn what it may do without probing endpoints."""
    return key_out(caller)


@router.get("/v1/keys", response_model=list[KeyOut])
def list_keys(session: SessionDep, caller: Admin) -> list[KeyOut]:
    rows = session.scalars(select(ApiKey).where(ApiKey.tenant == caller.tenant).order_by(ApiKey.created_at))
    return [key_out(k) for k in rows]


@router.post("/v1/keys/{key_id}/revoke", response_model=KeyOut)
def revoke_key_route(key_id: str, request: Request, session: SessionDep, caller: Admin) -> KeyOut:
    """Takes effect at once in this process, and within UNLEARN_KEY_CACHE_SECONDS in the others."""
    key = session.get(ApiKey, key_id)
    if key is None or key.tenant != caller.tenant:
        raise NotFound(f"API key {key_id!r} not found")
    refuse_revoking_the_last_admin(session, key)
    if key.revoked_at is None:  # a second revoke answers the same and is no second event (a probe)
        revoke_key(session, key_id)
        events.key_revoked(session, key, actor=events.key_actor(caller))
    session.commit()
    request.app.state.key_cache.evict(key.key_hash)
    return key_out(key)
