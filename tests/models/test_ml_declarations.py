"""Declared features: the loader turns stored arrays into the tensors a model reads as the declaration says
(legacy arrays stay as they are), and a model that cannot read its data is explained in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.architectures import build_model
from models.datasets import SampleDataset, load_dataset, load_npz
from models.declarations import DeclarationError, ImageFeatures, describe, suggest, undeclared_problem
from models.inputs import InputMismatch, Role, check_model_reads


def write_npz(path: Path, x: np.ndarray) -> Path:
    n = len(x)
    np.savez(path, x=x, y=np.arange(n, dtype=np.int64) % 10, ids=np.array([f"s{i}" for i in range(n)]))
    return path


def test_hwc_uint8_images_with_mean_and_std_equal_hand_normalised_chw_floats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    by_hand = (
        hwc.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - np.array(mean, np.float32)[:, None, None]
    ) / (np.array(std, np.float32)[:, None, None])
    decl = {"layout": "HWC", "scale": 255, "mean": mean, "std": std}
    ds = load_dataset("npz", str(write_npz(tmp_path / "c.npz", hwc)), decl)
    assert ds.x.shape == (5, 3, 6, 4) and ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    torch.testing.assert_close(ds.x, torch.from_numpy(by_hand))
    # The same images stored CHW as floats, declared so: the same tensors.
    chw = write_npz(tmp_path / "f.npz", hwc.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    again = load_npz(chw, {"layout": "CHW", "mean": mean, "std": std})
    torch.testing.assert_close(again.x, ds.x)
    assert ds.stored is not None and ds.stored.sample_shape == (6, 4, 3) and ds.stored.dtype == "uint8"


def test_hw_uint8_pixels_become_one_channel_floats_exactly(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped,unused-ignore]

    images = load_digits().images[:50]  # 0..16
    ds = load_npz(write_npz(tmp_path / "d.npz", images.astype(np.uint8)), {"layout": "HW", "scale": 16})
    assert torch.equal(ds.x, torch.from_numpy((images / 16.0).astype(np.float32)[:, None]))


def test_size_resizes_after_normalising(tmp_path: Path) -> None:
    x = np.ones((2, 4, 4), dtype=np.float32)
    ds = load_npz(
        write_npz(tmp_path / "r.npz", x), {"layout": "HW", "mean": [0.5], "std": [0.25], "size": [8, 6]}
    )
    assert ds.x.shape == (2, 1, 8, 6)
    torch.testing.assert_close(ds.x, torch.full((2, 1, 8, 6), 2.0))


def test_no_declaration_keeps_the_arrays_as_they_are(tmp_path: Path) -> None:
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    ds = load_npz(write_npz(tmp_path / "l.npz", x))
    assert torch.equal(ds.x, torch.from_numpy(x.astype(np.float32)))  # legacy: raw values, stored shape


@pytest.mark.parametrize(
    ("decl", "says"),
    [
        ({"layout": "HWC", "scale": 255}, "layout 'HWC' means 3 axes per sample"),
        ({"layout": "HW"}, "declare features.scale"),
        ({"layout": "HW", "scale": 255, "dtype": "float32"}, "features.dtype is 'float32'"),
        (
            {"layout": "HW", "scale": 255, "mean": [0.1, 0.2]},
            "features.mean has 2 value(s) but the samples have 1",
        ),
        ({"scale": 255}, "needs features.layout"),
    ],
)
def test_the_loader_refuses_a_declaration_the_array_contradicts(
    tmp_path: Path, decl: dict, says: str
) -> None:
    path = write_npz(tmp_path / "u.npz", np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(DeclarationError) as err:
        load_npz(path, decl)
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"layout": "WH"}, "layout must be one of"),
        ({"layout": "HW", "scale": 0}, "must be positive"),
        ({"layout": "HW", "scale": float("nan")}, "finite"),
        ({"layout": "HW", "std": [1.0, -1.0]}, "std[1] must be positive"),
        ({"layout": "HW", "mean": [0.1], "std": [0.2, 0.3]}, "one per channel"),
        ({"layout": "HW", "size": [0, 8]}, "size must be"),
        ({"layout": "HW", "colour": "red"}, "unknown field"),
    ],
)
def test_impossible_declarations_are_named(raw: dict, says: str) -> None:
    with pytest.raises(DeclarationError) as err:
        ImageFeatures.from_dict(raw)
    assert says in str(err.value)


def test_undeclared_integer_images_name_the_fix_and_vectors_stay_legacy() -> None:
    said = undeclared_problem((28, 28), "uint8")
    assert said is not None and "features.scale" in said and "features.layout" in said
    assert 'layout: "HW"' in said and "scale: 255" in said
    hwc = undeclared_problem((32, 32, 3), "uint8")
    assert hwc is not None and 'layout: "HWC"' in hwc
    assert undeclared_problem((64,), "int64") is None  # tabular integers: no image declaration applies
    assert undeclared_problem((28, 28), "float32") is None


def test_suggestions_turn_the_stored_samples_into_what_the_model_reads() -> None:
    assert suggest((28, 28), "uint8", (1, 28, 28), None) == {"layout": "HW", "scale": 255}
    assert suggest((32, 32, 3), "uint8", (3, 32, 32), None) == {"layout": "HWC", "scale": 255}
    assert suggest((28, 28), "float32", (1, 32, 32), None) == {"layout": "HW", "size": [32, 32]}
    kept = ImageFeatures(layout="HWC", scale=255.0, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert suggest((32, 32, 3), "uint8", (3, 28, 28), kept) == {
        "layout": "HWC",
        "scale": 255.0,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.2, 0.2],
        "size": [28, 28],
    }
    assert suggest((28, 28), "uint8", (3, 28, 28), None) is None  # no declaration adds channels
    assert suggest((28, 28), "uint8", (64,), None) is None
    assert describe({"layout": "HW", "scale": 255.0}) == '{layout: "HW", scale: 255}'


def test_the_issues_digits_are_explained_not_left_to_pytorch() -> None:
    """(N, 28, 28) uint8 for a small_cnn reading (1, 28, 28): the words of the issue, with the fix."""
    x = np.zeros((4, 28, 28), dtype=np.uint8)
    ds = SampleDataset(torch.from_numpy(x.astype(np.float32)), torch.zeros(4), ["a", "b", "c", "d"])
    from models.datasets import StoredForm

    ds.stored = StoredForm((28, 28), "uint8")
    kwargs = {"in_channels": 1, "image_size": 28}
    model = build_model("small_cnn", num_classes=10, **kwargs)
    with pytest.raises(InputMismatch) as err:
        check_model_reads(model, "small_cnn", kwargs, [Role("training set", "digits-u8", ds)])
    assert str(err.value) == (
        "the model `small_cnn` with arch_kwargs {in_channels: 1, image_size: 28} expects one sample of shape "
        "(1, 28, 28); the training set `digits-u8` holds samples of shape (28, 28) (uint8). "
        'Declare `features: {layout: "HW", scale: 255}` at dataset registration.'
    )


def test_a_forward_failure_is_wrapped_in_the_same_explanation() -> None:
    """An architecture that cannot tell its input shape: the one-batch pass fails, explained."""
    ds = SampleDataset(torch.zeros(3, 1, 8, 8), torch.zeros(3), ["a", "b", "c"])
    model = build_model("small_cnn", num_classes=10, in_channels=3, image_size=8)
    with pytest.raises(InputMismatch) as err:
        check_model_reads(model, "not-registered", {"in_channels": 3}, [Role("test set", "t", ds)])
    said = str(err.value)
    assert said.startswith("the model `not-registered` with arch_kwargs {in_channels: 3} cannot read")
    assert "the test set `t` holds samples of shape (1, 8, 8) (float32)" in said
    assert "The model failed on one batch of it (RuntimeError" in said and "declare `features`" in said
    assert "the failure is in the model's own code" in said  # a plugin that raised was told to declare


def test_data_that_fits_passes_including_a_flattening_mlp() -> None:
    ds = SampleDataset(torch.zeros(3, 1, 8, 8), torch.zeros(3), ["a", "b", "c"])
    check_model_reads(
        build_model("small_cnn", num_classes=10), "small_cnn", {}, [Role("training set", "d", ds)]
    )
    check_model_reads(build_model("mlp", num_classes=10), "mlp", {}, [Role("training set", "d", ds)])


def test_non_finite_inputs_are_named_not_blamed_on_the_architecture() -> None:
    """NaN samples used to reach the contract check, which said the classifier was not the last step of
    the forward pass (max difference nan)."""
    x = torch.zeros(4, 1, 8, 8)
    x[1, 0, 2, 2], x[3, 0, 0, 0] = float("nan"), float("inf")
    ds = SampleDataset(x, torch.zeros(4), ["a", "b", "c", "d"])
    model = build_model("small_cnn", num_classes=10)
    with pytest.raises(
        InputMismatch,
        match=r"the training set `d` holds NaN or infinite input values in 2 of its 4 samples "
        r"\(first: 'b', 'd'\)",
    ):
        check_model_reads(model, "small_cnn", {}, [Role("training set", "d", ds)])
