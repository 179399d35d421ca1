"""Test-data factories: a registered model with N samples, API keys. Written through the service's own
registry functions, so they exercise the same code paths as real registrations."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from service.core.db.tables import Model
from service.core.keys import create_key
from service.core.registry import register_dataset, register_model


def make_model(
    session: Session, *, tenant: str = "default", name: str = "toy", n_train: int = 50, n_test: int = 10
) -> Model:
    """A model whose training set has IDs `{name}-0000`.. (no checkpoint file: API-only tests)."""
    train = register_dataset(
        session,
        tenant=tenant,
        name=f"{name}-train",
        kind="npz",
        uri=f"/nonexistent/{name}-train.npz",
        sample_ids=[f"{name}-{i:04d}" for i in range(n_train)],
        labels=[i % 10 for i in range(n_train)],
        actor="test",
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
