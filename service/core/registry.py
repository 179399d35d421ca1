"""Registering datasets and models in the database (no torch here: callers pass what they measured)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core import events
from service.core.db.engine import is_postgres
from service.core.db.tables import Dataset, DatasetSample, Model, ModelVersion
from service.core.model_specs import check_methods, check_recipe, require_finite
from service.core.states import ModelStatus
from service.core.subjects import stored

_BATCH = 5000


def register_dataset(
    session: Session,
    *,
    tenant: str,
    name: str,
    kind: str,
    uri: str,
    sample_ids: Sequence[str],
    labels: Sequence[int],
    actor: str,
    sha256: str | None = None,
    features: dict[str, Any] | None = None,
    subject_ids: Sequence[str | None] | None = None,
) -> Dataset:
    """Record a dataset and mirror its sample IDs, so requests can be validated without the data.
    `sha256` pins the file as registered: the worker refuses to load it if it has changed since (None
    only for sources no file stands for, e.g. test fixtures). `features` is its declaration, as checked
    against the file (service.core.features); None: the samples are used as stored. `subject_ids`, when
    given, names the data subject of each sample (None or "" for a sample about no one), so a request can
    name people."""
    if len(sample_ids) != len(labels):
        raise ValueError("sample_ids and labels differ in length")
    if len(set(sample_ids)) != len(sample_ids):
        twice = sorted(i for i, n in Counter(sample_ids).items() if n > 1)
        raise ValueError(
            f"sample IDs must be unique within a dataset; {len(twice)} repeat, e.g. {twice[:3]!r}"
        )
    # Every ID must be nameable by a deletion request (1-200 characters, no NUL), or it could never be erased.
    bad = [i for i in sample_ids if not _nameable(i)]
    if bad:
        raise ValueError(
            f"{len(bad)} sample ID(s) are empty, longer than 200 characters or hold NUL: {bad[:3]!r}"
        )
    subjects: list[str | None] = [None] * len(sample_ids)
    if subject_ids is not None:
        if len(subject_ids) != len(sample_ids):
            raise ValueError(
                f"subject_ids and sample_ids differ in length ({len(subject_ids)}, {len(sample_ids)})"
            )
        # " alice", "alice " and "alice" are one subject, as are canonically equivalent spellings
        # (``subjects.stored``): a request naming alice would otherwise leave some of her samples.
        subjects = [stored(s) if s else None for s in subject_ids]
        # A subject must be nameable by a request too; an empty one means "about no one", not a subject.
        bad_rows = [(i, s) for i, s in enumerate(subjects) if s is not None and not _nameable(s)]
        if bad_rows:
            shown = ", ".join(f"sample {sample_ids[i]!r}: {s[:40]!r}" for i, s in bad_rows[:3])
            raise ValueError(
                f"{len(bad_rows)} subject ID(s) are longer than 200 characters or hold NUL ({shown})"
            )
    if any(not -(2**31) <= int(label) < 2**31 for label in labels):
        raise ValueError("labels must be 32-bit integers")
    ds = Dataset(
        tenant=tenant,
        name=name,
        kind=kind,
        uri=uri,
        num_samples=len(sample_ids),
        sha256=sha256,
        features=features,
    )
    session.add(ds)
    session.flush()
    rows = [
        {"dataset_id": ds.id, "sample_id": sid, "position": i, "label": int(lab), "subject_id": subj}
        for i, (sid, lab, subj) in enumerate(zip(sample_ids, labels, subjects, strict=True))
    ]
    for i in range(0, len(rows), _BATCH):
        session.execute(insert(DatasetSample), rows[i : i + _BATCH])
    if is_postgres(session):
        # Fresh statistics, so the intake's ID lookups use the primary key at once. Without them (before
        # autovacuum gets to the table, or where it is off) PostgreSQL planned the lookup of a request's
        # IDs as a scan of the whole dataset: 26 ms for 50 IDs instead of 0.3. ANALYZE samples a bounded
        # number of rows (it costs the same for any table size) and counts this transaction's rows.
        session.execute(text("ANALYZE dataset_samples"))
    named = [s for s in subjects if s is not None]
    events.dataset_registered(
        session, ds, actor=actor, subjects=(len(set(named)), len(named)) if named else None
    )
    return ds


def _nameable(value: str) -> bool:
    """What a deletion request can name: 1-200 characters, no NUL."""
    return 0 < len(value) <= 200 and "\x00" not in value


def is_model_name_clash(exc: IntegrityError) -> bool:
    """Whether an insert failed on the model-name index: a concurrent registration took the name between
    our check and our commit. (Only this one becomes a 409; any other integrity error is a bug.)"""
    message = str(exc.orig)
    return "uq_models_tenant_name" in message or "models.tenant, models.name" in message


def register_model(
    session: Session,
    *,
    tenant: str,
    name: str,
    architecture: str,
    arch_kwargs: dict[str, Any],
    num_classes: int,
    train: Dataset,
    test: Dataset,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    default_method: str,
    default_params: dict[str, Any],
    train_recipe: dict[str, Any],
    gates: dict[str, Any],
    metrics: dict[str, Any],
    actor: str,
    status: ModelStatus = ModelStatus.READY,
    fallback_methods: Sequence[str] = (),
    time_limit_seconds: int | None = None,
    heldout: Dataset | None = None,
    retrain_above_share: float | None = None,
    retrain_above_class_share: float | None = None,
) -> Model:
    """Record a model and its v1 (the registered checkpoint) in the caller's transaction."""
    model = Model(
        tenant=tenant,
        name=name,
        architecture=architecture,
        arch_kwargs=arch_kwargs,
        num_classes=num_classes,
        train_dataset_id=train.id,
        test_dataset_id=test.id,
        heldout_dataset_id=heldout.id if heldout else None,
        default_method=default_method,
        default_params=default_params,
        train_recipe=train_recipe,
        gates=gates,
        latest_version=1,
        status=status,
        fallback_methods=list(fallback_methods),
        time_limit_seconds=time_limit_seconds,
        retrain_above_share=retrain_above_share,
        retrain_above_class_share=retrain_above_class_share,
    )
    session.add(model)
    session.flush()
    session.add(
        ModelVersion(
            model_id=model.id,
            number=1,
            parent_number=None,
            checkpoint_uri=checkpoint_uri,
            sha256=checkpoint_sha256,
            forgotten_count=0,
            metrics=metrics,
        )
    )
    events.model_registered(session, model, checkpoint_sha256=checkpoint_sha256, actor=actor)
    return model


