"""Architectures from torchvision, timm and operator plugins: the features/head adapter (one forward pass,
the module's own state_dict keys), sizes counted on the meta device, and what is refused."""

from __future__ import annotations

import copy
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_model
from torch import nn

from models.adapters import LinearHeadAdapter, check_contract
from models.architectures import ModelTooLarge, build_model, check_size, parameter_count
from models.checkpoints import load_checkpoint, load_weights, save_checkpoint
from tests.plugins import installed_plugin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with installed_plugin(tmp_path_factory.mktemp("site")) as points:
        yield points


def plain(architecture: str, num_classes: int) -> nn.Module:
    """The module as its own library builds it, with no adapter."""
    kind, _, name = architecture.partition(":")
    if kind == "torchvision":
        return torchvision.models.get_model_builder(name)(weights=None, num_classes=num_classes)
    if kind == "timm":
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    import unlearn_tiny_plugin

    return getattr(unlearn_tiny_plugin, name)(num_classes=num_classes)


EXTERNAL = [
    ("torchvision:resnet18", 32),
    ("torchvision:mobilenet_v3_small", 32),  # classifier[-1]
    ("torchvision:convnext_tiny", 32),  # Sequential(LayerNorm2d, Flatten, Linear)
    ("timm:resnet10t", 32),  # get_classifier()
    ("timm:vit_tiny_patch16_224", 224),  # a transformer: the head's input is the pooled token
    ("plugin:tiny_convnet", 16),  # a plain module, adapted
    ("plugin:tiny_native", 16),  # implements features/head itself
]


@pytest.mark.parametrize(("architecture", "size"), EXTERNAL)
def test_external_models_meet_the_contract_with_their_own_keys_and_outputs(
    plugin: dict[str, str], architecture: str, size: int
) -> None:
    torch.manual_seed(0)
    model = build_model(architecture, num_classes=5)
    reference = plain(architecture, 5)
    assert list(model.state_dict()) == list(reference.state_dict())  # not one key renamed
    reference.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    check_contract(model, x, 5)  # (B, D) features, (B, K) head, head(features(x)) == the module's own output
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    model.train()
    model(x).logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_features_and_logits_come_from_one_forward_pass() -> None:
    model = build_model("torchvision:resnet18", num_classes=3)
    assert isinstance(model, LinearHeadAdapter) and model.classifier_name == "fc"
    calls = {"conv1": 0, "fc": 0}
    model.get_submodule("conv1").register_forward_hook(
        lambda *_: calls.__setitem__("conv1", calls["conv1"] + 1)
    )
    model.get_submodule("fc").register_forward_hook(lambda *_: calls.__setitem__("fc", calls["fc"] + 1))
    x = torch.randn(2, 3, 32, 32)
    f = model.features(x)
    assert calls == {"conv1": 1, "fc": 0} and f.shape == (2, 512)  # stopped at the classifier
    model(x)
    assert calls == {"conv1": 2, "fc": 1}  # forward = head(features(x)): the body once, the head once


