"""``train_share``: unlearning only the last layers that hold a share of the weights, on features of the
frozen front computed once (models/unlearning/last_layers.py)."""

import copy

import pytest
import torch
from torch import nn

from models.adapters import adapt
from models.architectures import Classifier, build_model
from models.unlearning import last_layers, run_method
from models.unlearning.last_layers import split_last_layers


def _share(split_module: nn.Module, model: nn.Module) -> float:
    return sum(p.numel() for p in split_module.parameters()) / sum(p.numel() for p in model.parameters())


def test_the_split_computes_what_the_model_does_with_the_models_own_last_weights() -> None:
    model = build_model("small_cnn", image_size=28).eval()
    split = split_last_layers(model, 0.5)
    assert split is not None
    # the two linear layers hold 96% of small_cnn's weights; the convolutions stay in front
    layers = [type(m) for m in split.tail.modules() if list(m.parameters(recurse=False))]
    assert layers == [nn.Linear, nn.Linear]
    assert _share(split.tail, model) == pytest.approx(0.955, abs=0.01)
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in split.tail.parameters()} <= own
    assert not {id(p) for p in split.tail.parameters()} & {id(p) for p in model.body[0].parameters()}
    x = torch.randn(6, 1, 28, 28)
    assert torch.allclose(split.tail.eval()(split.front(x)), model(x), atol=1e-6)
    assert torch.allclose(split.tail.head(split.tail.features(split.front(x))), model(x), atol=1e-6)


def test_a_skip_connection_across_the_cut_caches_every_value_the_last_layers_read() -> None:
    model = build_model("resnet18_cifar", num_classes=10).eval()
    split = split_last_layers(model, 0.5)
    assert split is not None and 0.5 <= _share(split.tail, model) < 0.9
    x = torch.randn(2, 3, 32, 32)
    cached = split.front(x)
    assert isinstance(cached, dict) and len(cached) >= 2  # the block's input and its shortcut's
    assert torch.allclose(split.tail.eval()(cached), model(x), atol=1e-5)


def test_a_torchvision_model_behind_the_adapter_splits_too() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = adapt(torchvision.models.resnet18(num_classes=10)).eval()
    split = split_last_layers(model, 0.5)
    assert split is not None and 0.5 <= _share(split.tail, model) < 0.9
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(split.tail.eval()(split.front(x)), model(x), atol=1e-5)


def test_a_norm_layer_outside_torch_nn_follows_the_mode_it_is_called_in_not_the_one_traced() -> None:
    """timm's BatchNormAct2d was traced through with `training=True` fixed in (the model is built in
    train mode): the front's eval passes normalised by each batch and wrote its statistics into the
    running ones, so a published version carried test rows' statistics, and a 1-row size probe refused a
    good EfficientNet (a probe)."""
    timm = pytest.importorskip("timm")
    # its head drops out in the root's own forward (F.dropout(..., training=self.training)): traced too
    model = adapt(timm.create_model("test_efficientnet", num_classes=4, pretrained=False, drop_rate=0.5))
    model.train()  # as build_model returns it, and as the worker splits it
    split = split_last_layers(model, 0.5)
    assert split is not None
    model.eval(), split.front.eval(), split.tail.eval()
    kept = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.randn(1, 3, 32, 32)  # one row: batch statistics of a 1x1 map would refuse it
    assert torch.allclose(split.tail(split.front(x)), model(x), atol=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())  # nothing written


def test_models_of_one_structure_are_traced_once_and_split_on_their_own_weights(monkeypatch) -> None:
    monkeypatch.setattr(last_layers, "_CUTS", {})
    traced = []
    trace = last_layers._ModeTracer.trace
    monkeypatch.setattr(last_layers._ModeTracer, "trace", lambda self, m: traced.append(m) or trace(self, m))
    first = build_model("small_cnn").eval()
    second = copy.deepcopy(first)
    for p in second.parameters():
        p.data.normal_()
    splits = [split_last_layers(m, 0.7) for m in (first, second)]
    assert len(traced) == 1  # the second model's structure is the first's: its cut is reused
    x = torch.randn(4, 1, 8, 8)
    for model, split in zip((first, second), splits, strict=True):
        assert split is not None
        assert {id(p) for p in split.tail.parameters()} <= {id(p) for p in model.parameters()}
        assert torch.allclose(split.tail.eval()(split.front(x)), model(x), atol=1e-5)
    assert not torch.allclose(splits[1].tail(splits[1].front(x)), first(x), atol=1e-3)
    # a frozen convolution holds no trained weight: the share is found in the linear layers alone
    frozen = copy.deepcopy(first)
    frozen.body[3].requires_grad_(False)
    split = split_last_layers(frozen, 0.7)
    assert len(traced) == 2 and split is not None
    assert [type(m) for m in split.tail.modules() if list(m.parameters(recurse=False))] == [nn.Linear] * 2


