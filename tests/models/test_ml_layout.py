"""The CPU layout and batch size change speed only: same outputs, and the model comes back as it went in."""

import copy

import numpy as np
import pytest
import torch

from models.architectures import build_model
from models.checkpoints import load_checkpoint, save_checkpoint
from models.datasets import SampleDataset
from models.layout import cpu_channels_last
from models.unlearning import run_method


def _convs(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4]


def test_channels_last_block_keeps_outputs_and_restores_the_layout() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with cpu_channels_last(model):
            assert any(not p.is_contiguous() for p in _convs(model))  # really converted
            inside = model(x)
            with cpu_channels_last(model):  # nested: no-op, must not restore early
                pass
            assert any(not p.is_contiguous() for p in _convs(model))
    assert torch.allclose(before, inside, atol=1e-4)
    assert all(p.is_contiguous() for p in model.state_dict().values())


def test_channels_last_block_restores_the_layout_when_the_run_fails() -> None:
    model = build_model("small_cnn", in_channels=3, image_size=32, num_classes=10)
    with pytest.raises(RuntimeError), cpu_channels_last(model):
        raise RuntimeError("cancelled")
    assert all(p.is_contiguous() for p in model.state_dict().values())


def test_a_method_run_returns_a_model_safetensors_can_write(digits_model, digits_random10, tmp_path) -> None:
    """Methods run channels-last on CPU; the result must still be writable as a checkpoint and reload."""
    forget, retain = digits_random10
    model = run_method(
        "ugradsl_plus", copy.deepcopy(digits_model), forget, retain, {"epochs": 0.2, "bound_by": "correct"}
    )
    kwargs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    save_checkpoint(
        model, tmp_path / "m.safetensors", architecture="small_cnn", kwargs=kwargs, num_classes=10
    )
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    x = retain.x[:16]
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_channels_last_block_leaves_a_model_with_3d_convolutions_alone() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Unflatten(1, (2, 1, 1))
    )
    model.add_module("c3", torch.nn.Conv3d(2, 2, 1))
    with cpu_channels_last(model):
        assert all(p.is_contiguous() for p in model.parameters())


def test_cpu_batches_keep_the_largest_activation_within_the_budget() -> None:
    """small_cnn's largest output is its first convolution's (32 channels at full size): a 28x28 image
    gets 12x fewer rows per batch than an 8x8 one, which hits the cap."""
    from models.layout import CPU_ACTIVATION_BYTES, cpu_batch, largest_activation

    big = build_model("small_cnn", image_size=28)
    x = torch.randn(300, 1, 28, 28)
    assert largest_activation(big, x[:1]) == 32 * 28 * 28 * 4
    assert cpu_batch(big, x, 512) == CPU_ACTIVATION_BYTES // (32 * 28 * 28 * 4)
    assert cpu_batch(big, x, 16) == 16  # never above the cap
    small = build_model("small_cnn", image_size=8)
    assert cpu_batch(small, torch.randn(5, 1, 8, 8), 512) == 512


def test_cpu_batches_have_a_floor_and_leave_the_model_as_it_was() -> None:
    from models.layout import MIN_BATCH, cpu_batch

    wide = torch.nn.Sequential(torch.nn.Linear(4, 2**21), torch.nn.ReLU(), torch.nn.Linear(2**21, 2))
    wide.train()
    assert cpu_batch(wide, torch.randn(3, 4), 256) == MIN_BATCH  # 8 MiB per row: the floor
    assert wide.training
    assert all(not m._forward_hooks for m in wide.modules())
    assert cpu_batch(wide, torch.randn(0, 4), 256) == 256  # nothing to read: nothing probed


def test_a_batch_is_measured_once_per_structure(monkeypatch) -> None:
    """A job sizes the passes of several models of one structure (the version, its copy, the result); a
    model no recipe built (``build_model``) has no structure to key, and is measured each time."""
    from models import layout
    from models.layout import cpu_batch

    monkeypatch.setattr(layout, "_PER_ROW", {})
    runs: list[str] = []

    def counted(model: torch.nn.Module, name: str) -> torch.nn.Module:
        model.register_forward_pre_hook(lambda _m, _args: runs.append(name))
        return model

    built = build_model("small_cnn", image_size=28)
    second = counted(copy.deepcopy(built), "second")  # a job's copy of the version it starts from
    first = counted(built, "first")
    other = counted(build_model("small_cnn", image_size=8), "other")
    x28, x8 = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 8, 8)
    assert cpu_batch(first, x28, 512) == cpu_batch(second, x28, 512) == 83  # 8 MiB / (32 x 28 x 28 x 4 B)
    assert cpu_batch(other, x8, 512) == 512
    assert runs == ["first", "other"]  # the copy read the first's measure; another recipe measured its own
    plain = counted(torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1)), "plain")
    assert cpu_batch(plain, x8, 4096) == cpu_batch(plain, x8, 4096) == 512  # 16 KiB per row
    assert runs[2:] == ["plain", "plain"]


def test_off_the_cpu_the_cap_is_the_batch_and_the_model_is_not_run() -> None:
    from models.layout import cpu_batch

    model = build_model("small_cnn", image_size=28).to("meta")
    assert cpu_batch(model, torch.randn(4, 1, 28, 28), 256) == 256


def test_the_largest_activation_looks_inside_tuples_and_dicts() -> None:
    from models.layout import largest_activation

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 3)

        def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            h = self.lin(x["a"])
            return h, {"wide": h.repeat(1, 50)}

    assert largest_activation(Pair(), {"a": torch.randn(1, 2)}) == 150 * 4


def test_scores_are_the_same_whatever_the_batch() -> None:
    """Metrics batch by the cache on a CPU: the numbers must not depend on it."""
    from models.metrics import per_sample_loss

    x = torch.randn(200, 1, 28, 28)
    model = build_model("small_cnn", image_size=28).eval()
    data = SampleDataset(x, torch.arange(200) % 10, [f"s{i}" for i in range(200)])
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(model(x), data.y, reduction="none").numpy()
    assert np.allclose(per_sample_loss(model, data), whole, atol=1e-5)
    assert np.allclose(per_sample_loss(model, data, batch_size=7), whole, atol=1e-5)
