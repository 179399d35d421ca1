"""What registration and a policy change check before a worker ever sees the model: every dataset's labels
are class indices of the model (a test or held-out label out of range used to pass, then make the model
`invalid`, or `ready` with every deletion failing), and `train_recipe` parses as the `retrain` method's
params, as the worker parses them (a bad recipe used to pass, then fail every retrain job)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors
from sqlalchemy import select

from service.api.app import create_app
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, Model
from service.core.registry import register_dataset
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.liveapp import prepared

CHECKPOINT = save_safetensors({"w": np.zeros((4, 4), dtype=np.float32)})


@dataclass
class Api:
    client: TestClient
    url: str
    datasets: dict[str, str]  # name -> id

    def register(self, **spec: Any) -> Any:
        body = {
            "name": "m",
            "architecture": "mlp",
            "num_classes": 3,
            "train_dataset": self.datasets["train"],
            "test_dataset": self.datasets["test"],
            **spec,
        }
        files = {"checkpoint": ("v1.safetensors", CHECKPOINT)}
        return self.client.post("/v1/models", data={"spec": json.dumps(body)}, files=files)

    def model_names(self) -> list[str]:
        return [m["name"] for m in self.client.get("/v1/models").json()]

    def recipe(self, name: str) -> dict[str, Any]:
        with session_scope(self.url) as s:
            return dict(s.scalars(select(Model.train_recipe).where(Model.name == name)).one())


LABELS = {
    "train": [0, 1, 2, 0, 1, 2],
    "test": [0, 1, 2, 2],
    "heldout": [2, 1, 0],
    "test-high": [3, 7, 9],
    "heldout-high": [0, 9, 1],
    "test-negative": [0, -1, 2],
    "heldout-negative": [-2, 0],
    "test-300": [i % 3 for i in range(300)],
    "test-150": [i % 3 for i in range(150)],
}


@pytest.fixture
def api(backend: Backend) -> Iterator[Api]:
    """Datasets named as in LABELS, model `toy` (10 classes) for PATCH, and an admin client."""
    settings = prepared(backend.settings())
    url = settings.resolved_database_url
    with session_scope(url) as s:
        make_model(s, name="toy")
        datasets = {
            name: register_dataset(
                s,
                tenant="default",
                name=name,
                kind="npz",
                uri=f"/nonexistent/{name}.npz",
                sample_ids=[f"{name}-{i}" for i in range(len(labels))],
                labels=labels,
                actor="test",
            ).id
            for name, labels in LABELS.items()
        }
        admin = make_key(s, scopes=("admin",))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {admin}"}) as client:
        yield Api(client, url, datasets)


@pytest.mark.parametrize(
    ("field", "dataset", "says"),
    [
        ("test_dataset", "test-high", "test labels span [3, 9] but num_classes is 3"),
        ("test_dataset", "test-negative", "test labels span [-1, 2] but num_classes is 3"),
        ("heldout_dataset", "heldout-high", "held-out labels span [0, 9] but num_classes is 3"),
        ("heldout_dataset", "heldout-negative", "held-out labels span [-2, 0] but num_classes is 3"),
    ],
)
def test_a_test_or_heldout_set_with_labels_outside_the_classes_is_a_422_naming_it(
    api: Api, field: str, dataset: str, says: str
) -> None:
    r = api.register(**{field: api.datasets[dataset]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert says in body["detail"] and repr(dataset) in body["detail"], body["detail"]
    assert body["errors"][0]["loc"] == ["spec", field]
    assert "m" not in api.model_names()  # nothing registered
    r = api.register(heldout_dataset=api.datasets["heldout"])  # the same model with sets in range
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("test_dataset", "test_dataset must not be the training set"),
        ("heldout_dataset", "heldout_dataset must be neither the training nor the test set"),
    ],
)
def test_a_test_or_heldout_set_that_is_the_training_set_is_a_422(api: Api, field: str, says: str) -> None:
    """Scored on its own training rows, a model would show test accuracy 100% and no attack could tell
    D_f from data it never saw: a client's registration did that and every job looked perfect."""
    r = api.register(**{field: api.datasets["train"]})
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    assert "m" not in api.model_names()