class _Scaled(Classifier):
    """A forward that makes a tensor of a constant: torch.fx keeps it on the traced module, not the model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.classifier = nn.Linear(8, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x) * torch.tensor(2.0)
        return out


def test_a_traced_constant_and_a_model_no_recipe_built_split_as_their_own(monkeypatch) -> None:
    monkeypatch.setattr(last_layers, "_CUTS", {})
    traced = []
    trace = last_layers._ModeTracer.trace
    monkeypatch.setattr(last_layers._ModeTracer, "trace", lambda self, m: traced.append(m) or trace(self, m))
    x = torch.randn(5, 4)
    for _ in range(2):  # the second model reads the kept cut, constant included
        model = _Scaled().eval()
        model.architecture, model.architecture_kwargs = "scaled", {}  # as build_model marks a model
        split = split_last_layers(model, 0.5)
        assert split is not None and torch.allclose(split.tail(split.front(x)), model(x), atol=1e-6)
    assert len(traced) == 1
    for _ in range(2):  # no recipe: nothing says two such models compute alike, so each is traced
        model = _Scaled().eval()
        split = split_last_layers(model, 0.5)
        assert split is not None and torch.allclose(split.tail(split.front(x)), model(x), atol=1e-6)
    assert len(traced) == 3


class _Branchy(Classifier):
    """Control flow on a value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.classifier = nn.Linear(8, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return h if float(h.detach().sum()) > 0 else -h


class _Tied(Classifier):
    """The classifier's weight is also a layer of the front (tied, as embeddings are in language models)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.classifier = nn.Linear(8, 8)
        self.classifier.weight = self.body[2].weight

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def test_no_split_where_the_model_cannot_be_cut() -> None:
    assert split_last_layers(_Branchy(), 0.5) is None  # untraceable
    assert split_last_layers(_Tied(), 0.3) is None  # the front would read a weight the run trains
    untied = _Tied()
    untied.classifier.weight = nn.Parameter(untied.classifier.weight.detach().clone())
    assert split_last_layers(untied, 0.3) is not None
    mlp = build_model("mlp", in_features=64, hidden=[32, 16])
    assert split_last_layers(mlp, 1.0) is None  # every weight asked for: nothing left in front


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"),
    [("ugradsl_plus", {"bound_by": "correct"}), ("salun", {"lr": 0.01}), ("finetune", {})],
)
def test_a_run_on_the_last_layers_moves_them_and_leaves_the_front_bit_for_bit(
    digits_model, digits_random10, method: str, extra: dict
) -> None:
    forget, retain = digits_random10
    before = copy.deepcopy(digits_model)
    params = {"train_share": 0.5, "epochs": 1, **extra}
    after = run_method(method, copy.deepcopy(digits_model), forget, retain, params)
    convs = ("body.0.weight", "body.0.bias", "body.3.weight", "body.3.bias")
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    for name in convs:
        assert torch.equal(old[name], new[name]), name
    assert not torch.allclose(old["body.7.weight"], new["body.7.weight"])
    assert not torch.allclose(old["classifier.weight"], new["classifier.weight"])
    whole = copy.deepcopy(digits_model)
    run_method(method, whole, forget, retain, {**params, "train_share": 0})
    assert not torch.equal(old["body.0.weight"], dict(whole.named_parameters())["body.0.weight"])


@pytest.mark.slow
def test_an_untraceable_model_is_unlearned_whole() -> None:
    torch.manual_seed(0)
    from models.datasets import SampleDataset

    x, y = torch.randn(120, 4), torch.randint(0, 3, (120,))
    data = SampleDataset(x, y, [f"s{i}" for i in range(120)])
    forget, retain = data.split_by_ids(data.ids[:12])
    model = _Branchy()
    first = model.body.weight.detach().clone()
    params = {"train_share": 0.5, "bound_by": "correct", "retain_budget": 0}  # all of D_r, no pool
    run_method("ugradsl_plus", model, forget, retain, params)
    assert not torch.equal(first, model.body.weight)


def test_an_empty_deletion_reads_nothing_through_the_front(digits_model, digits) -> None:
    train_ds = digits[0]
    forget, retain = train_ds.split_by_ids([])
    calls: list[int] = []
    model = copy.deepcopy(digits_model)
    model.body[0].register_forward_hook(lambda *_: calls.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    params = {"train_share": 0.5, "bound_by": "correct", "retain_budget": 0}  # all of D_r, no pool
    run_method("ugradsl_plus", model, forget, retain, params)
    assert calls == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("arch, shape", [("small_cnn", (1, 28, 28)), ("resnet18_cifar", (3, 32, 32))])
def test_cached_features_are_the_fronts_output_row_for_row_across_batches(arch, shape, monkeypatch) -> None:
    """Batches are written into one preallocated tensor per cached value (a dict across a skip
    connection); a channels-last front output stays channels-last."""
    from models.datasets import SampleDataset
    from models.unlearning import last_layers

    monkeypatch.setattr(last_layers, "FEATURE_BATCH", 4)  # 10 rows: three batches, the last short
    model = build_model(arch, **({"image_size": 28} if arch == "small_cnn" else {"num_classes": 10})).eval()
    split = split_last_layers(model, 0.5)
    assert split is not None
    for layout in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=layout)
        x = torch.randn(10, *shape)
        data = SampleDataset(x, torch.arange(10) % 3, [f"s{i}" for i in range(10)])
        cached = last_layers.features(split.front, data, torch.device("cpu"))
        with torch.no_grad():
            whole = split.front.eval()(x.to(memory_format=layout))  # BatchNorm on running statistics
        parts = cached.x if isinstance(cached.x, dict) else {"": cached.x}
        expect = whole if isinstance(whole, dict) else {"": whole}
        assert parts.keys() == expect.keys()
        for k, v in parts.items():
            assert torch.allclose(v, expect[k], atol=1e-5), k
            if layout is torch.channels_last and v.dim() == 4 and not expect[k].is_contiguous():
                assert v.is_contiguous(memory_format=torch.channels_last), k
        with torch.no_grad():
            assert torch.allclose(split.tail.eval()(cached.x), model.eval()(x), atol=1e-4)
        assert cached.ids == data.ids and torch.equal(cached.y, data.y)
