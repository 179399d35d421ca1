"""``FeatureCache``: a frozen front's outputs kept between runs, by sample ID
(models/unlearning/feature_cache.py)."""

import copy

import pytest
import torch
from torch import nn

from models.architectures import build_model
from models.datasets import SampleDataset
from models.hooks import Hooks
from models.layout import cpu_channels_last
from models.streamed import LazyRows
from models.unlearning import run_method
from models.unlearning.feature_cache import FeatureCache, KeptRows
from models.unlearning.last_layers import features, split_last_layers

CPU = torch.device("cpu")


def _rows_through(module: nn.Module) -> list[int]:
    """Rows that pass through ``module`` from now on (a forward hook: the real module runs)."""
    seen: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    return seen


def _data(n: int, shape: tuple[int, ...], seed: int = 0) -> SampleDataset:
    gen = torch.Generator().manual_seed(seed)
    return SampleDataset(
        torch.randn(n, *shape, generator=gen), torch.arange(n) % 3, [f"s{i}" for i in range(n)]
    )


def _parts(d: SampleDataset) -> dict[str, torch.Tensor]:
    """The rows' values (rows left in the kept chunks, ``KeptRows``, read out)."""
    if isinstance(d.x, LazyRows):
        return {"": d.x.read(torch.arange(len(d.x)))}
    return d.x if isinstance(d.x, dict) else {"": d.x}


@pytest.mark.parametrize("arch, shape", [("small_cnn", (1, 28, 28)), ("resnet18_cifar", (3, 32, 32))])
def test_kept_rows_are_the_fronts_own_output_and_only_new_rows_go_through_it(arch, shape) -> None:
    model = build_model(arch, **({"image_size": 28} if arch == "small_cnn" else {"num_classes": 10}))
    model.to(memory_format=torch.channels_last)
    split = split_last_layers(model, 0.5)
    assert split is not None
    first = next(m for m in split.front.modules() if isinstance(m, nn.Conv2d))
    through = _rows_through(first)
    data = _data(16, shape)
    cache = FeatureCache(max_bytes=2**30)
    cache.features(split.front, data.subset(range(10)), CPU, "train")
    assert cache.stats.computed == 10 and cache.stats.read == 0
    order = [12, 3, 15, 7, 10, 0]  # three kept rows and three new ones, out of order
    through.clear()
    features(split.front, data.subset([12, 15, 10]), CPU)
    new_rows = sum(through)  # the three, and what sizes the batches (models.layout.cpu_batch)
    through.clear()
    got = cache.features(split.front, data.subset(order), CPU, "train")
    assert sum(through) == new_rows and cache.stats.computed == 13 and cache.stats.read == 3
    expect = features(split.front, data.subset(order), CPU)
    assert got.ids == expect.ids and torch.equal(got.y, expect.y)
    assert _parts(got).keys() == _parts(expect).keys()
    for k, v in _parts(got).items():
        assert torch.allclose(v, _parts(expect)[k], atol=1e-6), k
        assert v.stride() == _parts(expect)[k].stride(), k  # a channels-last output stays channels-last


def _small_cnn_front() -> tuple[nn.Module, nn.Module]:
    """A 28x28 small_cnn and the front of its last half of the weights."""
    model = build_model("small_cnn", image_size=28)
    split = split_last_layers(model, 0.5)
    assert split is not None
    return model, split.front


