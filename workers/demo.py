"""Register the demo model `digits` on first start: a small CNN trained on scikit-learn's digits (real
data that ships with the package), so a newcomer can send a deletion request a minute after cloning.

Run as `python -m workers.demo` (the launcher does); it does nothing if the model already exists.
"""

from __future__ import annotations

import logging
import os

import safetensors.torch
import torch
from sqlalchemy import select

from models.architectures import build_model
from models.datasets import SampleDataset, load_digits_split, save_npz
from models.training import DIGITS_RECIPE, train
from service.db.engine import session_scope
from service.db.tables import Model
from service.registry import register_dataset, register_model
from service.settings import Settings, get_settings
from workers.storage import version_path, write_checkpoint
from workers.validate import v1_metrics

log = logging.getLogger(__name__)

DEMO_TENANT = "default"
DEMO_MODEL = "digits"
ARCH, ARCH_KWARGS = "small_cnn", {"in_channels": 1, "image_size": 8, "num_classes": 10}
DEMO_GATES = {"max_test_accuracy_drop": 0.05, "max_forget_accuracy_above_test": 0.05}


def trained_demo(settings: Settings, train_ds: SampleDataset) -> torch.nn.Module:
    """Train the demo CNN, or reuse the weights cached in UNLEARN_DEMO_CACHE (training is deterministic,
    so a cached copy is the same model; test suites and re-created state directories skip ~10 s)."""
    model = build_model(ARCH, **ARCH_KWARGS)
    cache = (
        settings.demo_cache / f"digits-{ARCH}-{DIGITS_RECIPE.seed}.safetensors"
        if settings.demo_cache
        else None
    )
    if cache is not None and cache.exists():
        safetensors.torch.load_model(model, str(cache))
        return model
    model = train(model, train_ds, DIGITS_RECIPE)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        safetensors.torch.save_model(model, str(tmp))
        os.replace(tmp, cache)
    return model


def ensure_demo(settings: Settings) -> bool:
    """Train and register the demo model unless it exists. Returns True if it was created now."""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        if s.scalar(select(Model.id).where(Model.tenant == DEMO_TENANT, Model.name == DEMO_MODEL)):
            return False
    train_ds, test_ds = load_digits_split(seed=0, test_fraction=0.2)
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = (
        settings.dataset_dir / "digits-train.npz",
        settings.dataset_dir / "digits-test.npz",
    )
    save_npz(train_ds, train_path)
    save_npz(test_ds, test_path)

    model = trained_demo(settings, train_ds)
    metrics = v1_metrics(model, train_ds, test_ds)
    ckpt = version_path(settings.checkpoint_dir, "digits-demo", 1)
    digest = write_checkpoint(model, ckpt, architecture=ARCH, kwargs=ARCH_KWARGS, num_classes=10)
    with session_scope(url) as s:
        tr = register_dataset(
            s,
            tenant=DEMO_TENANT,
            name="digits-train",
            kind="npz",
            uri=str(train_path),
            sample_ids=train_ds.ids,
            labels=train_ds.y.tolist(),
            actor="bootstrap",
        )
        te = register_dataset(
            s,
            tenant=DEMO_TENANT,
            name="digits-test",
            kind="npz",
            uri=str(test_path),
            sample_ids=test_ds.ids,
            labels=test_ds.y.tolist(),
            actor="bootstrap",
        )
        register_model(
            s,
            tenant=DEMO_TENANT,
            name=DEMO_MODEL,
            architecture=ARCH,
            arch_kwargs=ARCH_KWARGS,
            num_classes=10,
            train=tr,
            test=te,
            checkpoint_uri=str(ckpt),
            checkpoint_sha256=digest,
            default_method="ugradsl_plus",
            default_params={},
            train_recipe=DIGITS_RECIPE.to_dict(),
            gates=DEMO_GATES,
            metrics=metrics,
            actor="bootstrap",
        )
    log.info(
        "registered demo model %r: train acc %.3f, test acc %.3f",
        DEMO_MODEL,
        metrics["retain_accuracy"],
        metrics["test_accuracy"],
    )
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    created = ensure_demo(get_settings())
    print("demo model registered" if created else "demo model already registered")