def test_a_test_or_heldout_set_that_is_the_same_data_registered_again_is_a_422(api: Api) -> None:
    """A probe registered its test file a second time and named the copy as the held-out set: the ids
    differed, so the method calibrated on the data it was scored on."""
    with session_scope(api.url) as s:
        copies = {}
        for name, of, digest in (("test-copy", "test", "a" * 64), ("train-copy", "train", "b" * 64)):
            s.get_one(Dataset, api.datasets[of]).sha256 = digest
            copies[name] = register_dataset(
                s, tenant="default", name=name, kind="npz", uri=f"/elsewhere/{name}.npz",
                sample_ids=[f"{name}-{i}" for i in range(len(LABELS[of]))], labels=LABELS[of],
                actor="test", sha256=digest,
            ).id  # fmt: skip
    r = api.register(heldout_dataset=copies["test-copy"])
    assert r.status_code == 422, r.text
    assert "neither the training nor the test set" in r.json()["detail"]
    assert "registrations of the same data" in r.json()["detail"]
    r = api.register(test_dataset=copies["train-copy"])
    assert r.status_code == 422 and "must not be the training set" in r.json()["detail"], r.text
    assert "m" not in api.model_names()
    # a manifest's hash is its own text's: the same text in the same folder is the same data, in another
    # folder it names other images
    with session_scope(api.url) as s:
        manifests = {
            name: register_dataset(
                s,
                tenant="default",
                name=name,
                kind="csv_manifest",
                uri=uri,
                sample_ids=["a", "b", "c"],
                labels=[2, 1, 0],
                actor="test",
                sha256="c" * 64,
            ).id  # fmt: skip
            for name, uri in (
                ("m1", "/data/x/test.csv"),
                ("m2", "/data/x/./test.csv"),
                ("m3", "/data/y/test.csv"),
            )
        }
    r = api.register(test_dataset=manifests["m1"], heldout_dataset=manifests["m2"])
    assert r.status_code == 422 and "registrations of the same data" in r.json()["detail"], r.text
    assert api.register(test_dataset=manifests["m1"], heldout_dataset=manifests["m3"]).status_code == 202


def test_a_dataset_named_where_its_id_belongs_is_a_422_giving_the_id(api: Api) -> None:
    """The CLI's --train takes names and the API ids: a client sent the name and was told the dataset was
    not registered."""
    r = api.register(train_dataset="train")
    assert r.status_code == 422, r.text
    assert (
        r.json()["detail"]
        == f"'train' is a dataset's name; a model spec takes its id: {api.datasets['train']!r}"
    )
    r = api.register(train_dataset="nothing-by-that-name")
    assert r.status_code == 422 and "is not registered (POST /v1/datasets first)" in r.json()["detail"]


def test_training_labels_are_still_checked(api: Api) -> None:
    r = api.register(train_dataset=api.datasets["test-high"])
    assert r.status_code == 422 and "training labels span [3, 9]" in r.json()["detail"]


@pytest.mark.parametrize(
    ("recipe", "says"),
    [
        ({"epochs": "x"}, "retrain.epochs must be an integer, got 'x'"),
        ({"epochs": 2.5}, "retrain.epochs must be an integer, got 2.5"),
        ({"lr": -1}, "retrain.lr must be in"),
        ({"epochs": 0}, "retrain.epochs must be in [1, 1000], got 0"),
        ({"optimizer": "lion"}, "retrain.optimizer must be one of ['sgd', 'adam', 'adamw']"),
        ({"bogus": 1, "epochs": 3}, "unknown retrain param(s): bogus"),
    ],
)
def test_a_train_recipe_the_retrain_method_cannot_read_is_a_422_naming_the_field(
    api: Api, recipe: dict[str, Any], says: str
) -> None:
    r = api.register(train_recipe=recipe)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"] and r.json()["errors"][0]["loc"] == ["spec", "train_recipe"]
    assert "m" not in api.model_names()

    r = api.client.patch("/v1/models/toy", json={"train_recipe": recipe})
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"] and r.json()["errors"][0]["loc"] == ["body", "train_recipe"]
    assert api.recipe("toy") == {}  # unchanged by the refusal


