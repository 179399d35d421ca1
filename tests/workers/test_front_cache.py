"""A worker keeps the frozen front's outputs of training rows between jobs (workers/front_cache.py): the
next job on the version the last one published passes only rows it has not seen through the front."""

from __future__ import annotations

import pytest

from service.core.settings import Settings
from tests.workers.test_jobs import demo  # noqa: F401 - a fixture
from tests.workers.test_kept_scores import FIRST, SECOND, no_gates, run_job  # noqa: F401 - `no_gates` too
from workers import front_cache
from workers.datasets import DatasetRef


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache lives as long as the process: each test starts with none (a demo model trained by an
    earlier test of this process may have the same front)."""
    monkeypatch.setattr(front_cache, "_cache", None)


@pytest.mark.slow
def test_the_next_job_reads_the_rows_the_last_one_passed_through_the_front(
    no_gates: Settings,  # noqa: F811
    empty_cache: None,
) -> None:
    first = run_job(no_gates, FIRST, base=1)
    [attempt] = first.metrics["attempts"]
    assert attempt["runs"][0]["trained"] == "last_layers"
    assert attempt["front_rows"]["kept"] == 0 and attempt["front_rows"]["computed"] > len(FIRST)

    second = run_job(no_gates, SECOND, base=2)
    [again] = second.metrics["attempts"]
    rows = again["front_rows"]
    assert rows["kept"] > 0 and rows["computed"] < attempt["front_rows"]["computed"]
    assert (
        rows["kept"] + rows["computed"] >= again["runs"][0]["forget_rows"] + again["runs"][0]["retain_rows"]
    )


@pytest.mark.slow
def test_with_the_cache_off_every_job_computes_its_rows(no_gates: Settings, empty_cache: None) -> None:  # noqa: F811
    off = no_gates.model_copy(update={"feature_cache_bytes": 0})
    for ids, base in ((FIRST, 1), (SECOND, 2)):
        [attempt] = run_job(off, ids, base=base).metrics["attempts"]
        assert "front_rows" not in attempt and attempt["runs"][0]["trained"] == "last_layers"
    assert front_cache.feature_cache(off) is None


def test_rows_of_a_file_not_checked_at_load_are_not_kept() -> None:
    """A dataset registered before hashes were kept may have changed under the same path."""
    legacy = DatasetRef("npz", "/data/train.npz", None)
    assert front_cache.source(legacy) is None
    hashed = front_cache.source(DatasetRef("npz", "/data/train.npz", "ab" * 32))
    other = front_cache.source(DatasetRef("npz", "/data/train.npz", "cd" * 32))
    declared = front_cache.source(DatasetRef("npz", "/data/train.npz", "ab" * 32, {"normalize": [0.5, 0.5]}))
    assert None not in (hashed, other, declared) and len({hashed, other, declared}) == 3
    assert front_cache.source(DatasetRef("digits", ":train")) is not None  # a package's data, not a file
