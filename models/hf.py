"""Hugging Face ``transformers`` classifiers, built from a config and never from the hub.

``hf:sequence-classification`` with ``arch_kwargs = {"config": {...}}`` (the ``config.json`` that
``save_pretrained`` writes, as a JSON object) builds ``AutoModelForSequenceClassification.from_config``
with ``num_labels`` = the model's ``num_classes``, in float32, with no pretrained weights: the weights
are the uploaded checkpoint (the ``model.safetensors`` that ``save_pretrained`` writes, loaded strictly).
Nothing here downloads: no ``from_pretrained``, no remote code (``auto_map`` is refused), no
quantization, no hub attention kernels; ``HF_HUB_OFFLINE`` is set before transformers is imported.

The module is wrapped in ``HFSequenceAdapter``, a ``LinearHeadAdapter`` (``models.adapters``): the
service's ``features``/``head`` contract from one forward pass (BERT's features are the input of its
``classifier`` Linear: the dropped-out pooled output), ``state_dict`` keys exactly transformers' own, and
a forward that takes the dict of tensors a text dataset holds (``input_ids``, ``attention_mask``...) and
returns the logits tensor.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.adapters import LinearHeadAdapter, NotAdaptable, find_classifier
from models.batches import Loaded
from models.sources import check_hf_config

# Nothing may reach the hub at run time, whatever the environment says otherwise.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TASKS = {"sequence-classification": "AutoModelForSequenceClassification"}


class HFSequenceAdapter(LinearHeadAdapter):
    """A transformers ``*ForSequenceClassification`` module as a service classifier: ``forward(batch)``
    takes a dict of tensors and returns (B, K) logits."""

    def __init__(self, net: nn.Module, classifier: str) -> None:
        super().__init__(net, classifier)
        accepted = inspect.signature(net.forward).parameters
        self.input_names = tuple(
            n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted
        )

    def run_wrapped(self, x: Loaded) -> Any:
        if isinstance(x, torch.Tensor):
            raise TypeError(
                f"{type(self.wrapped).__name__} reads tokenized text (a dict of input_ids and "
                f"attention_mask), not a tensor of shape {tuple(x.shape)}"
            )
        if "input_ids" not in x:
            raise TypeError(f"{type(self.wrapped).__name__} needs input_ids; the batch holds {sorted(x)}")
        return self.wrapped(**{k: v for k, v in x.items() if k in self.input_names}, return_dict=True)

    def own(self, x: Loaded) -> Any:
        return self.run_wrapped(x).logits

    def features(self, x: Loaded) -> torch.Tensor:
        f = super().features(x)
        if f.ndim != 2:  # e.g. GPT-2's `score`: applied to every token, pooled afterwards
            raise NotAdaptable(
                f"{type(self.wrapped).__name__} applies its classifier {self.classifier_name!r} to "
                f"features of shape {tuple(f.shape)}, not one (batch, D) row per text (it pools after "
                "classifying), so its features and head cannot be separated; hf:sequence-classification "
                "needs a model whose classifier is its last step, as BERT's is"
            )
        return f


def config_from_dict(raw: Mapping[str, Any], num_classes: int) -> Any:
    """A transformers config from a ``config.json`` object, with ``num_labels = num_classes``.
    ValueError for a config the service does not build (see ``models.sources.check_hf_config``)."""
    from transformers import AutoConfig

    check_hf_config(raw, num_classes)
    values = dict(raw)
    model_type = values.pop("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:  # transformers' own error lists all its types: 11 kB of detail
        import transformers

        raise ValueError(
            f"config.model_type {model_type!r} is not a model type transformers {transformers.__version__} "
            "knows (e.g. bert, roberta, distilbert, albert, deberta-v2, electra)"
        )
    config = AutoConfig.for_model(model_type, **values)
    if config.num_labels != num_classes:
        config.num_labels = num_classes  # also resets id2label / label2id to num_classes defaults
    return config


def build(task: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``hf:<task>`` with arch_kwargs ``{"num_classes": K, "config": {...}}``, adapted."""
    if task not in TASKS:
        from models.architectures import UnknownArchitecture  # which imports this module when it builds

        raise UnknownArchitecture(f"no hf task {task!r}; known: {', '.join(TASKS)}")
    unknown = sorted(set(kwargs) - {"num_classes", "config"})
    if unknown:
        raise TypeError(f"hf:{task} takes arch_kwargs config (and num_classes) only, not {unknown}")
    if "config" not in kwargs:
        raise TypeError(f"hf:{task} needs arch_kwargs.config: the model's config.json, as an object")
    import transformers

    config = config_from_dict(kwargs["config"], int(kwargs.get("num_classes", 2)))
    auto = getattr(transformers, TASKS[task])
    module = auto.from_config(config, dtype=torch.float32)
    return HFSequenceAdapter(module, find_classifier(module))
