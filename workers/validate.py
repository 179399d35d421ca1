"""Validating a registered model: size it on the meta device (nothing allocated), build it, load the
uploaded weights strictly, check its features/head contract on training samples, and measure v1 on its
own data. Only then does the model accept deletion requests.

A worker that dies while validating (killed for memory) leaves its `model.validation_started` event behind;
after `MAX_ATTEMPTS` of them the model is `invalid` instead of validated, and killed, forever."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import batches
from models.adapters import check_contract
from models.architectures import build_model, check_size
from models.calibration import HeldOut, held_out
from models.checkpoints import load_weights
from models.datasets import SampleDataset
from models.inputs import InputMismatch, Role, check_every_row_reads, check_model_reads
from models.metrics import SetScores, evaluate, score_set
from service.core import events
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, Model, ModelVersion
from service.core.liveness import takeover_seconds
from service.core.settings import Settings
from service.core.states import ModelStatus
from workers import failpoints, front_cache, kept_rows, kept_scores, leases
from workers.claims import MAX_ATTEMPTS, validation_attempts
from workers.datasets import DatasetRef, load_registered
from workers.device import cpu_threads, precision, resolve_device
from workers.runner import train_share, without_server_paths

log = logging.getLogger(__name__)
Scorer = Callable[[SampleDataset], SetScores]


def v1_metrics(
    model: torch.nn.Module,
    train: SampleDataset,
    test: SampleDataset,
    train_scores: Scorer | None = None,
    test_scores: Scorer | None = None,
) -> tuple[dict[str, Any], SetScores]:
    """A registered version's metrics, scored like every version: nothing is forgotten yet, so the
    forget set is empty and UA and MIA are None; and its scores on ``test``, which the first job reads
    back as its base's (``keep_v1_scores``). ``train_scores``/``test_scores``: how rows of each set are
    scored where the caller keeps the front's outputs (``workers.front_cache``)."""
    scores = (test_scores or functools.partial(score_set, model))(test)
    metrics = evaluate(
        model,
        forget=train.subset([]),
        retain=train,
        test=test,
        test_scores=scores,
        train_scores=train_scores,
    )
    return dict(metrics), scores


def keep_v1_scores(
    settings: Settings,
    model_id: str,
    uri: str,
    test: DatasetRef,
    parts: HeldOut,
    scores: SetScores,
    device: torch.device,
) -> dict[str, str]:
    """Keep v1's scores on the scoring part as a publish keeps a version's (``workers.kept_scores``):
    the model's first job reads them instead of scoring its base's test pass again (on the 60k
    Fashion-MNIST model one pass over 4,934 rows: 0.1-0.4 s). The entry for v1's metrics, or none if they
    could not be written (the first job then scores its base, as before)."""
    key = kept_scores.scoring_key(test, parts, device)
    sha256 = kept_scores.write(kept_scores.path_for(settings.checkpoint_dir, model_id, uri, key), scores)
    return {kept_scores.RECORD_KEY: sha256} if sha256 is not None else {}


def front_scores(
    settings: Settings, model: torch.nn.Module, share: float, sources: list[DatasetRef]
) -> dict[str, Scorer | None]:
    """v1's scorers of the training and test sets through this process's kept front outputs."""
    cache = front_cache.feature_cache(settings)
    train, test = front_cache.scorers(model, share, cache, *(front_cache.source(ref) for ref in sources))
    return {"train_scores": train, "test_scores": test}


def warm_front(
    settings: Settings,
    model: torch.nn.Module,
    share: float,
    train: SampleDataset,
    ref: DatasetRef,
    device: torch.device,
) -> None:
    """Pass every training row through the front that the model's default run trains behind, and keep
    the outputs in this process (``workers.front_cache``). Why: a model's first deletion otherwise pays
    that pass itself (on the 60k Fashion-MNIST model, more than half of its run); done here it is paid
    once, at registration, and the first job on this worker reads its rows back as later jobs do. Run
    after the model is ready and its lease released, so it delays no job; skipped where the rows would
    not fit the cache (``front_cache.keep``). Best effort: a failure is logged, nothing else."""
    cache = front_cache.feature_cache(settings)
    try:
        with precision(settings.precision, device):  # the context a job's run computes its rows in
            front_cache.keep(model, share, cache, front_cache.source(ref), train)
    except Exception:  # noqa: BLE001 - memory for a cache is not a reason to refuse a model
        log.warning("model front outputs not kept at validation", exc_info=True)


