"""Validating a model registration without torch: its datasets, labels and methods, and that a stored
checkpoint really is a safetensors file (parsed by the safetensors library, never unpickled)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors import safe_open
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db.tables import Dataset, DatasetSample
from service.core.errors import Unprocessable


def require_finite(value: Any, where: str = "body") -> None:
    """NaN and Infinity are not JSON and PostgreSQL's JSON cannot store them: a 422, not a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Unprocessable(f"{where} holds a non-finite number ({value})")
    if isinstance(value, dict):
        for k, v in value.items():
            require_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            require_finite(v, f"{where}[{i}]")


def registered_dataset(session: Session, tenant: str, dataset_id: str) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None or ds.tenant != tenant:
        named = session.scalars(
            select(Dataset.id).where(Dataset.tenant == tenant, Dataset.name == dataset_id).limit(4)
        ).all()
        if named:  # the CLI takes names, so clients send one here: say which id it is
            ids = " or ".join(repr(i) for i in named)
            raise Unprocessable(f"{dataset_id!r} is a dataset's name; a model spec takes its id: {ids}")
        raise Unprocessable(f"dataset {dataset_id!r} is not registered (POST /v1/datasets first)")
    return ds


def check_labels(session: Session, dataset: Dataset, num_classes: int, role: str = "training") -> None:
    """Every label of `dataset` is a class index of the model: in [0, num_classes). A test or held-out
    label out of range passed registration and broke the worker instead (the model `invalid` with an
    index error, or `ready` with every deletion failing)."""
    low, top = session.execute(
        select(func.min(DatasetSample.label), func.max(DatasetSample.label)).where(
            DatasetSample.dataset_id == dataset.id
        )
    ).one()
    if top is not None and (top >= num_classes or low < 0):
        field = {"training": "train_dataset", "test": "test_dataset", "held-out": "heldout_dataset"}[role]
        msg = (
            f"{role} labels span [{low}, {top}] but num_classes is {num_classes}: every label must be in "
            f"[0, {num_classes}) ({field} {dataset.name!r}, id {dataset.id})"
        )
        raise Unprocessable(msg, errors=[{"loc": ["spec", field], "msg": msg, "type": "value_error"}])


def check_methods(
    default_method: str,
    default_params: dict[str, Any],
    fallback_methods: list[str],
    where: str = "spec",
    *,
    repeat: bool = True,
) -> None:
    """Every method of the chain exists and its params are within bounds (validated without torch); a 422
    names the field, as ``check_recipe``'s does. ``repeat``: also refuse a fallback that reruns the default
    method as it ran (a PATCH that changes none of the chain does not: a model registered before the check
    keeps taking other changes)."""
    from models.unlearning.params import METHOD_NAMES, parse_params  # torch-free by contract (tested)

    twice = sorted({m for m in fallback_methods if fallback_methods.count(m) > 1})
    if twice:  # the same method with the same defaults again: it fails the same way
        msg = f"fallback_methods names {twice} more than once"
        raise Unprocessable(msg, errors=[_error(where, "fallback_methods", msg)])
    chain = [
        ("default_method", default_method, default_params),
        *(("fallback_methods", m, {}) for m in fallback_methods),
    ]
    for field, method, params in chain:
        if field == "default_method" and method in METHOD_NAMES:
            field = "default_params"  # the method exists: what is wrong is in its params
        try:
            parse_params(method, params)
        except (KeyError, ValueError, TypeError) as exc:
            msg = str(exc).strip("'\"") if method not in METHOD_NAMES else f"method {method!r}: {exc}"
            raise Unprocessable(msg, errors=[_error(where, field, msg)]) from exc
    if repeat and default_method in fallback_methods and not default_params:
        # a fallback runs its method's defaults, as the default method does here: the same run again
        # (not where default_params name any key: one written out as its default, an lr or an optimizer,
        # changes what the model's recipe decides; a review)
        msg = (
            f"fallback_methods names the default method {default_method!r}, which runs the same params "
            "(its defaults) and fails the same way; give default_params of its own or another fallback"
        )
        raise Unprocessable(msg, errors=[_error(where, "fallback_methods", msg)])


