from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from service.db.tables import Model, ModelVersion
from service.deps import JobsReader, SessionDep
from service.lookups import get_model
from service.schemas.models import ModelOut, VersionOut
from service.views import model_out, version_out

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=list[ModelOut])
def list_models(session: SessionDep, key: JobsReader) -> list[ModelOut]:
    rows = session.scalars(select(Model).where(Model.tenant == key.tenant).order_by(Model.name)).all()
    return [model_out(session, m) for m in rows]


@router.get("/v1/models/{model}", response_model=ModelOut)
def get_model_route(model: str, session: SessionDep, key: JobsReader) -> ModelOut:
    return model_out(session, get_model(session, key.tenant, model))


@router.get("/v1/models/{model}/versions", response_model=list[VersionOut])
def list_versions(model: str, session: SessionDep, key: JobsReader) -> list[VersionOut]:
    m = get_model(session, key.tenant, model)
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == m.id).order_by(ModelVersion.number)
    ).all()
    return [version_out(v) for v in rows]
