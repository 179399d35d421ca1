"""Running one job: load the base version, unlearn, evaluate, gate, publish. The database is touched only
in short transactions at the boundaries; the long computation holds no transaction open."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from sqlalchemy import select

from models.architectures import build_model
from models.datasets import SampleDataset, load_dataset
from models.hooks import Cancelled, Hooks
from models.metrics import accuracy, evaluate
from models.unlearning import run_method
from models.unlearning.params import params_class, params_to_dict, parse_params
from service.core import audit
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, DeletionRequest, ForgottenSample, Job, Model, ModelVersion, utcnow
from service.core.settings import Settings
from workers import claims, gates
from workers.progress import JobCancelled, LeaseLost, Reporter
from workers.storage import version_path, write_checkpoint


def load_weights(model: torch.nn.Module, path: str, device: torch.device) -> None:
    """Load safetensors weights into a model built from the registry (strict: every tensor must match).
    Never unpickles."""
    missing, unexpected = safetensors.torch.load_model(model, path, strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def precision(setting: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast for the unlearning loop (weights and optimiser state stay fp32, so no loss scaling
    is needed); metrics are always computed in fp32."""
    if setting == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass
class JobContext:
    """Everything a job needs, read in one transaction."""

    job_id: str
    model_id: str
    tenant: str
    architecture: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    train: tuple[str, str]
    test: tuple[str, str]
    base_version: int
    base_uri: str
    method: str
    params: dict[str, Any]
    gates: dict[str, Any]
    fallback_methods: list[str]
    train_recipe: dict[str, Any]
    claimed_ids: list[str]
    forgotten: set[str]


def load_context(url: str, job_id: str) -> JobContext:
    with session_scope(url) as s:
        job = s.get_one(Job, job_id)
        model = s.get_one(Model, job.model_id)
        base = s.scalar(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id, ModelVersion.number == model.latest_version
            )
        )
        assert base is not None
        train, test = s.get_one(Dataset, model.train_dataset_id), s.get_one(Dataset, model.test_dataset_id)
        requests = s.scalars(select(DeletionRequest).where(DeletionRequest.job_id == job.id)).all()
        claimed = list(dict.fromkeys(i for r in requests for i in r.sample_ids))
        forgotten = set(
            s.scalars(select(ForgottenSample.sample_id).where(ForgottenSample.model_id == model.id))
        )
        # A resumed job restarts from the latest published version.
        job.base_version, job.started_at, job.heartbeat_at = model.latest_version, utcnow(), utcnow()
        return JobContext(
            job_id=job.id,
            model_id=model.id,
            tenant=model.tenant,
            architecture=model.architecture,
            arch_kwargs=dict(model.arch_kwargs),
            num_classes=model.num_classes,
            train=(train.kind, train.uri),
            test=(test.kind, test.uri),
            base_version=model.latest_version,
            base_uri=base.checkpoint_uri,
            method=model.default_method,  # a resumed job starts its method chain over
            params=dict(model.default_params),
            gates=dict(model.gates),
            fallback_methods=list(model.fallback_methods),
            train_recipe=dict(model.train_recipe),
            claimed_ids=claimed,
            forgotten=forgotten,
        )


def split(
    train: SampleDataset, new_ids: list[str], forgotten: set[str]
) -> tuple[SampleDataset, SampleDataset]:
    """D_f = the newly forgotten samples; D_r = the training set minus everything forgotten so far."""
    forget_idx = train.index_of(new_ids)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[forget_idx] = False
    if forgotten:
        keep[train.index_of(sorted(forgotten))] = False
    return train.subset(forget_idx), train.subset(torch.nonzero(keep).flatten())


def test_without_forgotten_classes(
    train: SampleDataset, test: SampleDataset, retain: SampleDataset
) -> tuple[SampleDataset, SampleDataset | None]:
    """Class-wise forgetting: when every training sample of a class is forgotten, a retrained model could
    never predict that class, so test accuracy is measured without it (and the forgotten classes' test
    accuracy is reported on its own). Returns (test set to score, forgotten classes' test samples)."""
    gone = torch.tensor(sorted(set(train.y.tolist()) - set(retain.y.tolist())), dtype=torch.long)
    if len(gone) == 0:
        return test, None
    is_gone = torch.isin(test.y, gone)
    return test.subset(torch.nonzero(~is_gone).flatten()), test.subset(torch.nonzero(is_gone).flatten())