def _error(where: str, field: str, msg: str) -> dict[str, Any]:
    return {"loc": [where, field], "msg": msg, "type": "value_error"}


def check_recipe(recipe: dict[str, Any], where: str = "spec") -> None:
    """`train_recipe` is what the `retrain` method reads as its params (models/unlearning/params.py:
    with_recipe), so it is parsed here as the worker parses them: unknown fields, wrong types and
    out-of-bounds values are a 422 naming the field, not a failed job later."""
    from models.unlearning.params import parse_params  # torch-free by contract (tested)

    try:
        parse_params("retrain", recipe)
    except (KeyError, ValueError, TypeError) as exc:
        raise Unprocessable(
            f"train_recipe: {exc}",
            errors=[{"loc": [where, "train_recipe"], "msg": str(exc), "type": "value_error"}],
        ) from exc


def check_architecture(
    architecture: str, arch_kwargs: dict[str, Any], num_classes: int, max_params: int
) -> None:
    """What can be known of an architecture without torch: its source is one the service knows (a plugin
    must be installed: entry points are package metadata, read without importing the plugin), no kwarg
    asks for downloaded weights, an `hf:` model's config asks for no code, weights or kernels from
    elsewhere, and a built-in's exact size is within `max_params`. The size of a torchvision, timm,
    plugin or hf model needs its builder, i.e. torch: the worker checks it on the meta device before
    allocating anything."""
    from models import sources  # torch-free by contract (tested)

    def refuse(msg: str, field: str) -> Unprocessable:
        return Unprocessable(msg, errors=[{"loc": ["spec", field], "msg": msg, "type": "value_error"}])

    try:
        source = sources.parse(architecture)
    except ValueError as exc:
        raise refuse(str(exc), "architecture") from exc
    if source.kind == "plugin" and source.target not in (installed := sources.plugin_names()):
        msg = (
            f"no architecture plugin {source.target!r} is installed (entry-point group "
            f"{sources.ENTRY_POINT_GROUP!r}; installed: {', '.join(installed) or 'none'})"
        )
        raise refuse(msg, "architecture")
    try:
        sources.check_kwargs(arch_kwargs, num_classes)
        if source.kind == "hf":
            sources.check_hf_kwargs(arch_kwargs, num_classes)
        if source.external:
            return
        count = sources.builtin_parameter_count(source.target, **{"num_classes": num_classes, **arch_kwargs})
    except (TypeError, ValueError) as exc:
        raise refuse(f"arch_kwargs for {architecture}: {exc}", "arch_kwargs") from exc
    if count > max_params:
        raise refuse(
            f"{architecture} with these arch_kwargs has {count:,} parameters; this service admits at most "
            f"{max_params:,} (UNLEARN_MAX_PARAMS)",
            "arch_kwargs",
        )


def check_time_limit(seconds: int | None, service_limit_s: float, *, where: str = "spec") -> None:
    """A model may ask for a shorter job time limit than the service's, never a longer one. `where`: the
    part of the request that holds it (a registration's `spec`, a PATCH's `body`)."""
    if seconds is not None and seconds > service_limit_s:
        raise Unprocessable(
            f"time_limit_seconds {seconds} exceeds this service's limit of {service_limit_s:.0f} s",
            errors=[
                {
                    "loc": [where, "time_limit_seconds"],
                    "msg": "above the service limit",
                    "type": "value_error",
                }
            ],
        )


def effective_time_limit(seconds: int | None, service_limit_s: float) -> float:
    """The limit a job on the model runs under."""
    return float(min(seconds, service_limit_s)) if seconds is not None else service_limit_s


def check_safetensors(path: Path) -> None:
    """A 422 unless `path` parses as a safetensors file holding at least one tensor."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            if not list(f.keys()):
                raise ValueError("it holds no tensors")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's file, not our error
        raise Unprocessable(f"`checkpoint` is not a readable safetensors file: {exc}") from exc
