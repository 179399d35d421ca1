"""Reading the multipart parts of a registration: the model spec (JSON) and uploaded files, streamed to
disk and hashed as they arrive."""

from __future__ import annotations

import errno
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from fastapi import Request, UploadFile
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from service.api.schemas.registry import Features, ModelCreate
from service.api.unicode import refuse_unencodable
from service.core.errors import InsufficientStorage, Unprocessable
from service.core.model_specs import check_safetensors

_FEATURES: TypeAdapter[Any] = TypeAdapter(Features)


class NotJsonNumber(ValueError):
    """NaN or Infinity in a form field's JSON: Python's parser takes them, JSON has no such numbers."""


def _no_constants(name: str) -> Any:
    # not a JSONDecodeError: its position would be made up (a probe read "line 1 column 1" for a NaN deep
    # in a spec)
    raise NotJsonNumber(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309: Python reads infinity, which PostgreSQL's JSON cannot store
        raise NotJsonNumber(f"{text} is too large for a JSON number (it reads as infinity)")
    return value


def _json(raw: str | bytes) -> Any:
    """A form part's JSON, with NaN, Infinity and numbers that overflow to infinity refused. ValueError
    (JSONDecodeError, NotJsonNumber, UnicodeDecodeError, an integer of over 4,300 digits) or
    RecursionError where it is not JSON the service can store."""
    return json.loads(raw, parse_constant=_no_constants, parse_float=_finite)


async def each_part_once(request: Request) -> None:
    """A 422 naming every multipart field sent more than once, or that the route does not take. FastAPI
    keeps the last copy of a repeated field: a probe's registration with two specs and two checkpoints
    registered the second of each, and nothing said so; a misspelt part (`configs=` for an hf model's
    `config` file, `feature=`) was dropped as silently. (The form is the one FastAPI parsed for the
    route: read again from its cache.)"""
    form = await request.form()
    repeated = sorted({k for k, _ in form.multi_items() if len(form.getlist(k)) > 1})
    if repeated:
        raise Unprocessable(
            f"sent more than once: {', '.join(repeated)}; send each part once",
            errors=[{"loc": [k], "msg": "sent more than once", "type": "repeated"} for k in repeated],
        )
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    taken = [p.alias for p in route.dependant.body_params]
    unknown = sorted(set(form.keys()) - set(taken))
    if unknown:
        raise Unprocessable(
            f"this call takes no part named {', '.join(map(repr, unknown))}; "
            f"its parts are {', '.join(taken)}",
            errors=[{"loc": [k], "msg": "unknown part", "type": "unknown_part"} for k in unknown],
        )


def parse_model_spec(raw: str) -> ModelCreate:
    try:
        value = _json(raw)
    except (ValueError, RecursionError) as exc:
        raise Unprocessable(f"`spec` is not valid JSON: {type(exc).__name__}: {exc}") from exc
    refuse_unencodable(value, "spec")
    try:
        return ModelCreate.model_validate(value)
    except ValidationError as exc:
        errors = [{"loc": ["spec", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise Unprocessable("invalid model spec", errors=errors) from exc


def parse_features(raw: str | None) -> dict[str, Any] | None:
    """The `features` form field of an upload (JSON), validated as DatasetCreate's `features` is."""
    if raw is None or not raw.strip():
        return None
    try:
        value = _json(raw)
    except (ValueError, RecursionError) as exc:
        raise Unprocessable(f"`features` is not valid JSON: {type(exc).__name__}: {exc}") from exc
    refuse_unencodable(value, "features")
    try:
        decl = _FEATURES.validate_python(value)
    except ValidationError as exc:
        errors = [
            {"loc": ["features", *_untagged(e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        said = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise Unprocessable(f"impossible features declaration: {said}", errors=errors) from exc
    return decl.model_dump(exclude_none=True)


MAX_CONFIG_BYTES = 1 << 20  # a transformers config.json is a few kilobytes


def with_uploaded_config(body: ModelCreate, upload: UploadFile) -> ModelCreate:
    """The spec with an uploaded `config` file (a transformers config.json) as `arch_kwargs.config`;
    a 422 unless the architecture is `hf:` and the spec does not carry a config already."""
    if not body.architecture.startswith("hf:"):
        raise Unprocessable(
            f"a `config` file applies to hf: architectures, not {body.architecture}", field="config"
        )
    if "config" in body.arch_kwargs:
        raise Unprocessable(
            "give the config once: as the `config` file or as arch_kwargs.config", field="config"
        )
    raw = upload.file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise Unprocessable(f"the `config` file is larger than {MAX_CONFIG_BYTES} bytes", field="config")
    try:
        config = _json(raw)
    except (ValueError, RecursionError) as exc:
        raise Unprocessable(
            f"`config` is not valid JSON: {type(exc).__name__}: {exc}", field="config"
        ) from exc
    if not isinstance(config, dict):
        raise Unprocessable("`config` must be a JSON object (a config.json)", field="config")
    refuse_unencodable(config, "config")
    return body.model_copy(update={"arch_kwargs": {**body.arch_kwargs, "config": config}})


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location without the union member's tag (`image.layout` -> `layout`)."""
    return loc[1:] if loc and loc[0] in ("image", "text") else loc


_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def save_upload(upload: UploadFile, path: Path) -> str:
    """Stream the upload to `path`; return its sha256. Nothing is left of a copy that fails, and a full or
    read-only volume is a 507 saying so: a probe's upload to a full disk was a 500 that left its first
    100 KB behind, where no sweep looks."""
    digest = hashlib.sha256()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in _STORAGE_FULL:
            raise InsufficientStorage(
                f"the upload could not be stored: {exc.strerror or exc}; retry once the service's storage "
                "has room (nothing of it was kept)"
            ) from exc
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def save_safetensors_upload(upload: UploadFile, path: Path) -> str:
    """Stream the upload to `path`, check it parses as safetensors, return its sha256."""
    digest = save_upload(upload, path)
    try:
        check_safetensors(path)
    except Unprocessable:
        path.unlink(missing_ok=True)
        raise
    return digest
