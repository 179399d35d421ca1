from pathlib import Path

import pytest
import torch

from models.architectures import build_model, model_input_shape
from models.checkpoints import file_sha256, load_checkpoint, read_header, save_checkpoint


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("small_cnn", {"image_size": 8, "num_classes": 10}),
        ("resnet18_cifar", {"num_classes": 4}),
        ("mlp", {}),
    ],
)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    x = torch.randn(3, *model_input_shape(name, **kwargs))
    model.train()
    model(x)  # moves BatchNorm running statistics away from their init
    model.eval()
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(model, path, architecture=name, kwargs=kwargs, num_classes=4, extra={"v": 2})
    assert digest == file_sha256(path) and len(digest) == 64
    loaded, header = load_checkpoint(path)
    assert header["architecture"] == name and header["kwargs"] == kwargs and header["extra"] == {"v": 2}
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_hash_changes_when_a_weight_changes(tmp_path: Path) -> None:
    model = build_model("mlp", hidden=(4,))
    d1 = save_checkpoint(
        model, tmp_path / "a.safetensors", architecture="mlp", kwargs={"hidden": [4]}, num_classes=10
    )
    with torch.no_grad():
        model.classifier.bias[0] += 1
    d2 = save_checkpoint(
        model, tmp_path / "b.safetensors", architecture="mlp", kwargs={"hidden": [4]}, num_classes=10
    )
    assert d1 != d2


def test_checkpoint_without_header_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
    with pytest.raises(ValueError, match="not an unlearning-service checkpoint"):
        read_header(tmp_path / "raw.safetensors")
