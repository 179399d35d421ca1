"""Validating a registered model: size it on the meta device (nothing allocated), build it, load the
uploaded weights strictly, check its features/head contract on training samples, and measure v1 on its
own data. Only then does the model accept deletion requests.

A worker that dies while validating (killed for memory) leaves its `model.validation_started` event behind;
after `MAX_ATTEMPTS` of them the model is `invalid` instead of validated, and killed, forever."""

from __future__ import annotations

import logging
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import batches
from models.adapters import check_contract
from models.architectures import build_model, check_size
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
from workers import failpoints, leases
from workers.claims import MAX_ATTEMPTS, validation_attempts
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
        with leases.kept(url, model_id, owner, settings.lease_seconds, settings.heartbeat_seconds):
            return _validate(settings, model_id, owner)
    finally:
        with session_scope(url) as s:
            leases.release(s, model_id, owner)


def _finish(s: Session, m: Model, status: str, detail: str | None, metrics: dict[str, Any]) -> None:
    m.status, m.status_detail = status, detail
    v1 = s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 1))
    assert v1 is not None
    v1.metrics = metrics
    events.model_validated(s, m, detail=detail, metrics=metrics)
    log.info("model %s validated: %s %s", m.id, status, detail or "")


def _validate(settings: Settings, model_id: str, owner: str) -> str:
    url = settings.resolved_database_url
    with session_scope(url) as s:
        m = s.get(Model, model_id)
        if m is None or m.status != ModelStatus.VALIDATING:
            return "nothing to do"
        attempts = validation_attempts(s, m)
        if attempts >= MAX_ATTEMPTS:  # its worker died every time (e.g. killed for memory): stop trying
            gave_up = (
                f"gave up validating after {attempts} attempts: the worker died each time "
                "(e.g. killed for memory); register it again once that is fixed"
            )
            _finish(s, m, ModelStatus.INVALID, gave_up, {})
            return ModelStatus.INVALID
        events.model_validation_started(s, m, attempt=attempts + 1)
        v1 = s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 1))
        assert v1 is not None
        arch, kwargs = m.architecture, {"num_classes": m.num_classes, **m.arch_kwargs}
        train = s.get_one(Dataset, m.train_dataset_id)
        test = s.get_one(Dataset, m.test_dataset_id)
        heldout = s.get(Dataset, m.heldout_dataset_id) if m.heldout_dataset_id else None
        sources = [DatasetRef.of(d) for d in (train, test)]
        names = [d.name for d in (train, test)]
        heldout_source = (DatasetRef.of(heldout), heldout.name) if heldout else None
        uri, sha256 = v1.checkpoint_uri, v1.sha256
    failpoints.hit("validate.started")
    detail: str | None = None
    try:
        check_size(arch, kwargs, settings.max_params)  # on the meta device: refused before any allocation
        device = resolve_device(settings.device)
        model = build_model(arch, **kwargs)
        load_weights(model, uri, sha256=sha256, device=device)
        model.to(device)
        keep = settings.dataset_cache_bytes  # a job on this model in this process reads them back
        train_ds, test_ds = (load_registered(src, keep_bytes=keep) for src in sources)
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
            heldout_ds = load_registered(heldout_source[0], keep_bytes=keep)
            check_model_reads(model, arch, kwargs, [Role("held-out set", heldout_source[1], heldout_ds)])
        # features/head on the training set's own samples: the same inputs every job will feed it.
        check_contract(model, batches.to(batches.window(train_ds.x, 0, 2), device), kwargs["num_classes"])
        # Scored on what every job scores on: the part of the held-out data no method reads.
        metrics = v1_metrics(model, train_ds, held_out(test_ds, heldout_ds).scoring)
        status = ModelStatus.READY
    except InputMismatch as exc:  # already in the registrant's words
        status, detail, metrics = ModelStatus.INVALID, str(exc), {}
    except Exception as exc:  # noqa: BLE001 - a bad upload is the registrant's problem, reported back
        status, detail, metrics = ModelStatus.INVALID, f"{type(exc).__name__}: {exc}", {}
    with session_scope(url) as s:
        m = s.get_one(Model, model_id)
        if m.status != ModelStatus.VALIDATING or m.lease_owner != owner:
            log.warning("model %s: lease lost while validating; another worker decides", model_id)
            return "lease lost"
        _finish(s, m, status, detail, metrics)
    return status