def test_another_front_or_another_source_is_computed_again() -> None:
    model, front = _small_cnn_front()
    data = _data(8, (1, 28, 28))
    cache = FeatureCache(max_bytes=2**30)
    cache.features(front, data, CPU, "train")
    cache.features(front, data, CPU, "train")
    assert (cache.stats.computed, cache.stats.read) == (8, 8)
    cache.features(front, data, CPU, "test")  # the same IDs, another set's rows
    assert cache.stats.computed == 16
    before = features(front, data, CPU).x
    with torch.no_grad():
        model.body[0].weight[0, 0, 0, 0] += 1.0  # one weight of the front: its outputs are others
    again = cache.features(front, data, CPU, "train")
    assert cache.stats.computed == 24
    assert not torch.allclose(again.x, before)  # type: ignore[arg-type]
    assert torch.allclose(again.x, features(front, data, CPU).x)  # type: ignore[arg-type]
    model.to(memory_format=torch.channels_last)  # the same weights laid out as a CPU run lays them
    cache.features(front, data, CPU, "train")
    assert cache.stats.computed == 32


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_used_front() -> None:
    fronts = []
    for seed in range(3):
        torch.manual_seed(seed)
        split = split_last_layers(build_model("small_cnn", image_size=28), 0.5)
        assert split is not None
        fronts.append(split.front)
    data = _data(10, (1, 28, 28))
    row_bytes = features(fronts[0], data.subset([0]), CPU).x.element_size() * 64 * 7 * 7  # type: ignore[union-attr]
    cache = FeatureCache(max_bytes=2 * 10 * row_bytes)  # two fronts' 10 rows
    cache.features(fronts[0], data, CPU, "train")
    cache.features(fronts[1], data, CPU, "train")
    cache.features(fronts[0], data, CPU, "train")  # front 0 used last: front 1 goes first
    assert cache.stats.computed == 20
    cache.features(fronts[2], data, CPU, "train")
    assert cache.nbytes() <= cache.max_bytes
    cache.features(fronts[0], data, CPU, "train")
    assert cache.stats.computed == 30  # front 0 kept
    cache.features(fronts[1], data, CPU, "train")
    assert cache.stats.computed == 40  # front 1 was dropped
    small = FeatureCache(max_bytes=5 * row_bytes)  # fewer bytes than one front's rows: nothing is kept
    got = small.features(fronts[0], data, CPU, "train")
    assert small.nbytes() == 0 and torch.equal(got.x, features(fronts[0], data, CPU).x)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_run_reads_its_front_rows_from_the_cache_and_ends_where_a_run_without_one_does(
    digits_model, digits, digits_random10
) -> None:
    """The published version keeps the base's front, so the next deletion on it reads the rows too."""
    forget, retain = digits_random10
    heldout = digits[1]
    plain = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, heldout=heldout)
    cache = FeatureCache(max_bytes=2**30)
    hooks = Hooks(front_features=cache.bound("digits-train"))
    runs = []
    for _ in range(2):  # cold, then warm
        model = copy.deepcopy(digits_model)
        through = _rows_through(model.body[0])
        run_method("ugradsl_plus", model, forget, retain, hooks=hooks, heldout=heldout)
        runs.append((model, sum(through), cache.stats.computed, cache.stats.read))
    (cold, cold_rows, computed, _), (warm, warm_rows, computed_after, read) = runs
    assert computed >= len(forget) and computed_after == computed and read == computed
    assert cold_rows - warm_rows >= computed  # (and the batch-sizing probes); the rest: the held-out bound
    for a, b, c in zip(
        plain.state_dict().values(), cold.state_dict().values(), warm.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
    # the next deletion, on the version that run published: its front is the same, and so are its rows
    more, rest = retain.split_by_ids(retain.ids[:60])
    run_method("ugradsl_plus", cold, more, rest, hooks=hooks, heldout=heldout)
    assert cache.stats.read > read


def test_keep_computes_only_new_rows_and_a_later_read_takes_them_back() -> None:
    """A warm-up (``keep``) leaves the rows for the next run, computed once."""
    _, front = _small_cnn_front()
    data = _data(12, (1, 28, 28))
    cache = FeatureCache(max_bytes=2**30)
    cache.features(front, data.subset(range(4)), CPU, "train")
    assert cache.keep(front, data, CPU, "train") == 8  # the four kept are not computed again
    assert cache.keep(front, data, CPU, "train") == 0
    first = next(m for m in front.modules() if isinstance(m, nn.Conv2d))
    through = _rows_through(first)
    got = cache.features(front, data.subset([11, 2, 7]), CPU, "train")
    assert sum(through) == 0 and cache.stats.computed == 12
    assert torch.equal(_parts(got)[""], features(front, data.subset([11, 2, 7]), CPU).x)


class _Same(nn.Module):
    """A front whose output is its input, in the input's layout."""

    def __init__(self) -> None:
        super().__init__()
        self.one = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.one


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_rows_out_of_order_across_chunks_are_read_a_batch_at_a_time_as_a_copy_would_have_them(layout) -> None:
    """A worker keeps every training row at validation, so a run's rows are scattered over the chunks:
    on the CPU they stay there (``KeptRows``) and each read gives what gathering them would have."""
    kept = [torch.randn(n, 3, 2, 2).contiguous(memory_format=layout) for n in (7, 5)]
    data = SampleDataset(torch.cat(kept), torch.arange(12), [f"s{i}" for i in range(12)])
    cache = FeatureCache(max_bytes=2**30)
    front = _Same()
    cache.features(front, data.subset(range(7)), CPU, "train")
    cache.features(front, data, CPU, "train")  # the other 5: a second chunk (fewer rows: not merged)
    order = [9, 2, 11, 0, 6, 4]
    got = cache.features(front, data.subset(order), CPU, "train")
    assert isinstance(got.x, LazyRows) and isinstance(got.x.source, KeptRows)  # nothing copied yet
    assert got.ids == [f"s{i}" for i in order] and got.y.tolist() == order
    for idx in ([0, 1, 2, 3, 4, 5], [3, 1], [1], [2, 0], []):  # both chunks, one chunk, none
        rows = got.x.read(torch.tensor(idx, dtype=torch.long))
        want = data.x[torch.tensor([order[i] for i in idx], dtype=torch.long)]
        assert torch.equal(rows, want) and (not idx or rows.stride() == want.stride())


@pytest.mark.slow
def test_a_run_on_rows_kept_out_of_order_ends_where_a_run_without_a_cache_does(
    digits_model, digits, digits_random10
) -> None:
    """As after a worker's validation: every training row kept, in two chunks and in another order than
    the run reads them, so the run reads its pool and D_f from the chunks a batch at a time."""
    forget, retain = digits_random10
    heldout = digits[1]
    plain = run_method("ugradsl_plus", copy.deepcopy(digits_model), forget, retain, heldout=heldout)
    train = digits[0]
    split = split_last_layers(digits_model, 0.7)  # the default run's front (train_share)
    assert split is not None
    cache = FeatureCache(max_bytes=2**30)
    with cpu_channels_last(digits_model):  # the layout a run computes its rows in
        cache.keep(split.front, train.subset([i for i in range(len(train)) if i % 3]), CPU, "digits-train")
        cache.keep(split.front, train, CPU, "digits-train")  # a third more: a chunk of its own
    kept = cache.stats.computed
    model = copy.deepcopy(digits_model)
    run_method("ugradsl_plus", model, forget, retain, hooks=Hooks(front_features=cache.bound("digits-train")),
               heldout=heldout)  # fmt: skip
    assert cache.stats.computed == kept == len(train) and cache.stats.read > len(forget)
    for a, b in zip(plain.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_chunks_merge_once_the_newest_is_as_large_as_all_before_it() -> None:
    """Reads out of one tensor are the fast ones; merging at that size copies each row a bounded number
    of times (``_Rows._merge``), and the rows read back are the same."""
    data = _data(40, (3, 2, 2))
    front = _Same()
    cache = FeatureCache(max_bytes=2**30)
    for stop, chunks in ((8, 1), (12, 2), (16, 3), (40, 1)):  # 4 < 8, 4 < 12, then 24 >= 16: merged
        cache.features(front, data.subset(range(stop)), CPU, "train")
        (rows,) = cache._fronts.values()
        assert len(rows.chunks) == chunks and rows.nbytes() == stop * 12 * 4
    got = cache.features(front, data.subset([33, 5, 14]), CPU, "train")
    assert torch.equal(_parts(got)[""], data.x[torch.tensor([33, 5, 14])])  # type: ignore[index]