def test_a_valid_train_recipe_registers_and_patches(api: Api) -> None:
    recipe = {"epochs": 5, "lr": 0.1, "batch_size": 32, "optimizer": "adam", "schedule": "constant"}
    r = api.register(train_recipe=recipe)
    assert r.status_code == 202, r.text
    assert api.recipe("m") == recipe
    assert r.json()["train_recipe"] == recipe  # and a client can read it back (it could only write it)
    r = api.client.patch("/v1/models/toy", json={"train_recipe": {"epochs": 2, "seed": 7}})
    assert r.status_code == 200, r.text
    assert api.recipe("toy") == {"epochs": 2, "seed": 7}
    assert r.json()["train_recipe"] == api.client.get("/v1/models/toy").json()["train_recipe"]
    assert api.client.get("/v1/models/toy").json()["train_recipe"] == {"epochs": 2, "seed": 7}


def test_a_model_registered_without_gates_is_held_to_a_test_accuracy_drop_and_one_may_opt_out(
    api: Api,
) -> None:
    """A probe's registered model had no gates at all, and a run that left it predicting one class was
    published; a spec that leaves gates out now gets a collapse guard where at least 100 test rows score
    the model (without a held-out set, half the test set does): on fewer, two flipped rows are 10 points.
    `{}` still means none, and a spec's own gates replace the guard."""
    ds = api.datasets
    guards = {
        "max_test_accuracy_drop": 0.1,
        "max_forget_accuracy_excess_se": 3.0,
        "max_forgotten_class_accuracy": 0.5,
    }
    cases = [
        ({"name": "big", "test_dataset": ds["test-300"]}, guards),
        ({"name": "halved", "test_dataset": ds["test-150"]}, {}),  # 75 rows score it
        (
            {"name": "whole", "test_dataset": ds["test-150"], "heldout_dataset": ds["heldout"]},
            guards,
        ),  # fmt: skip
        ({"name": "tiny"}, {}),
        ({"name": "bare", "test_dataset": ds["test-300"], "gates": {}}, {}),
        (
            {"name": "own", "test_dataset": ds["test-300"], "gates": {"min_mia_score": 0.2}},
            {"min_mia_score": 0.2},
        ),
    ]
    for spec, gates in cases:
        r = api.register(**spec)
        assert r.status_code == 202, r.text
        assert r.json()["gates"] == gates, spec["name"]
    # the audit log holds the policy the model was registered with, the gates the service chose included
    from service.core.db.tables import AuditEvent

    with session_scope(api.url) as s:
        registered = {
            e.data["name"]: e.data
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "model.registered"))
        }
    big = api.client.get("/v1/models/big").json()
    assert registered["big"]["policy"] == {
        f: big[f]
        for f in ("default_method", "default_params", "fallback_methods", "gates", "train_recipe")
        + ("time_limit_seconds", "retrain_above_share", "retrain_above_class_share")
    }
    assert registered["big"]["policy"]["gates"] == guards and registered["bare"]["policy"]["gates"] == {}
    assert registered["whole"]["heldout_dataset"] == ds["heldout"]