def test_a_plain_torchvision_checkpoint_loads_strictly_and_a_published_one_loads_back(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=10)
    save_model(reference, str(tmp_path / "plain.safetensors"))  # as a product team would export it
    model = build_model("torchvision:resnet18", num_classes=10)
    load_weights(model, tmp_path / "plain.safetensors", sha256=None)  # strict
    x = torch.randn(2, 3, 32, 32)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    with torch.no_grad():
        model.get_submodule("fc").bias.add_(1.0)  # an "unlearned" version
    save_checkpoint(
        model,
        tmp_path / "v2.safetensors",
        architecture="torchvision:resnet18",
        kwargs={"num_classes": 10},
        num_classes=10,
    )
    back = torchvision.models.resnet18(num_classes=10)
    load_weights(back, tmp_path / "v2.safetensors", sha256=None)  # strict, into the plain builder
    back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    loaded, header = load_checkpoint(tmp_path / "v2.safetensors")  # and through the service's own loader
    assert header["architecture"] == "torchvision:resnet18" and header["num_classes"] == 10
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_an_adapted_copy_is_independent_and_follows_train_and_eval() -> None:
    model = build_model("torchvision:googlenet", num_classes=4, aux_logits=False, init_weights=False)
    twin = copy.deepcopy(model)
    assert isinstance(twin, LinearHeadAdapter) and twin.wrapped._parameters is twin._parameters
    with torch.no_grad():
        twin.get_submodule("fc").weight.zero_()
    assert model.get_submodule("fc").weight.abs().sum() > 0
    twin.eval()
    assert not twin.training and not twin.wrapped.training and not any(m.training for m in twin.modules())
    twin.train()
    assert twin.wrapped.training
    twin.to(torch.float64)  # what .to(device) does: the module's own forward sees the converted tensors
    assert all(p.dtype == torch.float64 for p in twin.wrapped.parameters())
    assert twin(torch.randn(2, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("architecture", "kwargs", "says"),
    [
        ("torchvision:squeezenet1_0", {}, "no nn.Linear classifier"),  # a convolutional head
        ("timm:deit_tiny_distilled_patch16_224", {}, "not one nn.Linear"),  # two heads
        ("torchvision:no_such_net", {}, "no classification model builder"),
        ("timm:no_such_net", {}, "timm has no model"),
        ("plugin:no_such_plugin", {}, "installed: tiny_convnet, tiny_native"),
        ("torchvision:resnet18", {"weights": "DEFAULT"}, "pretrained weights"),
        ("timm:resnet10t", {"pretrained": True}, "pretrained weights"),
        ("timm:resnet10t", {"checkpoint_path": "/etc/passwd"}, "pretrained weights"),
        ("torchvision:resnet18", {"widht": 3}, "unexpected keyword"),
    ],
)
def test_what_cannot_be_built_or_adapted_is_refused_saying_why(
    plugin: dict[str, str], architecture: str, kwargs: dict, says: str
) -> None:
    with pytest.raises((ValueError, KeyError, TypeError, RuntimeError)) as err:
        parameter_count(architecture, num_classes=3, **kwargs)  # on the meta device, as the worker checks
    assert says in str(err.value)


def test_a_module_whose_classifier_is_not_its_last_step_fails_the_contract_check() -> None:
    from models.adapters import adapt

    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Softmax(dim=1))  # probabilities, not logits
    with pytest.raises(ValueError, match="not the last step"):
        check_contract(adapt(net), torch.randn(2, 12), 3)


def test_a_classifier_registered_before_another_linear_is_named_with_the_fix() -> None:
    """A probe's plugin registered its head, then a projection it applies first: it was told only
    "head(features(x)) has shape (2, 16), not (2, 4)"."""
    from models.adapters import adapt

    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 4)
            self.proj = nn.Linear(32, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.proj(x))

    with pytest.raises(ValueError, match="taken to be `proj`.*register the classifier last"):
        check_contract(adapt(HeadFirst()), torch.randn(2, 32), 4)


@pytest.mark.parametrize("spoil", ["nan", "overflow"])
def test_weights_that_give_non_finite_outputs_are_refused_as_such(spoil: str) -> None:
    """A client's NaN checkpoint (and one scaled by 1e30) was refused as "its classifier is not the last
    step of the forward pass (max difference nan)": the architecture was blamed for the weights."""
    model = build_model("mlp", in_features=12, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.full_like(p, float("nan")) if spoil == "nan" else p * 1e30)
    with pytest.raises(ValueError, match="NaN or infinite") as err:
        check_contract(model, torch.randn(2, 12), 3)
    assert "last step" not in str(err.value)


def test_sizes_are_counted_on_the_meta_device_without_allocating_the_weights() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    count = parameter_count("torchvision:vit_h_14", num_classes=1000)  # 632M parameters: 2.5 GB in fp32
    regnet = parameter_count("torchvision:regnet_y_128gf", num_classes=10)  # its builder reads tensors back
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert count == 632_045_800 and regnet > 600_000_000
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"
    with pytest.raises(
        ModelTooLarge, match=r"632,045,800 parameters; this service admits at most 100,000,000"
    ):
        check_size("torchvision:vit_h_14", {"num_classes": 1000}, 100_000_000)
    assert check_size("torchvision:resnet50", {"num_classes": 1000}, 100_000_000) == 25_557_032
    assert check_size("torchvision:vit_b_16", {"num_classes": 1000}, 100_000_000) == 86_567_656


def test_the_source_module_the_api_uses_never_imports_torch() -> None:
    code = "import models.sources, sys; models.sources.plugin_names(); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