def measure(
    model: torch.nn.Module,
    forget: SampleDataset,
    retain: SampleDataset,
    test: SampleDataset,
    removed: SampleDataset | None,
) -> dict[str, Any]:
    metrics: dict[str, Any] = dict(evaluate(model, forget=forget, retain=retain, test=test))
    if removed is not None:
        metrics["forgotten_class_test_accuracy"] = accuracy(model, removed) if len(removed) else None
        metrics["forgotten_class_test_count"] = len(removed)
    return metrics


def run_job(settings: Settings, job_id: str, owner: str) -> None:
    url = settings.resolved_database_url
    try:
        ctx = load_context(url, job_id)
    except Exception as exc:  # noqa: BLE001 - a job that cannot even start is failed, not retried forever
        close_job(url, job_id, owner, "failed", error=f"{type(exc).__name__}: {exc}")
        return
    rep = Reporter(
        url, job_id, ctx.model_id, owner, lease_s=settings.lease_seconds, interval=settings.heartbeat_seconds
    )
    try:
        with rep:
            _run(settings, ctx, rep, owner)
    except LeaseLost:
        raise  # another worker owns the model now; it will resume this job
    except (Cancelled, JobCancelled):
        close_job(url, job_id, owner, "cancelled", error="cancelled by an admin")
    except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never lost
        close_job(url, job_id, owner, "failed", error=f"{type(exc).__name__}: {exc}")


def close_job(
    url: str,
    job_id: str,
    owner: str,
    state: str,
    *,
    error: str | None = None,
    result_version: int | None = None,
) -> None:
    """End a job and its requests, but only while we still own it: a worker whose lease lapsed must never
    overwrite what the worker that took over has done (fenced by the lease, under the model-row lock)."""
    try:
        with session_scope(url) as s:
            job = claims.fenced_job(s, job_id, owner)
            claims.finish_job(
                s, job, state=state, request_state=state, error=error, result_version=result_version
            )
    except claims.NotOurs:
        raise LeaseLost(f"job {job_id} is no longer ours; leaving it to its owner") from None


def _run(settings: Settings, ctx: JobContext, rep: Reporter, owner: str) -> None:
    url = settings.resolved_database_url
    device = resolve_device(settings.device)
    new_ids = [i for i in ctx.claimed_ids if i not in ctx.forgotten]
    if not new_ids:  # every ID was already forgotten: complete as a no-op on the current version
        close_job(url, ctx.job_id, owner, "completed", result_version=ctx.base_version)
        return

    rep.phase("load", 0.0, 0.05)
    train, test = load_dataset(*ctx.train), load_dataset(*ctx.test)
    base_model = build_model(ctx.architecture, **{"num_classes": ctx.num_classes, **ctx.arch_kwargs}).to(
        device
    )
    load_weights(base_model, ctx.base_uri, device)
    forget, retain = split(train, new_ids, ctx.forgotten)
    test, removed = test_without_forgotten_classes(train, test, retain)
    rep.phase("evaluate_base", 0.05, 0.1)
    base_metrics = measure(base_model, forget, retain, test, removed)

    chain = [(ctx.method, ctx.params), *((m, {}) for m in ctx.fallback_methods)]
    attempts: list[dict[str, Any]] = []
    span = 0.85 / len(chain)
    for i, (method, raw_params) in enumerate(chain):
        lo = 0.1 + i * span
        params = parse_params(method, with_recipe(method, raw_params, ctx.train_recipe))
        rep.phase(f"unlearn:{method}", lo, lo + 0.8 * span)
        hooks = Hooks(progress=rep.report, should_cancel=rep.cancelled)
        started = time.perf_counter()
        with precision(settings.precision, device):
            model = run_method(method, copy.deepcopy(base_model), forget, retain, params, hooks, heldout=test)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runtime = time.perf_counter() - started
        rep.phase(f"evaluate:{method}", lo + 0.8 * span, lo + span)
        metrics = {**measure(model, forget, retain, test, removed), "runtime_s": runtime}
        failures = gates.check(ctx.gates, base_metrics, metrics)
        attempts.append(
            {
                "method": method,
                "params": params_to_dict(params),
                "metrics": metrics,
                "gate_failures": failures,
                "passed": not failures,
            }
        )
        record_attempt(
            url, ctx.job_id, owner, method, params_to_dict(params), base_metrics, metrics, attempts
        )
        if not failures:
            rep.phase("publish", 0.95, 1.0)
            publish(settings, ctx, model, new_ids, metrics, rep, method, params_to_dict(params))
            return
    reasons = "; ".join(f"{a['method']}: {', '.join(a['gate_failures'])}" for a in attempts)
    close_job(url, ctx.job_id, owner, "failed", error=f"every method failed its gates ({reasons})")