def test_an_invalid_models_name_is_given_up_to_a_corrected_registration(api: Api) -> None:
    """An invalid model never accepts a request; a registration mistake used to keep its name taken for
    good (409). The corrected registration takes the name, the invalid one is renamed, with an audit
    event, and a model that is not invalid still holds its name."""
    from service.core.db.tables import AuditEvent
    from service.core.states import ModelStatus

    first = api.register(name="wine")
    assert first.status_code == 202, first.text
    assert api.register(name="wine").status_code == 409  # validating: still its name
    with session_scope(api.url) as s:
        invalid = s.scalars(select(Model).where(Model.name == "wine")).one()
        invalid.status, first_id = ModelStatus.INVALID, invalid.id
    again = api.register(name="wine")
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "validating"
    retired = f"wine.invalid-{first_id[:8]}"
    assert sorted(n for n in api.model_names() if n.startswith("wine")) == ["wine", retired]
    assert api.client.get(f"/v1/models/{retired}").json()["status"] == "invalid"
    with session_scope(api.url) as s:
        renames = [e.data for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "model.updated"))]
    assert {"name": {"from": "wine", "to": retired}} in renames
    assert api.register(name="wine").status_code == 409  # the new one is not invalid
    # where a model already has the short name, the whole id is used: it was a 409 naming "wine" (a probe)
    with session_scope(api.url) as s:
        invalid = s.scalars(select(Model).where(Model.name == "wine")).one()
        invalid.status, second_id = ModelStatus.INVALID, invalid.id
    assert api.register(name=f"wine.invalid-{second_id[:8]}").status_code == 202
    third = api.register(name="wine")
    assert third.status_code == 202, third.text
    assert api.client.get(f"/v1/models/wine.invalid-{second_id}").json()["status"] == "invalid"


def test_a_registrations_time_limit_above_the_services_is_refused_at_its_spec_field(api: Api) -> None:
    """Every other spec error is located in `spec`; this one said `body` (a probe)."""
    r = api.register(time_limit_seconds=10**9)
    assert r.status_code == 422 and "exceeds this service's limit" in r.json()["detail"], r.text
    assert r.json()["errors"][0]["loc"] == ["spec", "time_limit_seconds"]


@pytest.mark.parametrize("num_classes", ["10", 10.0, True])
def test_num_classes_is_a_whole_json_number(api: Api, num_classes: object) -> None:
    """"10" and 10.0 were read as 10 (and true as 1)."""
    r = api.register(num_classes=num_classes)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["spec", "num_classes"], r.text
    assert "m" not in api.model_names()


