"""This worker process's kept front outputs (``models.unlearning.feature_cache``), and the name of a
registered dataset's rows in it.

Why per process: a deletion's job on a model whose last versions trained only their last layers passes
the same training rows through the same frozen front as the job before it (on the 60k Fashion-MNIST
model, 45% of the unlearning step). Keeping them in the process that ran that job costs memory only, and
is dropped when the process ends. Each chunk a process computes is also written to a store on disk
(``models.unlearning.feature_store``, under ``UNLEARN_FEATURE_STORE_DIR``), so a job on another process of
the host reads those rows back rather than computing them. Bounded by ``UNLEARN_FEATURE_CACHE_BYTES`` in
memory and ``UNLEARN_FEATURE_STORE_BYTES`` on disk (0: off). The test set's rows are kept too, under a
source of their own, and the worker that validates a model keeps every training row (``keep``,
``workers.validate``), so the model's first deletion there reads them back as later ones do.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from torch import nn

from models.datasets import SampleDataset
from models.image_modes import DECODING
from models.layout import cpu_channels_last
from models.metrics import SetScores, score_set
from models.unlearning.feature_cache import FeatureCache
from models.unlearning.feature_store import FeatureStore
from models.unlearning.last_layers import Split, row_bytes, split_last_layers
from service.core.settings import Settings
from workers.datasets import HASHED_KINDS, PARTLY_HASHED, DatasetRef

_cache: FeatureCache | None = None


def feature_cache(settings: Settings) -> FeatureCache | None:
    """The process's cache at the configured size (a new, empty one when the size changed), reading and
    writing the configured store, or None."""
    global _cache
    if settings.feature_cache_bytes <= 0:
        _cache = None
        return None
    if _cache is None or _cache.max_bytes != settings.feature_cache_bytes:
        _cache = FeatureCache(settings.feature_cache_bytes)
    root, size = settings.resolved_feature_store_dir, settings.feature_store_bytes
    if size <= 0:
        _cache.store = None
    elif _cache.store is None or (_cache.store.root, _cache.store.max_bytes) != (root, size):
        _cache.store = FeatureStore(root, size)
    return _cache


def source(ref: DatasetRef) -> str | None:
    """What a registered dataset's rows are, as the cache keys them: its files' hash (checked at every
    load: ``workers.datasets``) and how they are read. None where the file is not checked (a dataset
    registered before hashes were kept): it may have changed under the same path, so nothing is kept; and
    for a manifest, whose hash does not cover the images it names."""
    if (ref.kind in HASHED_KINDS and ref.sha256 is None) or ref.kind in PARTLY_HASHED:
        return None
    return json.dumps([ref.kind, ref.uri, ref.sha256, ref.features, DECODING], sort_keys=True, default=str)


def scores(
    model: nn.Module, share: float, cache: FeatureCache | None, rows: str | None
) -> Callable[[SampleDataset], SetScores] | None:
    """How to score ``model`` on rows of ``rows`` (a source) through the cache: the front's kept outputs
    of those rows (computed and kept where missing), then the last layers, split where a run at
    ``train_share`` = ``share`` splits them. Why: a job scores the base version and its result on D_f, a
    10k sample of D_r and the test set's scoring part, and those versions share the front its run read
    the rows through; on the 60k model the scorings were 40% of a job. The scores are the model's own, to
    float32 rounding. None (score the whole model) without a cache, a source or a split."""
    return scorers(model, share, cache, rows)[0]


def scorers(
    model: nn.Module, share: float, cache: FeatureCache | None, *sources: str | None
) -> list[Callable[[SampleDataset], SetScores] | None]:
    """``scores`` for each of ``sources``, from one split of the model."""
    split = _split(model, share, cache)
    if split is None or cache is None:
        return [None] * len(sources)
    device = next(model.parameters()).device
    front, tail, kept = split.front, split.tail, cache

    def scorer(source: str) -> Callable[[SampleDataset], SetScores]:
        def scored(data: SampleDataset) -> SetScores:
            with cpu_channels_last(model):  # the layout a run computes its rows in: the same rows
                seen = kept.features(front, data, device, source) if len(data) else data
            return score_set(tail, seen)

        return scored

    return [scorer(source) if source is not None else None for source in sources]


def keep(
    model: nn.Module, share: float, cache: FeatureCache | None, rows: str | None, data: SampleDataset
) -> int:
    """Pass every row of ``data`` not kept yet through the front a run at ``train_share`` = ``share``
    reads it through, and keep the outputs: the rows computed. None where all of them would not fit the
    cache (measured on the first row): the pass would be paid and its rows dropped."""
    split = _split(model, share, cache) if rows is not None else None
    if split is None or cache is None or rows is None or not len(data):
        return 0
    device = next(model.parameters()).device
    with cpu_channels_last(model):  # as ``scores``: the layout a run computes its rows in
        if row_bytes(split.front, data, device) * len(data) > cache.max_bytes:
            return 0
        return cache.keep(split.front, data, device, rows)


def _split(model: nn.Module, share: float, cache: FeatureCache | None) -> Split | None:
    """The model's front and last layers at ``share``, where there is a cache to keep the front's rows."""
    return split_last_layers(model, share) if cache is not None and share > 0 else None
