"""Bring your own text model (issue 15): a tiny BERT built from its config.json (never from the hub),
registered through the HTTP API (a real uvicorn) with text datasets and their tokenizer, validated and
unlearned by the worker's own functions in-process; its v2 loads strictly into
AutoModelForSequenceClassification.from_config. Configs that would fetch code or do not fit are refused
at registration; a tokenizer the model was not trained with, or a model too large, makes it invalid."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file, load_model
from sqlalchemy import select
from transformers import AutoModelForSequenceClassification, BertConfig

from models.architectures import build_model, parameter_count
from models.datasets import load_text
from models.training import TrainRecipe, train
from models.unlearning.params import ADAM_LR_SHARE
from service.core.db.engine import session_scope
from service.core.db.tables import Model
from service.core.settings import Settings
from tests.factories import make_key
from tests.liveapp import LiveApp, prepared, serve
from tests.textdata import sentences, train_tokenizer, write_jsonl, write_text_csv
from workers.orchestrate import process_model
from workers.validate import validate_model

pytestmark = pytest.mark.slow
K, LENGTH = 3, 12
ARCH = "hf:sequence-classification"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveApp, httpx.Client]]:
    settings = prepared(
        Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE=f"q-{uuid.uuid4().hex[:8]}")  # type: ignore[call-arg]
    )
    with session_scope(settings.resolved_database_url) as s:
        key = make_key(s, scopes=("admin", "deletion:write", "jobs:read"))
    with serve(settings) as app, app.client(key) as http:
        yield app, http


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train/test text files, the tokenizer trained on them, and a tiny BERT trained from scratch and
    saved as transformers saves it (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("text")
    train_rows, test_rows = sentences(36, 0), sentences(18, 1)
    vocab = train_tokenizer(root / "tokenizer.json", [t for t, _ in train_rows + test_rows])
    train_ids = write_jsonl(root / "train.jsonl", train_rows, "tr")
    write_text_csv(root / "test.csv", test_rows, "te")
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH + 4,
        num_labels=K,
        hidden_dropout_prob=0.0,  # 36 sentences: without dropout it learns them in any seed tried
        attention_probs_dropout_prob=0.0,
    )
    features = {"type": "text", "tokenizer": str(root / "tokenizer.json"), "max_length": LENGTH}
    data = load_text("jsonl", root / "train.jsonl", features)
    # The product team's own training: any loop will do; the service's keeps this test short. The
    # adapter holds the transformers module itself (`wrapped`), which saves itself as transformers does.
    torch.manual_seed(0)
    adapted = build_model(ARCH, num_classes=K, config=config.to_dict())
    train(adapted, data, TrainRecipe(epochs=20, lr=3e-3, batch_size=6, optimizer="adam", weight_decay=0.0))
    adapted.wrapped.save_pretrained(root / "bert")
    return {"root": root, "train_ids": train_ids, "config": config}


def upload_text(http: httpx.Client, root: Path, name: str, file: str, kind: str, tokenizer: Path) -> str:
    r = http.post(
        "/v1/datasets/upload",
        data={"name": name, "kind": kind, "features": json.dumps({"type": "text", "max_length": LENGTH})},
        files={
            "file": (file, (root / file).read_bytes()),
            "tokenizer": ("tokenizer.json", tokenizer.read_bytes()),
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def register(
    http: httpx.Client, files: dict[str, Any], name: str, *, config: dict | None = None, **spec: Any
) -> httpx.Response:
    root = files["root"]
    tokenizer = spec.pop("tokenizer", root / "tokenizer.json")
    body = {
        "name": name,
        "architecture": ARCH,
        "num_classes": K,
        "train_dataset": spec.pop("train", None)
        or upload_text(http, root, f"{name}-train", "train.jsonl", "jsonl", tokenizer),
        "test_dataset": upload_text(http, root, f"{name}-test", "test.csv", "text_csv", tokenizer),
        **spec,
    }
    parts = {"checkpoint": ("model.safetensors", (root / "bert" / "model.safetensors").read_bytes())}
    if config is not None:
        parts["config"] = ("config.json", json.dumps(config).encode())
    return http.post("/v1/models", data={"spec": json.dumps(body)}, files=parts)


def model_id(app: LiveApp, name: str) -> str:
    with session_scope(app.db) as s:
        return s.scalars(select(Model.id).where(Model.name == name)).one()


def saved_config(files: dict[str, Any]) -> dict[str, Any]:
    return json.loads((files["root"] / "bert" / "config.json").read_text())


def test_a_tiny_bert_is_registered_validated_unlearned_and_published_loadable_from_its_config(
    live: tuple[LiveApp, httpx.Client], files: dict[str, Any], tmp_path: Path
) -> None:
    app, http = live
    recipe = {"epochs": 20, "lr": 3e-3, "batch_size": 6, "optimizer": "adam", "weight_decay": 0.0}
    r = register(http, files, "bert", config=saved_config(files), train_recipe=recipe)  # config: a file
    assert r.status_code == 202, r.text
    assert r.json()["arch_kwargs"]["config"]["model_type"] == "bert"
    mid = model_id(app, "bert")

    assert validate_model(app.settings, mid) == "ready"
    got = http.get("/v1/models/bert").json()
    assert got["status"] == "ready", got
    v1 = http.get("/v1/models/bert/versions/v1").json()
    assert v1["metrics"]["retain_accuracy"] > 0.9, v1["metrics"]  # it learnt the three topics

    train_ids = files["train_ids"]
    r = http.post("/v1/models/bert/deletion-requests", json={"sample_ids": train_ids[:3]})
    assert r.status_code == 202, r.text
    assert process_model(app.settings, mid) == "idle"  # UGradSL+ on input_ids / attention_mask batches
    req = http.get(f"/v1/deletion-requests/{r.json()['id']}").json()
    assert (req["state"], req["model_version"]) == ("completed", "v2"), req
    params = http.get(f"/v1/jobs/{req['job_id']}").json()["params"]
    assert (params["optimizer"], params["lr"]) == ("adam", 3e-3 * ADAM_LR_SHARE)  # Adam, as it was trained

    r = http.get("/v1/models/bert/versions/v2/checkpoint")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-checkpoint-sha256"]
    (tmp_path / "v2.safetensors").write_bytes(r.content)
    config = BertConfig.from_json_file(files["root"] / "bert" / "config.json")
    v2 = AutoModelForSequenceClassification.from_config(config)
    v2.load_state_dict(load_file(tmp_path / "v2.safetensors"), strict=True)  # transformers' own keys
    load_model(v2, str(tmp_path / "v2.safetensors"), strict=True)
    v1_module = AutoModelForSequenceClassification.from_config(config)
    load_model(v1_module, str(files["root"] / "bert" / "model.safetensors"), strict=True)
    changed = [k for k, v in v2.state_dict().items() if not torch.equal(v, v1_module.state_dict()[k])]
    assert changed, "v2 has the same weights as v1: nothing was unlearned"


def test_the_config_may_come_in_arch_kwargs_and_the_size_is_checked_on_meta(
    live: tuple[LiveApp, httpx.Client], files: dict[str, Any]
) -> None:
    app, http = live
    r = register(http, files, "inline", arch_kwargs={"config": saved_config(files)})
    assert r.status_code == 202, r.text
    assert validate_model(app.settings, model_id(app, "inline")) == "ready"

    large = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    config = {**large.to_dict(), "id2label": {str(i): f"L{i}" for i in range(K)}}
    config.pop("label2id")
    assert parameter_count(ARCH, num_classes=K, config=config) > 300_000_000  # counted on the meta device
    r = register(http, files, "large", config=config)
    assert r.status_code == 202, r.text
    assert validate_model(app.settings, model_id(app, "large")) == "invalid"
    detail = http.get("/v1/models/large").json()["status_detail"]
    assert (
        detail.startswith("ModelTooLarge: hf:sequence-classification has 335,")
        and "at most 100,000,000" in detail
    )


def test_a_tokenizer_the_model_was_not_trained_with_makes_it_invalid_saying_so(
    live: tuple[LiveApp, httpx.Client], files: dict[str, Any], tmp_path: Path
) -> None:
    app, http = live
    bigger = tmp_path / "tokenizer.json"
    words = [f"word{i}" for i in range(200)]
    train_tokenizer(bigger, [t for t, _ in sentences(36, 0)] + [" ".join(words)] * 2)
    r = register(http, files, "wrongtok", config=saved_config(files), tokenizer=bigger)
    assert r.status_code == 202, r.text
    assert validate_model(app.settings, model_id(app, "wrongtok")) == "invalid"
    detail = http.get("/v1/models/wrongtok").json()["status_detail"]
    vocab = saved_config(files)["vocab_size"]
    assert f"but the model's vocabulary has {vocab} entries" in detail, detail
    assert "Declare that tokenizer (features.tokenizer)" in detail


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"auto_map": {"AutoModelForSequenceClassification": "org/repo--model.Cls"}}, "would load code"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "would load code, weights or kernels"),
        ({"attn_implementation": "kernels-community/flash-attn"}, "must be one of ['eager', 'sdpa']"),
        ({"id2label": {"0": "a", "1": "b"}}, "config.id2label has 2 labels but num_classes is 3"),
        ({"id2label": {"a": "x", "b": "y", "c": "z"}}, "id2label's keys must be the class indices 0..2"),
        ({"id2label": {"0": "x", "1": "y", "3": "z"}}, "id2label's keys must be the class indices 0..2"),
        ({"id2label": ["x", "y", "z"]}, "config.id2label must be an object"),
        ({"model_type": "Not A Type!"}, "config.model_type must name a transformers model type"),
    ],
)
def test_configs_that_would_fetch_anything_or_do_not_fit_are_a_422(
    live: tuple[LiveApp, httpx.Client], files: dict[str, Any], change: dict, says: str
) -> None:
    _, http = live
    train = upload_text(http, files["root"], "t", "train.jsonl", "jsonl", files["root"] / "tokenizer.json")
    r = register(http, files, "refused", config={**saved_config(files), **change}, train=train)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]


def test_registration_shapes_that_are_a_422(
    live: tuple[LiveApp, httpx.Client], files: dict[str, Any]
) -> None:
    _, http = live
    root = files["root"]
    train = upload_text(http, root, "t", "train.jsonl", "jsonl", root / "tokenizer.json")
    cases = [
        ({}, None, "needs its config.json"),
        ({"arch_kwargs": {"config": saved_config(files)}}, saved_config(files), "give the config once"),
        (
            {"arch_kwargs": {"config": saved_config(files), "hidden": 3}},
            None,
            "takes arch_kwargs.config only",
        ),
        ({"architecture": "hf:token-classification"}, saved_config(files), "unknown hf task"),
        ({"architecture": "mlp"}, saved_config(files), "a `config` file applies to hf: architectures"),
    ]
    for spec, config, says in cases:
        r = register(http, files, "refused", config=config, train=train, **spec)
        assert r.status_code == 422, (spec, r.text)
        assert says in r.json()["detail"], (spec, r.json()["detail"])
