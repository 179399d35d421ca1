"""Whether a model can read a dataset's samples, explained in words a product engineer understands.

A registered model is scored on its own datasets before it is accepted. When the samples are not the
shape the architecture reads (e.g. (28, 28) uint8 pixels for a CNN expecting (1, 28, 28) floats), PyTorch
fails somewhere inside the first layer with a message about tensors ("expected input[1, 256, 28, 28] to
have 1 channels"). This module says instead what the model expects, what the data holds, and which feature
declaration (``models.declarations``) would fix it: first by comparing one sample's shape with
``model_input_shape`` (where the architecture can tell), then by running the model on one small batch and
wrapping any failure in the same explanation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models import batches as B
from models.adapters import NotAdaptable
from models.architectures import model_input_shape
from models.datasets import SampleDataset, StoredForm
from models.declarations import ImageFeatures, describe, fits, suggest
from models.streamed import LazyRows

_RAW_SHOWN = 300  # characters of the framework's own message kept in an explanation


class InputMismatch(ValueError):
    """A model cannot read a dataset's samples; the message explains it and names the fix."""


@dataclass(frozen=True)
class Role:
    """A dataset as the explanation names it: its role ("training set") and its registered name."""

    role: str
    name: str
    data: SampleDataset


def expected_shape(architecture: str, arch_kwargs: Mapping[str, Any]) -> tuple[int, ...] | None:
    """One sample's shape the architecture reads, or None where it cannot tell."""
    try:
        shape = model_input_shape(architecture, **arch_kwargs)
    except Exception:  # noqa: BLE001 - an architecture that cannot tell is not an error here
        return None
    return tuple(int(d) for d in shape) if shape else None


def explain(
    architecture: str,
    arch_kwargs: Mapping[str, Any],
    expected: tuple[int, ...] | None,
    ds: Role,
    *,
    model_error: str | None = None,
) -> str:
    """The explanation of a model that cannot read `ds`: what it expects, what the data holds, the fix."""
    x = ds.data.x
    if isinstance(x, dict) or architecture.startswith("hf:"):
        return explain_text(architecture, arch_kwargs, expected, ds, model_error=model_error)
    got = B.sample_shape(x)
    assert isinstance(got, tuple)  # images: a tensor, or rows on disk
    stored = ds.data.stored
    kwargs = {k: v for k, v in arch_kwargs.items() if k != "num_classes"}
    model = f"the model `{architecture}` with arch_kwargs {describe(kwargs)}"
    if expected is not None:
        model += f" expects one sample of shape {expected}"
    else:
        model += " cannot read one batch of its data"
    if stored is not None and stored.features is not None:
        held = (
            f"the {ds.role} `{ds.name}` holds samples of shape {stored.sample_shape} ({stored.dtype}), "
            f"which its declaration {describe(stored.features.to_dict())} makes {got}"
        )
    elif stored is not None:
        held = f"the {ds.role} `{ds.name}` holds samples of shape {stored.sample_shape} ({stored.dtype})"
    else:
        held = f"the {ds.role} `{ds.name}` holds samples of shape {got} ({_dtype(x)})"
    text = f"{model}; {held}."
    if model_error is not None:
        raw = model_error if len(model_error) <= _RAW_SHOWN else model_error[:_RAW_SHOWN] + "..."
        text += f" The model failed on one batch of it ({raw})."
    text += " " + _fix(stored.sample_shape if stored else got, stored, expected, x)
    return text


