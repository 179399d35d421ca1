"""hf:sequence-classification in the ML core: transformers' own state_dict keys, the features/head
contract on dict batches, the size on the meta device, and a model whose classifier is not its last step
(GPT-2 classifies every token, then pools) refused in words."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, GPT2Config, RobertaConfig

from models.adapters import NotAdaptable, check_contract
from models.architectures import build_model, parameter_count
from models.datasets import SampleDataset
from models.inputs import InputMismatch, Role, check_model_reads
from models.sources import check_hf_kwargs

ARCH = "hf:sequence-classification"
TINY = BertConfig(
    vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=16, num_labels=3,
)  # fmt: skip


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(1, 30, (n, 8)), "attention_mask": torch.ones(n, 8, dtype=torch.long)}


def test_the_adapted_model_has_transformers_keys_and_keeps_the_contract() -> None:
    model = build_model(ARCH, num_classes=3, config=TINY.to_dict())
    plain = AutoModelForSequenceClassification.from_config(TINY)
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    check_contract(model, batch(), 3)
    model.eval()
    plain.eval()
    x = batch()
    assert torch.allclose(model(x), plain(**x).logits)
    assert parameter_count(ARCH, num_classes=3, config=TINY.to_dict()) == sum(
        p.numel() for p in plain.parameters()
    )


def test_num_labels_follow_num_classes_and_a_tensor_input_is_refused_in_words() -> None:
    config = {k: v for k, v in TINY.to_dict().items() if k not in ("id2label", "label2id")}
    model = build_model(ARCH, num_classes=5, config=config)
    assert model(batch()).shape == (4, 5)
    with pytest.raises(TypeError, match="reads tokenized text"):
        model(torch.zeros(2, 8))


def test_a_model_that_classifies_before_pooling_is_not_adaptable() -> None:
    config = GPT2Config(
        vocab_size=30, n_embd=16, n_layer=1, n_head=2, n_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=1, num_labels=3,
    )  # fmt: skip
    kwargs = {"num_classes": 3, "config": config.to_dict()}
    model = build_model(ARCH, **kwargs)
    data = SampleDataset(batch(), torch.tensor([0, 1, 2, 0]), list("abcd"))
    with pytest.raises(NotAdaptable, match="GPT2ForSequenceClassification applies its classifier 'score'"):
        check_model_reads(model, ARCH, kwargs, [Role("training set", "news", data)])


def test_a_roberta_whose_positions_a_full_text_overruns_is_refused_naming_the_fix() -> None:
    """RoBERTa's positions start after its padding token's: with 16 positions it reads every text but
    one of 16 tokens. Validation read only the first rows, and a probe's model met such a text in its
    first deletion, with torch's "index 16 is out of bounds"."""
    config = RobertaConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, pad_token_id=1, num_labels=3,
    )  # fmt: skip
    kwargs = {"num_classes": 3, "config": config.to_dict()}
    model = build_model(ARCH, **kwargs)
    x = {"input_ids": torch.randint(2, 30, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    x["attention_mask"][:3, 8:] = 0  # the first rows are short; the last fills max_length
    x["input_ids"][:3, 8:] = 1
    data = SampleDataset(x, torch.tensor([0, 1, 2, 0]), ["a", "b", "c", "long"])
    with pytest.raises(
        InputMismatch, match=r"longest text of the held-out set `news` \(sample 'long', 16 of"
    ):
        check_model_reads(model, ARCH, kwargs, [Role("held-out set", "news", data)])
    short = SampleDataset({k: v[:3] for k, v in x.items()}, torch.tensor([0, 1, 2]), ["a", "b", "c"])
    check_model_reads(model, ARCH, kwargs, [Role("held-out set", "news", short)])


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({}, "needs its config.json"),
        ({"config": "bert"}, "must be an object"),
        ({"config": {"model_type": "bert", "auto_map": {"x": "y"}}}, "would load code"),
        ({"config": {"model_type": "bert", "num_labels": 2}}, "num_labels 2 differs"),
        ({"config": {"model_type": "bert"}, "pretrained": True}, "takes arch_kwargs.config only"),
    ],
)
def test_hf_kwargs_are_checked_without_torch(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_hf_kwargs(kwargs, 3)


def test_an_unknown_model_type_is_said_in_one_line() -> None:
    """transformers' own error listed every model type it has: 11 kB in a model's status_detail (a probe)."""
    with pytest.raises(ValueError, match="model_type 'notatype' is not a model type transformers") as e:
        build_model(ARCH, num_classes=3, config={"model_type": "notatype"})
    assert len(str(e.value)) < 200