_SHORT_OF = {errno.ENOMEM, errno.ENOSPC, errno.EIO, errno.EMFILE, errno.ENFILE, errno.EDQUOT}


def worker_short_of(exc: BaseException) -> bool:
    """Whether a validation failed for want of the worker's memory or disk, not for the model: a probe's
    17M-parameter MLP under a 4 GB address-space limit was made invalid for good ("MemoryError: Cannot
    allocate memory"), and validated at 4.45 GB. Such a failure is retried, as a worker's death is, up to
    the same attempts."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError) and ("DefaultCPUAllocator" in str(exc) or "out of memory" in str(exc)):
        return True
    return isinstance(exc, OSError) and exc.errno in _SHORT_OF


def validate_model(settings: Settings, model_id: str) -> str:
    url = settings.resolved_database_url
    owner = leases.worker_identity()
    with session_scope(url) as s:  # the model's lease: duplicate validate tasks do the work once
        if not leases.acquire(
            s, model_id, owner, settings.lease_seconds, takeover_seconds(settings.heartbeat_seconds)
        ):
            return "busy"
    after: list[Callable[[], None]] = []
    try:
        with leases.kept(url, model_id, owner, settings.lease_seconds, settings.heartbeat_seconds):
            return _validate(settings, model_id, owner, after)
    finally:
        with session_scope(url) as s:
            leases.release(s, model_id, owner)
        for then in after:  # the model is ready and free: a job may start on another worker meanwhile
            then()


def _finish(s: Session, m: Model, status: str, detail: str | None, metrics: dict[str, Any]) -> None:
    m.status, m.status_detail = status, detail
    v1 = s.scalar(select(ModelVersion).where(ModelVersion.model_id == m.id, ModelVersion.number == 1))
    assert v1 is not None
    v1.metrics = metrics
    events.model_validated(s, m, detail=detail, metrics=metrics)
    log.info("model %s validated: %s %s", m.id, status, detail or "")


def _validate(settings: Settings, model_id: str, owner: str, after: list[Callable[[], None]]) -> str:
    """Validate, and leave in ``after`` what this worker does once the model is ready and its lease
    released (keep the front's outputs: ``warm_front``)."""
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
        default_run = (m.default_method, dict(m.default_params), dict(m.train_recipe))
    failpoints.hit("validate.started")
    detail: str | None = None
    recorded = kept_rows.Recorder()
    try:
        check_size(arch, kwargs, settings.max_params)  # on the meta device: refused before any allocation
        device = resolve_device(settings.device)
        cpu_threads(settings.torch_threads)
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
        share = train_share(*default_run)  # the front a job at the model's defaults reads rows through
        # Scored on what every job scores on: the part of the held-out data no method reads.
        parts = held_out(test_ds, heldout_ds)
        calibrates = heldout_source[1] if heldout_source else names[1]
        role = "held-out set" if heldout_source else "calibration half of the test set"
        check_every_row_reads(Role(role, calibrates, parts.calibration))
        scorers = front_scores(settings, model, share, sources)
        # v1's training-row scores, kept for its first job's base in this process (``kept_rows``)
        scorers["train_scores"] = recorded.through(
            scorers["train_scores"] or functools.partial(score_set, model)
        )
        metrics, scores = v1_metrics(model, train_ds, parts.scoring, **scorers)
        metrics |= keep_v1_scores(settings, model_id, uri, sources[1], parts, scores, device)
        status = ModelStatus.READY
    except InputMismatch as exc:  # already in the registrant's words
        status, detail, metrics = ModelStatus.INVALID, str(exc), {}
    except Exception as exc:  # noqa: BLE001 - a bad upload is the registrant's problem, reported back
        if worker_short_of(exc):
            raise  # the lease goes back and the model stays validating: tried again, counted as an attempt
        log.warning("model %s is invalid", model_id, exc_info=exc)  # the whole story, for the operator
        said = without_server_paths(f"{type(exc).__name__}: {exc}", settings)
        status, detail, metrics = ModelStatus.INVALID, said, {}
    with session_scope(url) as s:
        m = s.get_one(Model, model_id)
        if m.status != ModelStatus.VALIDATING or m.lease_owner != owner:
            log.warning("model %s: lease lost while validating; another worker decides", model_id)
            return "lease lost"
        _finish(s, m, status, detail, metrics)
    if status == ModelStatus.READY:
        kept_rows.keep((uri, sha256), front_cache.source(sources[0]), device, recorded)
        after.append(functools.partial(warm_front, settings, model, share, train_ds, sources[0], device))
    return status