def test_a_fallback_that_reruns_the_default_method_as_it_ran_is_refused(api: Api) -> None:
    """A fallback runs its method's defaults: named after a default method that runs its defaults too, it
    is the same run again and fails the same way (a probe's chain was accepted)."""
    same = api.register(name="again", default_method="finetune", fallback_methods=["finetune", "retrain"])
    assert same.status_code == 422, same.text
    assert same.json()["errors"][0]["loc"] == ["spec", "fallback_methods"]
    assert "names the default method 'finetune'" in same.json()["detail"]
    own = api.register(
        name="own-params",
        default_method="finetune",
        default_params={"epochs": 2},
        fallback_methods=["finetune"],
    )
    assert own.status_code == 202, own.text  # its fallback runs other params
    # any key written out, its default value included, may change what the recipe decides (a review)
    sgd = api.register(
        name="sgd-first",
        default_method="finetune",
        default_params={"optimizer": "sgd"},
        fallback_methods=["finetune"],
    )
    assert sgd.status_code == 202, sgd.text
    # a model whose chain was stored before the check still takes a change that leaves the chain alone
    with session_scope(api.url) as s:
        stored = s.scalars(select(Model).where(Model.name == "own-params")).one()
        stored.default_params = {}
    r = api.client.patch("/v1/models/own-params", json={"gates": {"max_test_accuracy_drop": 0.05}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["retrain_above_share", "retrain_above_class_share"])
def test_a_registration_takes_a_retrain_share_within_its_bounds(api: Api, field: str) -> None:
    refused = api.register(**{field: 1.5})
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["spec", field]
    r = api.register(**{field: 0.25})
    assert r.status_code == 202 and r.json()[field] == 0.25, r.text
    assert api.client.get("/v1/models/m").json()[field] == 0.25


def test_a_nan_in_the_spec_is_named_without_a_made_up_position(api: Api) -> None:
    """It read "NaN is not a JSON number: line 1 column 1 (char 0)" for a NaN deep in the spec (a probe)."""
    raw = json.dumps({"name": "m", "architecture": "mlp", "num_classes": 3, "train_dataset": "x",
                      "test_dataset": "y", "retrain_above_share": float("nan")})  # fmt: skip
    r = api.client.post(
        "/v1/models", data={"spec": raw}, files={"checkpoint": ("v1.safetensors", CHECKPOINT)}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        "`spec` is not valid JSON: NotJsonNumber: NaN is not a JSON number (JSON has no NaN or Infinity)"
    )


@pytest.mark.parametrize("number", ["1e309", "-1e400", "NaN", "1" + "0" * 5000])
def test_a_number_postgresql_cannot_store_in_a_spec_or_config_is_a_422(api: Api, number: str) -> None:
    """1e309 reads as infinity: in `arch_kwargs` it was a 500 on PostgreSQL (its JSON has no Infinity), and
    NaN in an uploaded `config` file a 500 on any database (a probe)."""
    head = '{"name": "m", "architecture": "hf:sequence-classification", "num_classes": 3, '
    spec = head + f'"train_dataset": "x", "test_dataset": "y", "arch_kwargs": {{"x": {number}}}}}'
    ckpt = {"checkpoint": ("v1.safetensors", CHECKPOINT)}
    r = api.client.post("/v1/models", data={"spec": spec}, files=ckpt)
    assert r.status_code == 422 and r.json()["detail"].startswith("`spec` is not valid JSON"), r.text
    plain = head + '"train_dataset": "x", "test_dataset": "y"}'
    config = ("config.json", f'{{"model_type": "bert", "x": {number}}}'.encode())
    r = api.client.post("/v1/models", data={"spec": plain}, files={**ckpt, "config": config})
    assert r.status_code == 422 and r.json()["detail"].startswith("`config` is not valid JSON"), r.text


def test_a_spec_over_a_form_fields_limit_is_a_413_saying_so(api: Api) -> None:
    """Starlette holds a form field's text to 1 MiB: a 2 MB spec was a bare 400 "Part exceeded maximum
    size of 1024KB." (a probe)."""
    spec = json.dumps({"name": "m", "architecture": "mlp", "num_classes": 3, "train_dataset": "x",
                       "test_dataset": "y", "arch_kwargs": {"pad": "x" * 2_000_000}})  # fmt: skip
    ckpt = {"checkpoint": ("v1.safetensors", CHECKPOINT)}
    r = api.client.post("/v1/models", data={"spec": spec}, files=ckpt)
    assert r.status_code == 413 and r.json()["limit_bytes"] == 1024 * 1024, r.text
    assert "form field" in r.json()["detail"], r.text


def test_one_shard_under_two_names_is_the_same_data(api: Api, tmp_path: Path) -> None:
    """A folder kind's digest covers its files' names: a shard uploaded (stored as upload.tar) and the same
    bytes registered by path had two digests, and a probe's model took one as training and the other as
    its test set. Same-sized sets of that kind are compared by their files' bytes."""
    from service.core.dataset_ids import dataset_sha256

    shards = {}
    for name in ("upload", "shard", "other"):
        (tmp_path / name).mkdir()
        shards[name] = tmp_path / name / f"{name}.tar"
        shards[name].write_bytes(b"the same bytes" if name != "other" else b"other bytes")
    with session_scope(api.url) as s:
        ids = {
            name: register_dataset(
                s, tenant="default", name=name, kind="webdataset", uri=str(path),
                sample_ids=[f"{name}-{i}" for i in range(4)], labels=LABELS["test"],
                actor="test", sha256=dataset_sha256("webdataset", path),
            ).id  # fmt: skip
            for name, path in shards.items()
        }
    r = api.register(test_dataset=ids["upload"], heldout_dataset=ids["shard"])
    assert r.status_code == 422 and "registrations of the same data" in r.json()["detail"], r.text
    assert api.register(test_dataset=ids["upload"], heldout_dataset=ids["other"]).status_code == 202


def test_text_sets_tokenized_by_different_tokenizers_are_a_422(api: Api) -> None:
    """A probe's training set under another tokenizer whose ids fitted the vocabulary made a `ready`
    model that read its training data at chance."""
    with session_scope(api.url) as s:
        for name, digest in (("train", "a" * 64), ("test", "b" * 64), ("heldout", "a" * 64)):
            s.get_one(Dataset, api.datasets[name]).features = {
                "type": "text", "tokenizer": f"/data/{digest[:1]}.json", "tokenizer_sha256": digest,
            }  # fmt: skip
    r = api.register()
    assert r.status_code == 422 and "tokenized by different tokenizers" in r.json()["detail"], r.text
    assert "test_dataset bbbbbbbbbbbbbbbb" in r.json()["detail"]
    with session_scope(api.url) as s:
        s.get_one(Dataset, api.datasets["test"]).features = s.get_one(Dataset, api.datasets["train"]).features
    assert api.register(heldout_dataset=api.datasets["heldout"]).status_code == 202


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"arch_kwargs": {"\ud800": 1}}, "arch_kwargs"),
        ({"default_params": {"lr": "\udc00"}}, "default_params"),
        ({"train_recipe": {"x\ud800": 1}}, "train_recipe"),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_spec_is_a_422_and_the_audit_log_goes_on(
    api: Api, spec: dict[str, Any], field: str
) -> None:
    """A probe's arch_kwargs key "\\ud800" was registered, and its tenant's audit log could no longer be
    sequenced (UTF-8 cannot encode the key): verify, export and every certificate were 500s."""
    r = api.register(**spec)
    assert r.status_code == 422, r.text
    assert "lone UTF-16 surrogate" in r.json()["detail"]
    assert r.json()["errors"][0]["loc"][:2] == ["spec", field]
    assert "m" not in api.model_names()
    assert api.register().status_code == 202
    assert api.client.get("/v1/audit/verify").json()["ok"] is True


