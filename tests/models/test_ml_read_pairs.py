"""The step loop reads a step's B_r and B_f into the two halves of one tensor where it can
(``engine.read_pairs``), so a method that runs them as one batch does not copy them again."""

from __future__ import annotations

import numpy as np
import torch

from models.streamed import LazyRows
from models.unlearning.engine import Batch, read_pairs
from models.unlearning.feature_cache import KeptRows


def _plan() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor([0, 3]), torch.tensor([5, 1, 2])), (torch.tensor([1]), torch.tensor([0, 4]))]


def test_plain_tensors_are_read_into_one_batch_of_which_both_halves_are_views() -> None:
    xf, xr = torch.randn(4, 6), torch.randn(8, 6)
    for (i_f, i_r), (xf_b, xr_b, joint) in read_pairs(xf, xr, iter(_plan())):
        assert joint is not None
        assert torch.equal(joint, torch.cat([xr[i_r], xf[i_f]]))
        assert torch.equal(xf_b, xf[i_f]) and torch.equal(xr_b, xr[i_r])
        assert xr_b.data_ptr() == joint.data_ptr()  # views: B_r then B_f, no second copy
        assert xf_b.data_ptr() == joint[len(i_r) :].data_ptr()
        y_r, y_f = torch.zeros(len(i_r)), torch.zeros(len(i_f))
        batch = Batch(xr_b, y_r, xf_b, y_f, y_f, 1.0, joint)
        assert batch.both() is joint


def test_views_of_kept_front_rows_are_read_into_one_batch_in_their_layout() -> None:
    """Rows a front's cache keeps (``KeptRows``, across two chunks) are read straight into the joint
    batch, in the chunks' layout, as a gather of them would have been."""
    chunks = [torch.randn(n, 3, 2, 2).contiguous(memory_format=torch.channels_last) for n in (3, 6)]
    rows = torch.cat(chunks)
    source = KeptRows(chunks, [0, 3])
    f_rows, r_rows = np.array([7, 1, 4, 2]), np.array([0, 8, 3, 5, 6, 2, 1, 4])
    xf, xr = LazyRows(source, f_rows), LazyRows(source, r_rows)
    for (i_f, i_r), (xf_b, xr_b, joint) in read_pairs(xf, xr, iter(_plan())):
        assert joint is not None and joint.is_contiguous(memory_format=torch.channels_last)
        want = torch.cat([rows[r_rows[i_r.numpy()]], rows[f_rows[i_f.numpy()]]])
        assert torch.equal(joint, want)
        assert xr_b.data_ptr() == joint.data_ptr() and xf_b.data_ptr() == joint[len(i_r) :].data_ptr()


def test_inputs_that_cannot_share_a_tensor_are_read_apart_and_joined_on_demand() -> None:
    images = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    cases = [
        (torch.randn(4, 6, dtype=torch.float64), torch.randn(8, 6)),  # dtypes differ
        (torch.randn(4, 3, 4, 4), images),  # channels-last: a contiguous buffer would change its layout
        ({"ids": torch.arange(8).view(4, 2)}, {"ids": torch.arange(16).view(8, 2)}),  # a text model's dict
    ]
    for xf, xr in cases:
        for (i_f, i_r), (xf_b, xr_b, joint) in read_pairs(xf, xr, iter(_plan())):
            assert joint is None
            n = len(i_r)
            batch = Batch(xr_b, torch.zeros(n), xf_b, torch.zeros(len(i_f)), torch.zeros(len(i_f)), 1.0)
            both = batch.both()
            first = both if isinstance(both, torch.Tensor) else both["ids"]
            rows_r = xr_b if isinstance(xr_b, torch.Tensor) else xr_b["ids"]
            assert first.shape[0] == n + len(i_f) and torch.equal(first[:n].to(rows_r.dtype), rows_r)
