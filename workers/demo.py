"""Register the demo model `digits` on first start: a small CNN trained on scikit-learn's digits (real
data that ships with the package), so a newcomer can send a deletion request a minute after cloning.

Run as `python -m workers.demo` (the launcher does); it does nothing if the model already exists.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from sqlalchemy import select

from models.architectures import build_model
from models.calibration import held_out
from models.checkpoints import load_weights, save_checkpoint
from models.datasets import SampleDataset, load_digits_split, save_npz
from models.training import DIGITS_RECIPE, TrainRecipe, train
from service.core.dataset_ids import file_sha256
from service.core.db.engine import session_scope
from service.core.db.tables import Model
from service.core.registry import register_dataset, register_model
from service.core.settings import Settings, get_settings
from workers.storage import version_path
from workers.validate import v1_metrics

log = logging.getLogger(__name__)

DEMO_TENANT = "default"
DEMO_MODEL = "digits"
ARCH, ARCH_KWARGS = "small_cnn", {"in_channels": 1, "image_size": 8, "num_classes": 10}
DEMO_GATES = {"max_test_accuracy_drop": 0.05, "max_forget_accuracy_above_test": 0.05}


def trained_demo(settings: Settings, train_ds: SampleDataset) -> torch.nn.Module:
    """Train the demo CNN, or reuse the weights cached in UNLEARN_DEMO_CACHE (training is deterministic,
    so a cached copy is the same model; test suites and re-created state directories skip ~10 s).

    The initial weights are drawn from the recipe's seed too: `train` seeds only its own shuffling, and an
    unseeded start made every fresh state directory's demo a different model (test accuracy 0.95-0.99),
    some of which failed the demo's own gates on a random 30-sample deletion."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DIGITS_RECIPE.seed)
        model = build_model(ARCH, **ARCH_KWARGS)
    cache = (
        settings.demo_cache / f"digits-{ARCH}-{DIGITS_RECIPE.seed}.safetensors"
        if settings.demo_cache
        else None
    )
    if cache is not None and cache.exists():
        load_weights(model, cache, sha256=None)  # a local cache: no version record vouches for it
        return model
    model = train(model, train_ds, DIGITS_RECIPE)
    if cache is not None:
        save_checkpoint(model, cache, architecture=ARCH, kwargs=ARCH_KWARGS, num_classes=10)
    return model


def register_local_model(
    settings: Settings,
    *,
    tenant: str,
    name: str,
    architecture: str,
    arch_kwargs: dict[str, Any],
    model: torch.nn.Module,
    train_ds: SampleDataset,
    test_ds: SampleDataset,
    recipe: TrainRecipe,
    gates: dict[str, Any],
    actor: str = "bootstrap",
) -> dict[str, Any]:
    """Register a model trained in this process, with its datasets stored as .npz under the state
    directory (the demo, benchmarks). Returns v1's metrics."""
    settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: settings.dataset_dir / f"{name}-{split}.npz" for split in ("train", "test")}
    save_npz(train_ds, paths["train"])
    save_npz(test_ds, paths["test"])
    # Scored like every later version: on the scoring half of the test set (the method calibrates on the
    # other half), so v1 -> v2 in the version line compares like with like.
    metrics, _ = v1_metrics(model, train_ds, held_out(test_ds, None).scoring)
    ckpt = version_path(settings.checkpoint_dir, f"{name}-registered", 1)
    num_classes = int(arch_kwargs.get("num_classes", train_ds.num_classes))
    digest = save_checkpoint(
        model, ckpt, architecture=architecture, kwargs=arch_kwargs, num_classes=num_classes
    )
    with session_scope(settings.resolved_database_url) as s:
        tr, te = (
            register_dataset(
                s,
                tenant=tenant,
                name=f"{name}-{split}",
                kind="npz",
                uri=str(paths[split]),
                sample_ids=ds.ids,
                labels=ds.y.tolist(),
                actor=actor,
                sha256=file_sha256(paths[split]),
            )
            for split, ds in (("train", train_ds), ("test", test_ds))
        )
        register_model(
            s,
            tenant=tenant,
            name=name,
            architecture=architecture,
            arch_kwargs=arch_kwargs,
            num_classes=num_classes,
            train=tr,
            test=te,
            checkpoint_uri=str(ckpt),
            checkpoint_sha256=digest,
            default_method="ugradsl_plus",
            default_params={},
            train_recipe=recipe.to_dict(),
            gates=gates,
            metrics=metrics,
            actor=actor,
        )
    return metrics


def ensure_demo(settings: Settings) -> bool:
    """Train and register the demo model unless it exists. Returns True if it was created now."""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        if s.scalar(select(Model.id).where(Model.tenant == DEMO_TENANT, Model.name == DEMO_MODEL)):
            return False
    train_ds, test_ds = load_digits_split(seed=0, test_fraction=0.2)
    model = trained_demo(settings, train_ds)
    metrics = register_local_model(
        settings,
        tenant=DEMO_TENANT,
        name=DEMO_MODEL,
        architecture=ARCH,
        arch_kwargs=ARCH_KWARGS,
        model=model,
        train_ds=train_ds,
        test_ds=test_ds,
        recipe=DIGITS_RECIPE,
        gates=DEMO_GATES,
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
