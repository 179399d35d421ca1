"""The CPU channels-last block changes speed only: same outputs, and the model comes back as it went in."""

import copy

import pytest
import torch

from models.architectures import build_model
from models.checkpoints import load_checkpoint, save_checkpoint
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