def explain_text(
    architecture: str,
    arch_kwargs: Mapping[str, Any],
    expected: tuple[int, ...] | None,
    ds: Role,
    *,
    model_error: str | None = None,
) -> str:
    """``explain`` where text is involved: a text model, text data, or both."""
    x = ds.data.x
    model = f"the model `{architecture}`{_config_words(arch_kwargs)}"
    if expected is not None:
        model += f" expects one sample of shape {expected}"
    elif architecture.startswith("hf:"):
        model += " reads tokenized text (input_ids, attention_mask)"
    else:
        model += " cannot read one batch of its data"
    stored = ds.data.stored
    if not isinstance(x, dict):
        held = f"the {ds.role} `{ds.name}` holds samples of shape {B.sample_shape(x)} ({_dtype(x)}), not text"
        fix = "Register a text dataset (kind jsonl or text_csv, with a text declaration) for a text model."
    else:
        shapes = ", ".join(f"{k} {v}" for k, v in B.sample_shape(x).items())  # type: ignore[union-attr]
        how = (
            f" by its declaration {describe(stored.features.to_dict())}" if stored and stored.features else ""
        )
        held = f"the {ds.role} `{ds.name}` holds text tokenized{how} into {shapes}"
        fix = (
            "Register an image or vector dataset for this model, or a text architecture "
            "(hf:sequence-classification) for this text."
            if not architecture.startswith("hf:")
            else "Declare the tokenizer the model was trained with, and a max_length the model accepts "
            "(at most its max_position_embeddings)."
        )
    text = f"{model}; {held}."
    if model_error is not None:
        raw = model_error if len(model_error) <= _RAW_SHOWN else model_error[:_RAW_SHOWN] + "..."
        text += f" The model failed on one batch of it ({raw})."
    return f"{text} {fix}"


def _config_words(arch_kwargs: Mapping[str, Any]) -> str:
    """A Hugging Face config in a few words (the whole config would bury the explanation)."""
    config = arch_kwargs.get("config")
    if not isinstance(config, Mapping):
        kwargs = {k: v for k, v in arch_kwargs.items() if k != "num_classes"}
        return f" with arch_kwargs {describe(kwargs)}"
    said = [
        f"{k} {config[k]}" for k in ("model_type", "vocab_size", "max_position_embeddings") if k in config
    ]
    return f" ({', '.join(said)})" if said else ""


def vocabulary_problem(model: nn.Module, ds: Role) -> str | None:
    """Why the dataset's token ids do not fit the model's input embedding (None: they fit, or the model
    has no Hugging Face input embedding to compare with)."""
    x = ds.data.x
    if not isinstance(x, dict) or "input_ids" not in x or len(ds.data) == 0:
        return None
    get = getattr(getattr(model, "wrapped", model), "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Embedding):
        return None
    top = int(x["input_ids"].max())
    if top < embedding.num_embeddings:
        return None
    return (
        f"the {ds.role} `{ds.name}` holds token ids up to {top}, but the model's vocabulary has "
        f"{embedding.num_embeddings} entries: its tokenizer is not the one the model was trained with. "
        "Declare that tokenizer (features.tokenizer) at dataset registration."
    )


def _dtype(x: B.Inputs) -> str:
    return "float32" if isinstance(x, LazyRows) else str(x.dtype).removeprefix("torch.")  # type: ignore[union-attr]


def _fix(
    sample_shape: tuple[int, ...],
    stored: StoredForm | None,
    expected: tuple[int, ...] | None,
    x: B.Inputs,
) -> str:
    dtype = stored.dtype if stored is not None else _dtype(x)
    current = stored.features if stored is not None else None
    if not isinstance(current, ImageFeatures):
        current = None
    if expected is None:  # the architecture cannot say what it reads: the data or the model may be at
        # fault (a probe's plugin that raised in forward was told only to declare its data)
        return (
            "If the samples as shown are what the model reads, the failure is in the model's own code (its "
            "error above). Otherwise declare `features` (layout, scale, size) at dataset registration so "
            "that they are, or register the model with arch_kwargs that fit the data."
        )
    proposal = suggest(sample_shape, dtype, expected, current)
    if proposal is not None:
        return f"Declare `features: {describe(proposal)}` at dataset registration."
    return (
        f"No feature declaration turns samples of shape {tuple(sample_shape)} into {expected}: register "
        "the model with arch_kwargs that fit the data, or register data of the shape the model reads."
    )


def non_finite_problem(ds: Role) -> str | None:
    """Why a dataset held in memory cannot train or score anything: NaN or infinite inputs. Without this
    check such data reached the model, and validation blamed the architecture ("max difference nan").
    Rows kept on disk are not read here (that would read the whole set); a non-finite one fails its job."""
    x = ds.data.x
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    bad = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(1)).flatten()
    if len(bad) == 0:
        return None
    first = ", ".join(repr(ds.data.ids[i]) for i in bad[:5].tolist())
    return (
        f"the {ds.role} `{ds.name}` holds NaN or infinite input values in {len(bad)} of its {len(x)} "
        f"samples (first: {first}); clean or drop those samples and register the dataset again"
    )


