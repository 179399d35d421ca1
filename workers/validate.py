"""Validating a registered model: build the architecture, load the uploaded weights strictly, and measure
v1 on its own data. Only then does the model accept deletion requests."""

from __future__ import annotations

import logging
from typing import Any

import torch
from sqlalchemy import select

from models.architectures import build_model
from models.calibration import held_out
from models.checkpoints import load_weights
from models.datasets import SampleDataset
from models.inputs import InputMismatch, Role, check_model_reads
from models.metrics import evaluate
from service.core import events
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, Model, ModelVersion
from service.core.liveness import takeover_seconds
from service.core.settings import Settings
from service.core.states import ModelStatus
from workers import leases
from workers.datasets import DatasetRef, load_registered
from workers.device import resolve_device

log = logging.getLogger(__name__)


def v1_metrics(model: torch.nn.Module, train: SampleDataset, test: SampleDataset) -> dict[str, Any]:
    """A registered version's metrics, scored like every version: nothing is forgotten yet, so the
    forget set is empty and UA and MIA are None."""
    return dict(evaluate(model, forget=train.subset([]), retain=train, test=test))


def validate_model(settings: Settings, model_id: str) -> str:
    url = settings.resolved_database_url
    owner = leases.worker_identity()
    with session_scope(url) as s:  # the model's lease: duplicate validate tasks do the work once
        if not leases.acquire(
            s, model_id, owner, settings.lease_seconds, takeover_seconds(settings.heartbeat_seconds)
        ):
            return "busy"
    try:
        return _validate(settings, model_id)
    finally:
        with session_scope(url) as s:
            leases.release(s, model_id, owner)


def _validate(settings: Settings, model_id: str) -> str:
    url = settings.resolved_database_url
    with session_scope(url) as s:
        m = s.get(Model, model_id)
        if m is None or m.status != ModelStatus.VALIDATING:
            return "nothing to do"
        v1 = s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 1))
        assert v1 is not None
        arch, kwargs, k = m.architecture, dict(m.arch_kwargs), m.num_classes
        train = s.get_one(Dataset, m.train_dataset_id)
        test = s.get_one(Dataset, m.test_dataset_id)
        heldout = s.get(Dataset, m.heldout_dataset_id) if m.heldout_dataset_id else None
        sources = [DatasetRef.of(d) for d in (train, test)]
        names = [d.name for d in (train, test)]
        heldout_source = (DatasetRef.of(heldout), heldout.name) if heldout else None
        uri, sha256 = v1.checkpoint_uri, v1.sha256
    try:
        device = resolve_device(settings.device)
        model = build_model(arch, **{"num_classes": k, **kwargs})
        load_weights(model, uri, sha256=sha256, device=device)
        model.to(device)
        train_ds, test_ds = (load_registered(src) for src in sources)
        # Samples the model cannot read fail here, explained (what it expects, what the data holds, the
        # declaration that fixes it), not with the framework's message from inside the first layer.
        check_model_reads(
            model,
            arch,
            kwargs,
            [Role("training set", names[0], train_ds), Role("test set", names[1], test_ds)],
        )
        heldout_ds = None
        if heldout_source is not None:
            heldout_ds = load_registered(heldout_source[0])
            check_model_reads(model, arch, kwargs, [Role("held-out set", heldout_source[1], heldout_ds)])
        # Scored on what every job scores on: the part of the held-out data no method reads.
        metrics = v1_metrics(model, train_ds, held_out(test_ds, heldout_ds).scoring)
        status, detail = ModelStatus.READY, None
    except InputMismatch as exc:  # already in the registrant's words
        status, detail, metrics = ModelStatus.INVALID, str(exc), {}
    except Exception as exc:  # noqa: BLE001 - a bad upload is the registrant's problem, reported back
        status, detail, metrics = ModelStatus.INVALID, f"{type(exc).__name__}: {exc}", {}
    with session_scope(url) as s:
        m = s.get_one(Model, model_id)
        m.status, m.status_detail = status, detail
        v1 = s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 1))
        assert v1 is not None
        v1.metrics = metrics
        events.model_validated(s, m, detail=detail, metrics=metrics)
    log.info("model %s validated: %s %s", model_id, status, detail or "")
    return status