def test_a_multipart_field_sent_twice_is_a_422_naming_it_and_nothing_is_kept(api: Api) -> None:
    """FastAPI keeps the last copy of a repeated field: a probe's two specs and two checkpoints registered
    the second of each, and a dataset upload of two files kept the second, without a word."""
    sets = {"train_dataset": api.datasets["train"], "test_dataset": api.datasets["test"]}
    spec = json.dumps({"name": "twice", "architecture": "mlp", "num_classes": 3, **sets})
    parts = [
        ("spec", (None, spec)),
        ("spec", (None, spec.replace("twice", "other"))),
        ("checkpoint", ("v1.safetensors", CHECKPOINT)),
        ("checkpoint", ("v2.safetensors", CHECKPOINT)),
    ]
    r = api.client.post("/v1/models", files=parts)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [["checkpoint"], ["spec"]]
    assert "twice" not in api.model_names() and "other" not in api.model_names()
    sent = [("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))]
    r = api.client.post("/v1/datasets/upload", data={"name": "two"}, files=sent)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["file"], r.text


def test_a_multipart_part_the_call_does_not_take_is_a_422_naming_it_and_nothing_is_kept(api: Api) -> None:
    """A misspelt part was dropped without a word: a registration's `heldout` part (or an hf model's
    config sent as `configs`) registered without it, an upload's `feature=` declaration went unread."""
    sets = {"train_dataset": api.datasets["train"], "test_dataset": api.datasets["test"]}
    spec = json.dumps({"name": "extra", "architecture": "mlp", "num_classes": 3, **sets})
    parts = [("spec", (None, spec)), ("checkpoint", ("v1.safetensors", CHECKPOINT)), ("heldout", (None, "x"))]
    r = api.client.post("/v1/models", files=parts)
    assert r.status_code == 422, r.text
    assert "no part named 'heldout'" in r.json()["detail"] and "spec, checkpoint" in r.json()["detail"]
    assert r.json()["errors"] == [{"loc": ["heldout"], "msg": "unknown part", "type": "unknown_part"}]
    assert "extra" not in api.model_names()
    sent = {"file": ("a.jsonl", b'{"id": "a", "text": "x", "label": 0}\n')}
    r = api.client.post("/v1/datasets/upload", data={"name": "one", "feature": "{}"}, files=sent)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["feature"], r.text
    names = [d["name"] for d in api.client.get("/v1/datasets").json()]
    assert "one" not in names
