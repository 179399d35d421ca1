"""Unlearning only a network's last layers, on features of its frozen front computed once.

Why: in a convolutional classifier the weights, and with them the capacity to memorise single samples,
sit in the last layers, while the compute sits in the first: ``small_cnn`` keeps 96% of its weights in its
two linear layers and most of its multiply-adds in its convolutions. Updating only the smallest run of
last layers that holds a given share of the weights (``train_share``) leaves the front as it is, so the
front's output for every sample the run will read is computed once, in one forward pass, and each step
runs the last layers alone. On the memorising Fashion-MNIST 10k model that made steps cheap enough for
twice the epochs within the default's cost (bench/results/tune_fashion_mem_last_layers.md).

The split is made on the model's ``torch.fx`` trace: the last layers start at the first call, in forward
order, of the trailing layers that hold the share, and end in the model's ``classifier``. Every value they
read from the front (one tensor for a plain stack of layers, several across a skip connection) is cached.
A model that cannot be traced, a front that shares weights with the last layers (tied embeddings), or
cached features larger than ``FEATURE_BYTES`` leave no split, and the run updates the whole model.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import torch
from torch import fx, nn

from models import batches as B
from models.adapters import LinearHeadAdapter
from models.architectures import Classifier
from models.batches import Loaded
from models.datasets import SampleDataset
from models.layout import cpu_batch
from models.loading import in_order
from models.structure import remember, structure

FEATURE_BYTES = 4 * 2**30  # cached front outputs beyond this size: run on the whole model instead
FEATURE_BATCH = 512  # rows per batch of the front's pass off the CPU (on it: models.layout.cpu_batch)


@dataclass
class Split:
    """``front(x)`` gives the last layers' input (a tensor, or a dict for several values); ``tail`` maps it
    to logits with the model's own parameters, so training ``tail`` trains the model."""

    front: nn.Module
    tail: nn.Module


class _LastLayers(Classifier):
    """The last layers as a ``Classifier`` (methods read penultimate features): ``features`` runs their
    graph up to the model's classifier, called with one argument as every model here is
    (``models.batches``); ``head`` is the model's own classifier."""

    structure_key: str | None = None  # set by ``split_last_layers`` (``models.structure``)

    def __init__(self, graph: fx.GraphModule, names: list[str], classifier: nn.Module) -> None:
        super().__init__()
        self.body, self.names, self.classifier = graph, names, classifier

    def features(self, x: Loaded) -> torch.Tensor:  # type: ignore[override]
        args = [x[n] for n in self.names] if isinstance(x, dict) else [x]
        out: torch.Tensor = self.body(*args)
        return out


class _Front(nn.Module):
    structure_key: str | None = None  # set by ``split_last_layers`` (``models.structure``)

    def __init__(self, graph: fx.GraphModule, names: list[str]) -> None:
        super().__init__()
        self.graph, self.names = graph, names

    def forward(self, x: Loaded) -> Loaded:
        out = self.graph(x)
        return out[0] if len(self.names) == 1 else dict(zip(self.names, out, strict=True))


def split_last_layers(model: nn.Module, share: float) -> Split | None:
    """The split of ``model`` whose last layers are the smallest run of trailing layers holding at least
    ``share`` of its trainable weights, or None (see the module's docstring).

    The cut is kept per structure (``models.structure``) and share: a job splits the version it starts
    from, the copy it trains and the result it scores, three models of one structure, and a split that
    traces took 3.8-4.6 ms of small_cnn and 14-15 ms of ResNet-18, one that reads the kept cut 1.1-1.4 and
    3.9-4.2 ms (``bench/structure_cache.py``). Each model gets modules of its own around copies of the
    kept graphs."""
    found = _net_and_classifier(model)
    if found is None:
        return None
    net, classifier = found
    key = structure(model)
    cut = remember(
        _CUTS, (key, float(share)) if key else None, lambda: _cut(model, net, classifier, share), 64
    )
    if cut is None:
        return None
    front = _Front(_module(net, cut.front, cut.constants), list(cut.names))
    tail = _LastLayers(_module(net, cut.tail, cut.constants), list(cut.names), net.get_submodule(classifier))
    if key is not None:  # the parts' own structures, for what is kept per structure of them
        front.structure_key, tail.structure_key = f"{key} front {share}", f"{key} tail {share}"
    return Split(front, tail)


