"""Streamed datasets (memory-mapped .npy, WebDataset tar shards, CSV manifests of image files) give the
same tensors, the same metrics and the same unlearned weights as the same data held in memory, whether
rows are read in the calling process or by DataLoader reader processes."""

from __future__ import annotations

import copy
import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds  # type: ignore[import-untyped,unused-ignore]
from PIL import Image

from models import batches as B
from models.architectures import build_model
from models.datasets import SampleDataset, load_dataset
from models.metrics import evaluate
from models.shards import ShardError, index_shards
from models.streamed import LazyRows
from models.training import DIGITS_RECIPE, train
from models.unlearning import run_method
from models.unlearning.engine import retain_pool

DECL = {"layout": "HW", "scale": 255}  # the npz and npy hold the same uint8 pixels as the image files


def _pixels(digits: tuple[SampleDataset, SampleDataset]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The digits train split as uint8 (N, 8, 8) images (digits are 0..16: times 15 fits a byte)."""
    train_ds = digits[0]
    assert isinstance(train_ds.x, torch.Tensor)
    x = (train_ds.x[:, 0] * 16).round().to(torch.uint8).numpy() * 15
    return x, train_ds.y.numpy(), list(train_ds.ids)


def _png(img: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, digits: tuple[SampleDataset, SampleDataset]) -> Path:
    """The same samples four ways: npz, npy folder, two WebDataset shards (written with the webdataset
    library itself) and a CSV manifest of PNG files."""
    x, y, ids = _pixels(digits)
    root = tmp_path_factory.mktemp("streamed")
    np.savez(root / "mem.npz", x=x, y=y, ids=np.asarray(ids, dtype=np.str_))
    (root / "npy").mkdir()
    np.save(root / "npy" / "x.npy", x)
    np.save(root / "npy" / "y.npy", y)
    np.save(root / "npy" / "ids.npy", np.asarray(ids, dtype=np.str_))
    (root / "wds").mkdir()
    half = len(ids) // 2
    for shard, rows in enumerate((range(half), range(half, len(ids)))):
        with wds.TarWriter(str(root / "wds" / f"part-{shard:03d}.tar")) as sink:
            for i in rows:
                sink.write({"__key__": ids[i], "png": _png(x[i]), "cls": str(int(y[i]))})
    (root / "images").mkdir()
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "path", "label"])
        for i, sid in enumerate(ids):
            (root / "images" / f"{sid}.png").write_bytes(_png(x[i]))
            w.writerow([sid, f"images/{sid}.png", int(y[i])])
    return root


KINDS = [("npy", "npy", DECL), ("webdataset", "wds", None), ("csv_manifest", "manifest.csv", None)]


def _load(
    stored: Path, kind: str, name: str, decl: dict[str, object] | None, workers: int = 0
) -> SampleDataset:
    return load_dataset(kind, str(stored / name), decl, workers=workers)


@pytest.mark.parametrize(("kind", "name", "decl"), KINDS)
def test_streamed_rows_equal_the_rows_in_memory(
    stored: Path, kind: str, name: str, decl: dict[str, object] | None
) -> None:
    memory = load_dataset("npz", str(stored / "mem.npz"), DECL)
    ds = _load(stored, kind, name, decl)
    assert isinstance(ds.x, LazyRows)
    assert ds.ids == memory.ids
    assert torch.equal(ds.y, memory.y)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:50]
    assert torch.equal(B.take(ds.x, idx), B.take(memory.x, idx))
    assert B.sample_shape(ds.x) == (1, 8, 8)
    assert ds.stored is not None and ds.stored.sample_shape in ((8, 8), (1, 8, 8))


def test_a_subset_of_streamed_rows_is_a_view_not_a_copy(stored: Path) -> None:
    ds = _load(stored, "npy", "npy", DECL)
    forget, retain = ds.split_by_ids(ds.ids[:10])
    assert isinstance(retain.x, LazyRows) and retain.x.source is ds.x.source  # type: ignore[union-attr]
    assert len(retain) == len(ds) - 10
    assert torch.equal(B.take(retain.x, torch.tensor([0])), B.take(ds.x, torch.tensor([10])))


def test_a_retain_budget_pool_of_streamed_rows_is_a_view_and_unlearns_as_memory(
    stored: Path, trained: torch.nn.Module
) -> None:
    """``retain_budget`` draws its pool with ``subset``: nothing is read up front, and the run equals the
    same run on the rows in memory."""
    memory = load_dataset("npz", str(stored / "mem.npz"), DECL)
    ds = _load(stored, "npy", "npy", DECL)
    params = {"epochs": 1, "seed": 3, "retain_budget": 2.0, "bound_by": "correct"}
    weights, pools = [], []
    for data in (memory, ds):
        forget, retain = data.split_by_ids(data.ids[::10])
        pools.append(retain_pool(retain, len(forget), params["retain_budget"], params["seed"]))
        model = run_method("ugradsl_plus", copy.deepcopy(trained), forget, retain, params)
        weights.append(model.state_dict())
    assert isinstance(pools[1].x, LazyRows) and pools[1].x.source is ds.x.source  # type: ignore[union-attr]
    assert pools[0].ids == pools[1].ids and len(pools[1]) == 2 * len(ds.ids[::10])
    assert torch.equal(B.take(pools[1].x, torch.arange(len(pools[1]))), pools[0].x)
    assert all(torch.equal(weights[1][k], weights[0][k]) for k in weights[0])


@pytest.fixture(scope="module")
def trained(stored: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, image_size=8, num_classes=10)
    return train(model, load_dataset("npz", str(stored / "mem.npz"), DECL), DIGITS_RECIPE)


def _unlearn(model: torch.nn.Module, ds: SampleDataset, test: SampleDataset) -> tuple[dict, dict]:
    forget, retain = ds.split_by_ids(ds.ids[::10])
    params = {"epochs": 1, "seed": 3}
    out = run_method("ugradsl_plus", copy.deepcopy(model), forget, retain, params, heldout=test)
    metrics = dict(evaluate(out, forget=forget, retain=retain, test=test))
    return out.state_dict(), metrics


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name", "decl", "workers"), [(*k, w) for k in KINDS for w in (0, 2)])
def test_unlearning_a_streamed_set_gives_the_weights_and_metrics_of_memory(
    stored: Path,
    trained: torch.nn.Module,
    kind: str,
    name: str,
    decl: dict[str, object] | None,
    workers: int,
) -> None:
    memory = load_dataset("npz", str(stored / "mem.npz"), DECL)
    test = memory.subset(torch.arange(0, len(memory), 7))
    want_weights, want_metrics = _unlearn(trained, memory, test)
    got_weights, got_metrics = _unlearn(trained, _load(stored, kind, name, decl, workers), test)
    assert got_metrics == want_metrics
    assert all(torch.equal(got_weights[k], want_weights[k]) for k in want_weights)


def test_retraining_on_streamed_rows_read_ahead_matches_memory(stored: Path) -> None:
    recipe = DIGITS_RECIPE.__class__(**{**DIGITS_RECIPE.to_dict(), "epochs": 1})
    models = []
    for ds in (
        load_dataset("npz", str(stored / "mem.npz"), DECL),
        _load(stored, "webdataset", "wds", None, 2),
    ):
        torch.manual_seed(0)
        models.append(
            train(build_model("small_cnn", in_channels=1, image_size=8, num_classes=10), ds, recipe)
        )
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shards_that_cannot_be_a_labelled_image_set_are_refused_by_name(tmp_path: Path) -> None:
    png = _png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ShardError, match="'a' has no .cls label"):
        index_shards(_tar(tmp_path / "nolabel.tar", {"a.png": png}))
    with pytest.raises(ShardError, match="'b' has label 'x', not an integer"):
        index_shards(_tar(tmp_path / "badlabel.tar", {"b.png": png, "b.cls": b"x"}))
    with pytest.raises(ShardError, match="'c' has no image"):
        index_shards(_tar(tmp_path / "noimage.tar", {"c.cls": b"1"}))
    # which of two images would be the sample was the tar order's pick (a probe's upload was accepted):
    # refused at registration; a dataset registered before keeps loading, with the first image
    two_images = _tar(tmp_path / "twoimages.tar", {"e.png": png, "e.jpg": png, "e.cls": b"1"})
    with pytest.raises(ShardError, match=r"'e' has two images \(e\.png and e\.jpg\); a sample holds one"):
        index_shards(two_images, one_image=True)
    assert index_shards(two_images).sample_ids == ["e"]
    (tmp_path / "two").mkdir()
    _tar(tmp_path / "two" / "0.tar", {"d.png": png, "d.cls": b"1"})
    _tar(tmp_path / "two" / "1.tar", {"d.png": png, "d.cls": b"2"})
    with pytest.raises(ShardError, match="'d' appears again"):
        index_shards(tmp_path / "two")


def test_manifest_images_of_another_shape_are_named_with_the_fix_that_fits(tmp_path: Path) -> None:
    """It read "images differ in shape: [(1, 8, 8), (3, 8, 8)]; declare features.size to resize": no file
    to look for in a large manifest, and a size does not change channels (a probe)."""
    from models.streamed import FileRows, ShardRows

    files = []
    for name, pixels in (("a.png", np.zeros((8, 8), np.uint8)), ("b.png", np.zeros((8, 8, 3), np.uint8)),
                         ("c.png", np.zeros((16, 16), np.uint8))):  # fmt: skip
        (tmp_path / name).write_bytes(_png(pixels))
        files.append(tmp_path / name)
    with pytest.raises(ValueError, match=r"b\.png is \(3, 8, 8\), .*a\.png \(1, 8, 8\).*one colour mode"):
        FileRows(files[:2], None).read(np.arange(2))
    with pytest.raises(ValueError, match=r"c\.png is \(1, 16, 16\).*declare features\.size"):
        FileRows([files[0], files[2]], None).read(np.arange(2))
    grey, rgb = _png(np.zeros((8, 8), np.uint8)), _png(np.zeros((8, 8, 3), np.uint8))
    members = {"k1.png": grey, "k1.cls": b"0", "k2.png": rgb, "k2.cls": b"1"}
    index = index_shards(_tar(tmp_path / "s.tar", members))
    shard_rows = ShardRows(index.shards, index.images, None, keys=index.sample_ids)
    with pytest.raises(ValueError, match=r"s\.tar: sample 'k2' is \(3, 8, 8\), s\.tar: sample 'k1' \(1, 8"):
        shard_rows.read(np.arange(2))


def test_images_of_several_sizes_are_each_resized_to_the_declared_size_before_they_are_stacked(
    tmp_path: Path,
) -> None:
    """A probe's manifest of 16, 20 and 24 px images, size declared, was refused and told to declare it:
    the images were stacked before the declaration resized them."""
    from models.declarations import ImageFeatures
    from models.streamed import FileRows, ShardRows

    files, members = [], {}
    for i, side in enumerate((8, 12, 16)):
        png = _png(np.full((side, side), 255, np.uint8))
        (tmp_path / f"{i}.png").write_bytes(png)
        files.append(tmp_path / f"{i}.png")
        members |= {f"k{i}.png": png, f"k{i}.cls": b"0"}
    decl = ImageFeatures(size=(8, 8), mean=(0.5,), std=(0.5,))
    x = FileRows(files, decl).read(np.arange(3))
    assert tuple(x.shape) == (3, 1, 8, 8) and torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5
    index = index_shards(_tar(tmp_path / "sizes.tar", members))
    x = ShardRows(index.shards, index.images, decl, keys=index.sample_ids).read(np.arange(3))
    assert tuple(x.shape) == (3, 1, 8, 8) and torch.allclose(x, torch.ones_like(x))
    # Height and width as declared, and each image resized as the whole batch would have been.
    ramp = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (6, 1))  # 6 x 12, brighter to the right
    (tmp_path / "ramp.png").write_bytes(_png(ramp))
    tall = ImageFeatures(size=(4, 6))
    alone = FileRows([tmp_path / "ramp.png"], tall).read(np.arange(1))
    batch = torch.nn.functional.interpolate(
        torch.from_numpy(ramp / np.float32(255))[None, None],
        size=(4, 6),
        mode="bilinear",
        align_corners=False,
    )
    assert tuple(alone.shape) == (1, 1, 4, 6) and torch.allclose(alone, batch.float(), atol=1e-6)


def test_images_are_read_as_grey_or_rgb_in_0_1_whatever_mode_the_file_stores(tmp_path: Path) -> None:
    """Palette PNGs read as their indices, 1-bit ones as {0, 1/255} and 16-bit ones up to 257 (a probe):
    each is now the colours it shows, scaled to [0, 1]; alpha stays a channel of its own, as before."""
    from models.transforms import decode_image

    def read(img: Image.Image) -> np.ndarray:
        out = io.BytesIO()
        img.save(out, format="PNG")
        return decode_image(out.getvalue(), "png")

    red = Image.new("P", (4, 4), 1)
    red.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    assert read(red).shape == (3, 4, 4) and np.allclose(read(red)[:, 0, 0], [1.0, 0.0, 0.0])
    grey = Image.new("P", (4, 4), 1)  # a greyscale image as a PNG optimiser stores it: one channel
    grey.putpalette([0, 0, 0, 51, 51, 51] + [0, 0, 0] * 254)
    assert read(grey).shape == (1, 4, 4) and np.allclose(read(grey), 0.2)
    assert np.allclose(read(Image.new("1", (4, 4), 1)), 1.0)
    deep = read(Image.fromarray(np.array([[0, 32768], [65535, 13107]], np.uint16)))
    assert deep.shape == (1, 2, 2) and np.allclose(deep[0], [[0.0, 32768 / 65535], [1.0, 0.2]])
    rgba = read(Image.new("RGBA", (4, 4), (255, 0, 0, 51)))
    assert rgba.shape == (4, 4, 4) and np.allclose(rgba[:, 0, 0], [1.0, 0.0, 0.0, 0.2])
    assert np.allclose(read(Image.new("LA", (4, 4), (51, 255)))[:, 0, 0], [0.2, 1.0])


def test_an_image_that_cannot_be_decoded_is_named(tmp_path: Path) -> None:
    """A corrupt shard member read "cannot identify image file <_io.BytesIO object at 0x7f...>", a
    truncated file "Truncated File Read": neither said which (a probe)."""
    from models.streamed import FileRows, ShardRows
    from models.transforms import UnreadableImage

    good = _png(np.zeros((8, 8), np.uint8))
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnreadableImage, match=r"cut\.png cannot be read as an image"):
        FileRows([tmp_path / "cut.png"], None).read(np.arange(1))
    index = index_shards(_tar(tmp_path / "bad.tar", {"tc.png": b"not a png", "tc.cls": b"0"}))
    with pytest.raises(UnreadableImage, match=r"bad\.tar: sample 'tc' cannot be read as an image"):
        ShardRows(index.shards, index.images, None, keys=index.sample_ids).read(np.arange(1))


def test_shard_keys_subjects_and_order_follow_webdataset(tmp_path: Path) -> None:
    png = _png(np.zeros((4, 4), dtype=np.uint8))
    members = {
        "dir/s1.png": png,
        "dir/s1.cls": b"3",
        "dir/s1.subject_id": b"alice",
        "s2.seg.png": png,  # the key ends at the first dot of the file name; a .png all the same
        "s2.cls": b"0",
    }
    index = index_shards(_tar(tmp_path / "one.tar", members))
    assert index.sample_ids == ["dir/s1", "s2"]
    assert index.images[1].ext == "png"
    assert index.labels[0] == 3
    assert index.subject_ids == ["alice", None]


def test_an_image_of_more_pixels_than_allowed_is_named_before_it_is_decoded(tmp_path: Path) -> None:
    """A probe's 164 KB PNG declaring 13000x13000 pixels grew a worker by 1.5 GB per image: Pillow only
    warns below 179 megapixels. The header's size is read first."""
    import resource

    from PIL import Image

    from models.streamed import FileRows
    from models.transforms import MAX_PIXELS, UnreadableImage

    side = int(MAX_PIXELS**0.5) + 1
    Image.new("L", (side, side)).save(tmp_path / "huge.png", optimize=True)
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnreadableImage, match=rf"huge\.png cannot be read.*{side}x{side} pixels"):
        FileRows([tmp_path / "huge.png"], None).read(np.arange(1))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 50_000  # KiB: not decoded
