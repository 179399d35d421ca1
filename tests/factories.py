"""Test-data factories: a registered model with N samples, API keys. Written through the service's own
registry functions, so they exercise the same code paths as real registrations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core import deletions
from service.core.audit import sequence_all, verify_chain
from service.core.db.tables import DeletionRequest, ForgottenSample, Model, ModelVersion
from service.core.keys import create_key
from service.core.registry import register_dataset, register_model


def make_model(
    session: Session,
    *,
    tenant: str = "default",
    name: str = "toy",
    n_train: int = 50,
    n_test: int = 10,
    subject_of: Callable[[int], str | None] | None = None,
    sample_id: Callable[[int], str] | None = None,
) -> Model:
    """A model whose training set has IDs `{name}-0000`.. or `sample_id(i)` (no checkpoint file:
    API-only tests). `subject_of(i)`, when given, is the data subject of training sample i (None for
    none)."""
    train = register_dataset(
        session,
        tenant=tenant,
        name=f"{name}-train",
        kind="npz",
        uri=f"/nonexistent/{name}-train.npz",
        sample_ids=[sample_id(i) if sample_id else f"{name}-{i:04d}" for i in range(n_train)],
        labels=[i % 10 for i in range(n_train)],
        actor="test",
        subject_ids=[subject_of(i) for i in range(n_train)] if subject_of else None,
    )
    test = register_dataset(
        session,
        tenant=tenant,
        name=f"{name}-test",
        kind="npz",
        uri=f"/nonexistent/{name}-test.npz",
        sample_ids=[f"{name}-test-{i:04d}" for i in range(n_test)],
        labels=[i % 10 for i in range(n_test)],
        actor="test",
    )
    return register_model(
        session,
        tenant=tenant,
        name=name,
        architecture="mlp",
        arch_kwargs={},
        num_classes=10,
        train=train,
        test=test,
        checkpoint_uri="/nonexistent/v1.safetensors",
        checkpoint_sha256=hashlib.sha256(name.encode()).hexdigest(),
        default_method="ugradsl_plus",
        default_params={},
        train_recipe={},
        gates={},
        metrics={},
        actor="test",
    )


def make_key(session: Session, *, tenant: str = "default", scopes: tuple[str, ...] = ("admin",)) -> str:
    return create_key(session, tenant=tenant, scopes=scopes)[1]


def submit_request(
    session: Session, model: Model, ids: list[str], *, callback_url: str | None = None
) -> DeletionRequest:
    """A deletion request through the domain's own intake (no HTTP); callbacks may go to hooks.example."""
    key, _ = create_key(session, tenant=model.tenant, scopes=["deletion:write"])
    return deletions.submit(
        session,
        model=model,
        key=key,
        sample_ids=ids,
        reference=None,
        max_ids=100,
        callback_url=callback_url,
        allowed_hosts=["hooks.example"],
    )


def verified_log(session: Session, tenant: str = "default") -> dict[str, Any]:
    """Events are sequenced after they are written: sequence them, then check the whole log."""
    sequence_all(session, tenant)
    return verify_chain(session, tenant)


def publish_version(session: Session, model: Model, ids: list[str], *, job_id: str | None = None) -> int:
    """Publish the version after `model`'s latest, forgetting `ids`, as a completed job leaves it: the
    forgotten rows and a new latest version with the cumulative count. Returns its number."""
    base = session.scalars(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.number == model.latest_version
        )
    ).one()
    number = model.latest_version + 1
    session.add(
        ModelVersion(
            model_id=model.id,
            number=number,
            parent_number=base.number,
            checkpoint_uri=f"/nonexistent/v{number}.safetensors",
            sha256=base.sha256,
            forgotten_count=base.forgotten_count + len(ids),
            job_id=job_id,
        )
    )
    session.add_all(ForgottenSample(model_id=model.id, sample_id=i, version_number=number) for i in ids)
    model.latest_version = number
    return number