@dataclass(frozen=True)
class _Cut:
    """Where a structure splits: the front's graph (the model's input to the values it hands on), the last
    layers' graph (those values to the classifier's input), the values' names, and the tensors the trace
    made of constants its forward creates (``torch.fx`` sets them on the model it traced, and no other
    model of the recipe has them)."""

    front: fx.Graph
    tail: fx.Graph
    names: tuple[str, ...]
    constants: dict[str, object]


_CUTS: dict[tuple[str, float], _Cut | None] = {}


def _module(net: nn.Module, graph: fx.Graph, constants: dict[str, object]) -> fx.GraphModule:
    """A module running a copy of ``graph`` (a graph belongs to one module) on ``net``'s own layers and
    weights, and the trace's constants."""
    copied = copy.deepcopy(graph)
    root: dict[str, object] = {}
    for node in copied.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            root[target] = constants[target] if target in constants else _attribute(net, target)
    return fx.GraphModule(root, copied)


def _attribute(module: nn.Module, target: str) -> object:
    return functools.reduce(getattr, target.split("."), module)


class _ModeTracer(fx.Tracer):
    """torch.fx's tracer, which also keeps as one call every module whose forward reads ``self.training``.
    Traced through, such a module's mode is the one it had when traced, fixed in the graph: timm's
    ``BatchNormAct2d`` (a BatchNorm with its activation, outside ``torch.nn``) normalised by each batch's
    statistics in the front's eval passes and wrote them into its running ones, so a published version
    carried test rows' statistics, and a 1-row size probe refused a good EfficientNet (a probe); timm's
    ``DropPath`` would drop paths at scoring. Kept whole, each follows the mode it is called in."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        kind: type = type(m)
        return super().is_leaf_module(m, module_qualified_name) or _reads_training(kind)


@functools.cache
def _reads_training(cls: type) -> bool:
    """Whether ``cls`` (or a class it inherits ``forward`` from, short of ``nn.Module``) reads
    ``self.training`` in ``forward``: the source is read once per class."""
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or "forward" not in vars(klass):
            continue
        try:
            return "self.training" in inspect.getsource(vars(klass)["forward"])
        except (OSError, TypeError):  # no source (a compiled or generated class): trace it as before
            return False
    return False


def _cut(model: nn.Module, net: nn.Module, classifier: str, share: float) -> _Cut | None:
    """The cut of ``net`` (``model``'s network, ending in its ``classifier``) at ``share``, or None."""
    # in eval mode: the root's own forward is always traced through, and what it reads of self.training
    # is fixed in the graph (timm's head dropout, F.dropout(..., training=self.training), would drop at
    # scoring; a review): fixed at eval, the last layers train without that dropout, and score exactly
    was_training = net.training
    net.eval()
    try:
        traced = fx.GraphModule(net, _ModeTracer().trace(net))
    except Exception:  # noqa: BLE001 - any tracing failure means: no split, run on the whole model
        return None
    finally:
        net.train(was_training)
    nodes = list(traced.graph.nodes)
    weights = {id(p): p for p in model.parameters() if p.requires_grad}
    owned = {n: _weights_of(traced, n) for n in nodes}
    layers = [(i, n) for i, n in enumerate(nodes) if n.op == "call_module" and owned[n] & weights.keys()]
    total = sum(p.numel() for p in weights.values())
    if total == 0 or not layers:
        return None
    held: dict[int, nn.Parameter] = {}
    cut = None
    for i, node in reversed(layers):
        held.update({k: weights[k] for k in owned[node] & weights.keys()})
        if sum(p.numel() for p in held.values()) >= share * total:
            cut = i
            break
    if cut is None or cut == layers[0][0]:
        return None  # the last layers would be the whole network
    front_nodes = [n for n in nodes[:cut] if n.op != "output"]
    tail_nodes = [n for n in nodes[cut:] if n.op != "output"]
    if any(n.op == "placeholder" for n in tail_nodes) or any(owned[n] & held.keys() for n in front_nodes):
        return None  # the front reads a weight the last layers train (tied): its output would go stale
    front_set = set(front_nodes)
    head = nodes[-1].args[0]
    if not (isinstance(head, fx.Node) and head.op == "call_module" and head.target == classifier):
        return None
    feats = head.args[0] if len(head.args) == 1 and not head.kwargs else None
    if not isinstance(feats, fx.Node) or head.users.keys() != {nodes[-1]}:
        return None
    crossing = [n for n in front_nodes if any(u not in front_set for u in n.users)]
    if not crossing:
        return None

    fg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in front_nodes:
        env[n] = fg.node_copy(n, lambda a: env[a])
    fg.output(tuple(env[c] for c in crossing))
    tg = fx.Graph()
    env2: dict[fx.Node, fx.Node] = {c: tg.placeholder(c.name) for c in crossing}
    for n in tail_nodes:
        if n is not head:
            env2[n] = tg.node_copy(n, lambda a: env2[a])
    tg.output(env2[feats])
    # what a get_attr reads that is not a weight or buffer (a constant the tracer made and set on the model
    # it traced, or a plain tensor of the model's): the same in every model of the recipe
    state = {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
    targets = {str(n.target) for n in nodes if n.op == "get_attr"} - state
    return _Cut(fg, tg, tuple(c.name for c in crossing), {t: _attribute(traced, t) for t in targets})


def _net_and_classifier(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The network to trace and the name of the classifier its forward must end in: our architectures
    (``Classifier``), and modules adapted to the features/head contract whose forward is their own (a
    torchvision model behind ``LinearHeadAdapter``). A Hugging Face model reads its inputs its own way
    and is not traced."""
    if isinstance(model, Classifier) and type(model).head is Classifier.head:
        return model, "classifier"
    if isinstance(model, LinearHeadAdapter) and type(model).run_wrapped is LinearHeadAdapter.run_wrapped:
        return model.wrapped, model.classifier_name
    return None


def _weights_of(traced: fx.GraphModule, node: fx.Node) -> set[int]:
    """ids of the tensors a module call or attribute read of the trace uses."""
    if node.op == "call_module":
        return {id(p) for p in traced.get_submodule(str(node.target)).parameters()}
    if node.op == "get_attr":
        return {id(getattr(traced, str(node.target), None))}
    return set()


@torch.no_grad()
def features(front: nn.Module, data: SampleDataset, device: torch.device) -> SampleDataset:
    """``data`` with each sample replaced by the front's output for it (eval mode, on CPU). Each batch is
    written into one preallocated tensor per cached value: concatenating the batches at the end held every
    row twice, so a cache at ``FEATURE_BYTES`` peaked at twice that (43k rows of 12 KB, a 0.54 GB cache:
    1.06-2.1 GB above the inputs before, 0.65-0.72 GB now; the time is the same within noise). On a CPU
    the batches are sized to the cache (``cpu_batch``): 512 rows of a 28x28 image took 2.9x as long."""
    was = front.training
    front.eval()
    out: dict[str, torch.Tensor] = {}
    start = 0
    try:
        for xb in in_order(data.x, cpu_batch(front, data.x, FEATURE_BATCH)):
            yb = B.to(front(B.to(xb, device)), "cpu")
            parts = yb if isinstance(yb, dict) else {"": yb}
            for k, v in parts.items():
                if k not in out:
                    out[k] = rows_like(v, len(data))
                out[k][start : start + len(v)] = v
            start += B.rows(yb)
    finally:
        front.train(was)
    return SampleDataset(out[""] if list(out) == [""] else out, data.y.clone(), list(data.ids))


def rows_like(v: torch.Tensor, n: int) -> torch.Tensor:
    """An empty (n, ...) tensor shaped, typed and laid out as ``v``'s rows (a channels-last front output
    stays channels-last, as concatenating it would have kept it)."""
    last = v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if last else torch.contiguous_format
    return torch.empty((n, *v.shape[1:]), dtype=v.dtype, memory_format=fmt)


def row_bytes(front: nn.Module, data: SampleDataset, device: torch.device) -> int:
    """Bytes of the front's output for one row of ``data`` (measured on its first row)."""
    one = features(front, data.subset(torch.arange(1)), device).x
    tensors = list(one.values()) if isinstance(one, dict) else [one]
    return sum(t.element_size() * t.numel() for t in tensors if isinstance(t, torch.Tensor))


def fits(split: Split, data: SampleDataset, rows: int, device: torch.device) -> bool:
    """Whether the front's outputs for ``rows`` rows like ``data``'s stay within ``FEATURE_BYTES``."""
    return rows == 0 or row_bytes(split.front, data, device) * rows <= FEATURE_BYTES