NAME_CHARS = 100  # Model.name's column


def retire_invalid(session: Session, tenant: str, name: str, actor: str) -> Model | None:
    """Free a name held by an `invalid` model of the tenant, so a corrected registration can take it: the
    invalid one is renamed `<name>.invalid-<its id's first 8 characters>` (audited; the whole id where a
    model already has that name: a probe's registration got a 409 naming the name it asked for), its
    record and upload kept. Such a model
    never accepted a request, and a registration mistake used the name up for good. Returns it, or None
    when the name is free or held by a model that is not invalid."""
    held = session.scalar(select(Model).where(Model.tenant == tenant, Model.name == name))
    if held is None or held.status != ModelStatus.INVALID:
        return None
    for suffix in (f".invalid-{held.id[:8]}", f".invalid-{held.id}"):  # the short one may be a name in use
        renamed = name[: NAME_CHARS - len(suffix)] + suffix
        if session.scalar(select(Model.id).where(Model.tenant == tenant, Model.name == renamed)) is None:
            break
    events.model_updated(session, held, changes={"name": {"from": name, "to": renamed}}, actor=actor)
    held.name = renamed
    session.flush()  # before the new model takes the name (a unique index)
    return held


def _merged(current: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """`current` with `patch` merged in, one level deep (RFC 7396 for flat objects)."""
    merged = {**current, **(patch or {})}
    return {k: v for k, v in merged.items() if v is not None}


def update_policy(session: Session, m: Model, changes: dict[str, Any], *, actor: str) -> None:
    """An admin's change of method, params, fallback chain, gates or retrain recipe (`changes` holds only
    the fields sent); it applies to jobs that start afterwards. `gates` and `default_params` are merged
    into what the model has (JSON Merge Patch: a key sent replaces that key, a null removes it, keys left
    out stay), so tightening one gate does not silently drop the others. A new method starts from that
    method's defaults plus the params sent, rather than inheriting another method's params."""
    require_finite(changes)
    before = {f: copy.deepcopy(getattr(m, f)) for f in events.POLICY_FIELDS}
    method = changes.get("default_method") or m.default_method
    same_method = method == m.default_method
    params = _merged(m.default_params if same_method else {}, changes.get("default_params"))
    fallbacks = changes.get("fallback_methods")
    if fallbacks is None:
        fallbacks = m.fallback_methods
    chain_changed = any(k in changes for k in ("default_method", "default_params", "fallback_methods"))
    check_methods(method, params, fallbacks, where="body", repeat=chain_changed)
    if changes.get("train_recipe") is not None:
        check_recipe(changes["train_recipe"], where="body")
    m.default_method, m.default_params, m.fallback_methods = method, params, fallbacks
    if changes.get("gates") is not None:
        m.gates = _merged(m.gates, changes["gates"])
    if changes.get("train_recipe") is not None:
        m.train_recipe = changes["train_recipe"]
    if "time_limit_seconds" in changes:  # null goes back to the service's limit
        m.time_limit_seconds = changes["time_limit_seconds"]
    for share in ("retrain_above_share", "retrain_above_class_share"):  # null: never
        if share in changes:
            setattr(m, share, changes[share])
    # what changed, from what to what (the body sent had been recorded: a new method's params it dropped
    # were not); a PATCH that changed nothing is no event
    after = {f: copy.deepcopy(getattr(m, f)) for f in events.POLICY_FIELDS}
    changed = {f: {"from": before[f], "to": after[f]} for f in events.POLICY_FIELDS if after[f] != before[f]}
    if changed:
        events.model_updated(session, m, changes=changed, actor=actor)