def with_recipe(method: str, params: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Exact retrain uses the model's registered training recipe unless the params override it."""
    if method != "retrain" or not recipe:
        return params
    fields = {f.name for f in dataclasses.fields(params_class(method))}
    return {**{k: v for k, v in recipe.items() if k in fields}, **params}


def record_attempt(
    url: str,
    job_id: str,
    owner: str,
    method: str,
    params: dict[str, Any],
    base: dict[str, Any],
    result: dict[str, Any],
    attempts: list[dict[str, Any]],
) -> None:
    try:
        with session_scope(url) as s:
            job = claims.fenced_job(s, job_id, owner)
            job.method, job.params = method, params
            job.metrics = {"base": base, "result": result, "attempts": attempts}
    except claims.NotOurs as exc:
        raise LeaseLost(str(exc)) from None


def publish(
    settings: Settings,
    ctx: JobContext,
    model: torch.nn.Module,
    new_ids: list[str],
    metrics: dict[str, Any],
    rep: Reporter,
    method: str,
    params: dict[str, Any],
) -> None:
    """Write the checkpoint, then record the version, the forgotten IDs, the job and its requests in one
    transaction. A crash before the commit leaves at most an orphan file, never a half version."""
    url = settings.resolved_database_url
    number = ctx.base_version + 1
    final: Path = version_path(settings.checkpoint_dir, ctx.model_id, number, ctx.job_id)
    digest = write_checkpoint(
        model.cpu(),
        final,
        architecture=ctx.architecture,
        kwargs=ctx.arch_kwargs,
        num_classes=ctx.num_classes,
        extra={"version": number, "job_id": ctx.job_id},
    )
    try:
        rep.flush()  # proves we still hold the lease right before committing
        _commit_version(
            url,
            ctx,
            final,
            digest,
            number,
            new_ids,
            metrics,
            rep.owner,
            rep.finished_timings(),
            method,
            params,
        )
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def _commit_version(
    url: str,
    ctx: JobContext,
    final: Path,
    digest: str,
    number: int,
    new_ids: list[str],
    metrics: dict[str, Any],
    owner: str,
    timings: dict[str, float],
    method: str,
    params: dict[str, Any],
) -> None:
    with session_scope(url) as s:
        try:
            job = claims.fenced_job(s, ctx.job_id, owner)
        except claims.NotOurs as exc:
            raise LeaseLost(f"{exc}; not publishing") from None
        m = s.get_one(Model, ctx.model_id)
        if m.latest_version != ctx.base_version:
            raise LeaseLost("the model moved on while this job ran; not publishing")
        job.metrics = {**job.metrics, "timings": timings}
        if job.cancel_requested:  # authoritative: a cancel that lands any time before this commit wins
            raise Cancelled("cancelled before publishing")
        total = len(ctx.forgotten) + len(new_ids)
        s.add(
            ModelVersion(
                model_id=m.id,
                number=number,
                parent_number=ctx.base_version,
                checkpoint_uri=str(final),
                sha256=digest,
                forgotten_count=total,
                metrics=metrics,
                job_id=ctx.job_id,
            )
        )
        s.add_all(ForgottenSample(model_id=m.id, sample_id=i, version_number=number) for i in new_ids)
        m.latest_version = number
        audit.record(
            s,
            tenant=ctx.tenant,
            actor=claims.ACTOR,
            action="model_version.published",
            entity_type="model_version",
            entity_id=f"{m.name}/v{number}",
            model_id=m.id,
            data={
                "version": f"v{number}",
                "parent": f"v{ctx.base_version}",
                "checkpoint_sha256": digest,
                "forgotten_count": total,
                "method": method,
                "params": params,
                "metrics": metrics,
            },
        )
        claims.finish_job(s, job, state="completed", request_state="completed", result_version=number)
