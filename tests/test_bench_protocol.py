"""The quality bench's protocol arithmetic: gap closed, and the share of the closable gap (above the noise
floor of a second exact retrain) that a method closes."""

from __future__ import annotations

import pytest

from bench.quality import closable_gap_closed, gap_closed


def record(gap: float, original_gap: float, floor: float) -> dict[str, float]:
    return {"gap": gap, "original_gap": original_gap, "floor": floor}


def test_closing_the_gap_down_to_the_floor_closes_all_of_the_closable_gap() -> None:
    r = record(gap=0.5, original_gap=2.5, floor=0.5)
    assert gap_closed(r) == pytest.approx(0.8)
    assert closable_gap_closed(r) == pytest.approx(1.0)


def test_the_closable_share_is_the_plain_share_when_retrains_agree_exactly() -> None:
    r = record(gap=1.0, original_gap=4.0, floor=0.0)
    assert closable_gap_closed(r) == pytest.approx(gap_closed(r)) == pytest.approx(0.75)


def test_nothing_is_closable_when_the_original_is_already_within_the_floor() -> None:
    assert closable_gap_closed(record(gap=0.3, original_gap=0.4, floor=0.6)) == 0.0