def check_model_reads(
    model: nn.Module,
    architecture: str,
    arch_kwargs: Mapping[str, Any],
    datasets: Sequence[Role],
    *,
    batch: int = 2,
) -> None:
    """InputMismatch (explained) unless `model` reads one sample of each dataset: its shape must fit what
    the architecture says it reads, and one batch must go through the model to (B, classes) logits."""
    expected = expected_shape(architecture, arch_kwargs)
    for ds in datasets:
        x = ds.data.x
        if expected is not None and (
            isinstance(x, dict) or not fits(B.sample_shape(x), expected)  # type: ignore[arg-type]
        ):
            raise InputMismatch(explain(architecture, arch_kwargs, expected, ds))
        problem = vocabulary_problem(model, ds) or non_finite_problem(ds)
        if problem is not None:
            raise InputMismatch(problem)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        for ds in datasets:
            if len(ds.data) == 0:
                continue
            xb = B.to(B.window(ds.data.x, 0, batch), device)
            n = B.rows(xb)
            try:
                with torch.no_grad():
                    out = model(xb)
            except NotAdaptable:  # the model, not the data: said as it is
                raise
            except Exception as exc:  # noqa: BLE001 - the framework's failure becomes the explanation
                error = f"{type(exc).__name__}: {exc}"
                raise InputMismatch(
                    explain(architecture, arch_kwargs, expected, ds, model_error=error)
                ) from exc
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                error = f"{n} samples gave output {shape}, not one row of class scores per sample"
                raise InputMismatch(explain(architecture, arch_kwargs, expected, ds, model_error=error))
            _check_longest_text(model, ds, device)
    finally:
        model.train(was_training)


def _check_longest_text(model: nn.Module, ds: Role, device: torch.device) -> None:
    """InputMismatch unless the model reads the dataset's longest text: a RoBERTa-style model, whose
    positions start after the padding token's, reads every shorter text and fails only on one that fills
    ``max_length`` (a probe's model was `ready`, then its first deletion met such a text among the rows
    that calibrate, with torch's "index 16 is out of bounds")."""
    x = ds.data.x
    if not isinstance(x, dict) or "attention_mask" not in x or len(ds.data) == 0:
        return
    lengths = x["attention_mask"].sum(1)
    row = int(lengths.argmax())
    try:
        with torch.no_grad():
            model(B.to(B.window(x, row, row + 1), device))
    except Exception as exc:  # noqa: BLE001 - the framework's failure becomes the explanation
        tokens, most = int(lengths[row]), int(x["attention_mask"].shape[1])
        raise InputMismatch(
            f"the model fails on the longest text of the {ds.role} `{ds.name}` (sample "
            f"{ds.data.ids[row]!r}, {tokens} of features.max_length {most} tokens): "
            f"{type(exc).__name__}: {exc}. A model whose positions start after its padding token's "
            "(RoBERTa's) needs max_position_embeddings of at least max_length + pad_token_id + 1: "
            "register the dataset with a smaller max_length, or the model with more positions"
        ) from exc


def check_every_row_reads(ds: Role, *, batch: int = 256) -> None:
    """InputMismatch unless every sample of a dataset kept on disk decodes, to one shape throughout.

    Validation scores the training set and the test set's scoring part, but a job alone read the data
    that calibrates (the held-out set, or the test set's other half): a client's manifest with one image
    of another size became ``ready`` and every deletion then failed on it. Rows held in memory were read
    whole at load, so only rows on disk are read here, once, without the model."""
    x = ds.data.x
    if not isinstance(x, LazyRows):
        return
    first: object = None  # one sample's shape (a tuple), as the first rows read
    for start in range(0, len(ds.data), batch):
        try:
            rows = B.window(x, start, start + batch)
        except Exception as exc:  # noqa: BLE001 - a reader's failure is this dataset's, said with its name
            raise InputMismatch(f"the {ds.role} `{ds.name}` cannot be read in full: {exc}") from exc
        shape = B.sample_shape(rows)
        if first is None:
            first = shape
        elif shape != first:
            raise InputMismatch(
                f"the {ds.role} `{ds.name}` holds samples of different shapes: rows from {start} read as "
                f"{shape}, its first rows as {first}; declare features.size at registration to resize them"
            )
