"""``FeatureStore``: front outputs shared on disk between processes, each chunk checked against its
SHA-256 at every read (models/unlearning/feature_store.py). Two caches over one directory stand for two
worker processes: neither sees the other's memory."""

from pathlib import Path

import pytest
import torch
from torch import nn

from models.architectures import build_model
from models.unlearning.feature_cache import FeatureCache
from models.unlearning.feature_store import FeatureStore
from models.unlearning.last_layers import features, split_last_layers
from tests.models.test_ml_feature_cache import CPU, _data, _parts, _rows_through


def _front(arch: str = "small_cnn") -> nn.Module:
    model = build_model(arch, **({"image_size": 28} if arch == "small_cnn" else {"num_classes": 10}))
    model.to(memory_format=torch.channels_last)
    split = split_last_layers(model, 0.5)
    assert split is not None
    return split.front


def _conv(front: nn.Module) -> nn.Module:
    return next(m for m in front.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch, shape", [("small_cnn", (1, 28, 28)), ("resnet18_cifar", (3, 32, 32))])
def test_a_second_process_reads_the_rows_the_first_computed_bit_for_bit(
    tmp_path: Path, arch: str, shape: tuple[int, ...]
) -> None:
    front = _front(arch)  # resnet18_cifar's front gives a channels-last (N, C, H, W) output
    data = _data(12, shape)
    first = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    first.features(front, data.subset(range(8)), CPU, "train")
    assert first.stats.computed == 8 and first.stats.loaded == 0

    second = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    through = _rows_through(_conv(front))
    got = second.features(front, data.subset([9, 2, 7, 0]), CPU, "train")
    assert second.stats.loaded == 8 and second.stats.computed == 1  # row 9 was never computed
    assert sum(through) >= 1 and sum(through) < 8
    expect = features(front, data.subset([9, 2, 7, 0]), CPU)
    computed = first.features(front, data.subset([2, 7, 0]), CPU, "train")  # from the first's memory
    for k, v in _parts(got).items():
        assert torch.equal(v[1:], _parts(computed)[k]), k  # the rows the first computed, bit for bit
        assert torch.allclose(v, _parts(expect)[k], atol=1e-6), k
        assert v.stride() == _parts(expect)[k].stride(), k  # a channels-last output stays channels-last

    # the row the second computed is on disk too: a third process computes nothing
    third = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    third.features(front, data.subset([9, 0]), CPU, "train")
    assert third.stats.computed == 0 and third.stats.read == 2


def test_rows_of_another_source_or_front_are_not_read(tmp_path: Path) -> None:
    front, other = _front(), _front()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    data = _data(6, (1, 28, 28))
    FeatureCache(2**30, FeatureStore(tmp_path, 2**30)).features(front, data, CPU, "train")
    reader = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    reader.features(front, data, CPU, "test")  # the same IDs from another dataset
    reader.features(other, data, CPU, "train")  # the same rows through other weights
    assert reader.stats.loaded == 0 and reader.stats.computed == 12


def _only_chunk(root: Path) -> Path:
    [path] = list(root.glob("*/*.safetensors"))
    return path


def test_a_chunk_whose_bytes_changed_is_dropped_and_its_rows_computed_again(tmp_path: Path) -> None:
    front = _front()
    data = _data(6, (1, 28, 28))
    FeatureCache(2**30, FeatureStore(tmp_path, 2**30)).features(front, data, CPU, "train")
    path = _only_chunk(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # one bit of one row's value: the file still parses
    path.write_bytes(bytes(raw))

    reader = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    got = reader.features(front, data, CPU, "train")
    assert reader.stats.loaded == 0 and reader.stats.computed == 6
    assert torch.equal(_parts(got)[""], _parts(features(front, data, CPU))[""])
    assert path not in list(tmp_path.glob("*/*.safetensors"))  # dropped; the reader wrote a good one
    assert len(list(tmp_path.glob("*/*.safetensors"))) == 1


def test_a_truncated_or_foreign_file_is_a_miss_not_an_error(tmp_path: Path) -> None:
    front = _front()
    data = _data(6, (1, 28, 28))
    FeatureCache(2**30, FeatureStore(tmp_path, 2**30)).features(front, data, CPU, "train")
    path = _only_chunk(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    (path.parent / "stray.safetensors").write_text("not a safetensors file")
    reader = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    reader.features(front, data, CPU, "train")
    assert reader.stats.computed == 6 and reader.stats.loaded == 0
    assert not path.exists() and not (path.parent / "stray.safetensors").exists()


def test_the_store_keeps_to_its_size_dropping_the_least_recently_used_chunk(tmp_path: Path) -> None:
    front = _front()
    data = _data(30, (1, 28, 28))
    probe = FeatureStore(tmp_path / "probe", 2**30)
    FeatureCache(2**30, probe).features(front, data.subset(range(10)), CPU, "train")
    chunk = probe.nbytes()  # one chunk of 10 rows, header included

    store = FeatureStore(tmp_path / "store", int(2.5 * chunk))
    writer = FeatureCache(2**30, store)
    for part in (range(0, 10), range(10, 20), range(20, 30)):
        writer.features(front, data.subset(part), CPU, "train")
    assert store.nbytes() <= store.max_bytes
    reader = FeatureCache(2**30, FeatureStore(tmp_path / "store", int(2.5 * chunk)))
    reader.features(front, data, CPU, "train")
    assert reader.stats.loaded == 20 and reader.stats.computed == 10  # the first chunk went

    tiny = FeatureCache(2**30, FeatureStore(tmp_path / "tiny", chunk // 2))  # no chunk fits: none written
    tiny.features(front, data.subset(range(10)), CPU, "train")
    assert not list((tmp_path / "tiny").glob("*/*.safetensors"))


def test_a_store_that_cannot_be_written_leaves_the_run_to_its_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the store's directory would be")
    front = _front()
    data = _data(6, (1, 28, 28))
    cache = FeatureCache(2**30, FeatureStore(blocked, 2**30))
    got = cache.features(front, data, CPU, "train")
    again = cache.features(front, data, CPU, "train")
    assert cache.stats.computed == 6 and cache.stats.read == 6
    assert torch.equal(_parts(got)[""], _parts(again)[""])


def test_rows_a_deletion_forgot_leave_memory_and_every_chunk_and_the_rest_read_back_bit_for_bit(
    tmp_path: Path,
) -> None:
    """A probe found an erased subject's front outputs on disk after the erasure, their IDs in the chunk's
    header. ``forget`` takes them out of the index here and rewrites the store's chunks without them."""
    import json

    from safetensors import safe_open

    front = _front()
    data = _data(12, (1, 28, 28))
    first = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))
    first.features(front, data.subset(range(6)), CPU, "train")
    first.features(front, data.subset(range(6, 12)), CPU, "train")  # two chunks on disk
    gone = {data.ids[1], data.ids[7]}
    assert first.forget("train", gone) == 2
    for path in tmp_path.glob("*/*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert gone.isdisjoint(json.loads(f.metadata()["ids"])), path
    kept = [i for i in range(12) if data.ids[i] not in gone]
    expect = features(front, data.subset(kept), CPU)
    second = FeatureCache(2**30, FeatureStore(tmp_path, 2**30))  # another process: the rewritten chunks
    got = second.features(front, data.subset(kept), CPU, "train")
    assert second.stats.loaded == 10 and second.stats.computed == 0
    mine = first.features(front, data.subset([*kept, 1]), CPU, "train")  # this one: the row is computed again
    assert first.stats.computed == 13
    for k, v in _parts(got).items():
        assert torch.equal(v, _parts(expect)[k]), k
        assert torch.equal(_parts(mine)[k][:-1], v), k  # rows after the forgotten one still line up


def test_purges_at_once_each_remove_their_rows_and_keep_no_copy(tmp_path: Path) -> None:
    """Two purges of one chunk at once each rewrote it without only their own rows, and both copies were
    kept: each purge's rows survived in the other's (probes). One purge at a time over the store."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from safetensors import safe_open

    front = _front()
    data = _data(12, (1, 28, 28))
    FeatureCache(2**30, FeatureStore(tmp_path, 2**30)).features(front, data, CPU, "train")
    firsts, seconds = set(data.ids[:3]), set(data.ids[3:6])
    with ThreadPoolExecutor(2) as pool:
        dropped = list(pool.map(lambda ids: FeatureStore(tmp_path, 2**30).purge(ids), [firsts, seconds]))
    assert dropped == [3, 3]
    held = []
    for path in tmp_path.glob("*/*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            held += json.loads(f.metadata()["ids"])
    assert sorted(held) == sorted(data.ids[6:])  # each row once, none of either purge's
