"""Text datasets (issue 15): jsonl and text_csv files register through the HTTP API with their tokenizer
(by path under the data roots, or uploaded), their sample IDs and labels are read without torch, bad
records are refused naming their lines, and the worker's loader tokenizes them to input_ids and
attention_mask with the tokenizer registered (and refuses one that changed since)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, DatasetSample
from service.core.settings import Settings
from tests.factories import make_key
from tests.liveapp import prepared
from tests.textdata import sentences, train_tokenizer, write_jsonl, write_text_csv
from workers.datasets import DatasetChanged, DatasetRef, load_registered

TEXT = {"type": "text", "tokenizer": "tokenizer.json", "max_length": 16}


@dataclass
class Api:
    client: TestClient
    settings: Settings
    data: Path  # a data root holding the files and tokenizer.json

    def register(self, name: str, kind: str, file: str, features: Any = TEXT) -> Any:
        body = {"name": name, "kind": kind, "uri": str(self.data / file), "features": features}
        return self.client.post("/v1/datasets", json=body)

    def upload_with_tokenizer(self, name: str, kind: str, file: str) -> Any:
        """`file` uploaded with tokenizer.json beside it, at max_length 8."""
        return self.client.post(
            "/v1/datasets/upload",
            data={"name": name, "kind": kind, "features": json.dumps({"type": "text", "max_length": 8})},
            files={
                "file": (file, (self.data / file).read_bytes()),
                "tokenizer": ("tokenizer.json", (self.data / "tokenizer.json").read_bytes()),
            },
        )

    def samples(self, dataset_id: str) -> list[tuple[str, int]]:
        with session_scope(self.settings.resolved_database_url) as s:
            rows = s.execute(
                select(DatasetSample.sample_id, DatasetSample.label)
                .where(DatasetSample.dataset_id == dataset_id)
                .order_by(DatasetSample.position)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def nothing_stored(self) -> None:
        assert self.client.get("/v1/datasets").json() == []
        uploads = self.settings.dataset_dir / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    data = tmp_path / "data"
    data.mkdir()
    rows = sentences(30, 0)
    train_tokenizer(data / "tokenizer.json", [t for t, _ in rows])
    write_jsonl(data / "news.jsonl", rows, "j")
    write_text_csv(data / "news.csv", rows, "c")
    settings = prepared(
        Settings(  # type: ignore[call-arg]
            UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-text", UNLEARN_DATA_ROOTS=str(data)
        )
    )
    with session_scope(settings.resolved_database_url) as s:
        admin = make_key(s, scopes=("admin",))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {admin}"}) as client:
        yield Api(client, settings, data)


@pytest.mark.parametrize(
    ("kind", "file", "prefix"), [("jsonl", "news.jsonl", "j"), ("text_csv", "news.csv", "c")]
)
def test_a_text_dataset_registers_with_its_ids_labels_and_hashed_tokenizer(
    api: Api, kind: str, file: str, prefix: str
) -> None:
    r = api.register("news", kind, file)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["kind"], got["num_samples"]) == (kind, 30)
    rows = sentences(30, 0)
    assert api.samples(got["id"]) == [(f"{prefix}-{i:03d}", label) for i, (_, label) in enumerate(rows)]
    features = got["features"]
    assert features["type"] == "text" and features["max_length"] == 16
    assert features["tokenizer"] == str((api.data / "tokenizer.json").resolve())  # resolved beside the file
    assert len(features["tokenizer_sha256"]) == 64

    with session_scope(api.settings.resolved_database_url) as s:
        ref = DatasetRef.of(s.get_one(Dataset, got["id"]))
    ds = load_registered(ref)  # what a worker reads
    assert isinstance(ds.x, dict) and set(ds.x) == {"input_ids", "attention_mask"}
    assert ds.x["input_ids"].shape == (30, 16) and ds.x["input_ids"].dtype == torch.long
    assert ds.ids == [f"{prefix}-{i:03d}" for i in range(30)]
    assert ds.y.tolist() == [label for _, label in rows]
    words = len(rows[0][0].split())
    assert ds.x["attention_mask"][0].sum() == words + 2  # [CLS] words [SEP], then padding
    assert (ds.x["input_ids"][0, words + 2 :] == 0).all()  # [PAD] is 0

    tokenizer = api.data / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("chef", "chief"))
    with pytest.raises(ValueError, match="tokenizer .* changed since registration"):
        load_registered(ref)
    (api.data / file).write_text((api.data / file).read_text().replace("chef", "cook"))
    with pytest.raises(DatasetChanged, match="changed since registration"):
        load_registered(ref)


def test_a_text_dataset_and_its_tokenizer_upload_together(api: Api) -> None:
    r = api.upload_with_tokenizer("up", "text_csv", "news.csv")
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["num_samples"] == 30 and got["features"]["max_length"] == 8
    assert Path(got["features"]["tokenizer"]).parent == api.settings.dataset_dir / "uploads"
    with session_scope(api.settings.resolved_database_url) as s:
        ds = load_registered(DatasetRef.of(s.get_one(Dataset, got["id"])))
    assert isinstance(ds.x, dict) and ds.x["input_ids"].shape == (30, 8)


@pytest.mark.parametrize(
    ("kind", "file", "prefix"), [("text_csv", "news.csv", "c"), ("jsonl", "news.jsonl", "j")]
)
def test_a_text_file_that_starts_with_a_byte_order_mark_registers_and_loads(
    api: Api, kind: str, file: str, prefix: str
) -> None:
    """Excel writes "CSV UTF-8" with a BOM (and Windows editors write one before JSON lines); read as
    plain UTF-8 it glued itself to the first column's name, and the header was refused as missing
    sample_id, or the first line as not JSON."""
    bom = b"\xef\xbb\xbf" + (api.data / file).read_bytes()
    (api.data / f"bom-{file}").write_bytes(bom)
    rows = sentences(30, 0)
    expected = [(f"{prefix}-{i:03d}", label) for i, (_, label) in enumerate(rows)]
    r = api.register("bom", kind, f"bom-{file}")
    assert r.status_code == 201, r.text
    assert api.samples(r.json()["id"]) == expected
    up = api.client.post(
        "/v1/datasets/upload",
        data={
            "name": "bom-up",
            "kind": kind,
            "features": json.dumps({"type": "text", "max_length": 8}),
        },
        files={
            "file": (file, bom),
            "tokenizer": ("tokenizer.json", (api.data / "tokenizer.json").read_bytes()),
        },
    )
    assert up.status_code == 201, up.text
    assert api.samples(up.json()["id"]) == expected
    for got in (r.json(), up.json()):
        with session_scope(api.settings.resolved_database_url) as s:
            ds = load_registered(DatasetRef.of(s.get_one(Dataset, got["id"])))  # what a worker reads
        assert [(i, int(y)) for i, y in zip(ds.ids, ds.y.tolist(), strict=True)] == expected


def test_bad_json_lines_are_a_422_naming_each_line(api: Api) -> None:
    lines = [
        json.dumps({"sample_id": "a", "text": "the chef baked today", "label": 2}),
        "{not json",
        json.dumps({"sample_id": "b", "text": "the coach won", "label": 0}),
        json.dumps({"sample_id": "c", "text": "no label here"}),
        json.dumps({"sample_id": "d", "text": "a label that is a word", "label": "two"}),
        json.dumps(["a", "list"]),
    ]
    (api.data / "bad.jsonl").write_text("\n".join(lines) + "\n")
    r = api.register("bad", "jsonl", "bad.jsonl")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["lines"] == [2, 4, 5, 6] and body["refused_count"] == 4
    detail = body["detail"]
    assert "line 2: not JSON" in detail and "line 4: missing label" in detail
    assert "line 5: label must be a whole number" in detail and "line 6: not a JSON object" in detail
    api.nothing_stored()


def test_a_bad_csv_record_is_a_422_naming_its_line(api: Api) -> None:
    (api.data / "bad.csv").write_text(
        'sample_id,text,label\na,"the chef, a cook, baked",2\nb,the coach won,zero\n,nobody,1\n'
        "d,the chef cooked,1_0\ne,the coach ran,\u0663\n"  # Python's int read these as 10 and 3 (a probe)
    )
    r = api.register("bad", "text_csv", "bad.csv")
    assert r.status_code == 422, r.text
    assert r.json()["lines"] == [3, 4, 5, 6]
    assert "line 5: label must be a whole number (a class index), got '1_0'" in r.json()["detail"]
    assert "line 3: label must be a whole number (a class index), got 'zero'" in r.json()["detail"]
    assert "line 4: sample_id must be a non-empty string" in r.json()["detail"]
    (api.data / "nohead.csv").write_text("id,sentence,label\na,b,1\n")
    r = api.register("nohead", "text_csv", "nohead.csv")
    assert r.status_code == 422 and "must name the columns sample_id, text, label" in r.json()["detail"]
    api.nothing_stored()


@pytest.mark.parametrize(
    ("features", "says"),
    [
        (None, "needs a text declaration naming its tokenizer"),
        ({"layout": "HW", "scale": 255}, "needs a text declaration naming its tokenizer"),
        ({"type": "text", "max_length": 16}, "give the path of the tokenizer.json"),
        ({**TEXT, "tokenizer": "missing.json"}, "no file at"),
        ({**TEXT, "tokenizer": "/etc/hostname"}, "outside the data roots"),
        ({**TEXT, "pad_token": "<pad>"}, "no padding token '<pad>'"),
        ({**TEXT, "tokenizer": "news.jsonl"}, "is not a tokenizers tokenizer.json"),
        # [CLS] and [SEP] fill 2 tokens: the tokenizers library then left every text unpadded (a probe)
        ({**TEXT, "max_length": 2}, "the tokenizer adds 2 special tokens to each text"),
    ],
)
def test_impossible_text_declarations_are_a_422_saying_why(api: Api, features: Any, says: str) -> None:
    r = api.register("news", "jsonl", "news.jsonl", features)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    api.nothing_stored()


def test_schema_refuses_bad_text_fields_and_a_text_declaration_on_images(api: Api) -> None:
    r = api.register("news", "jsonl", "news.jsonl", {**TEXT, "max_length": 0})
    assert r.status_code == 422 and "max_length" in r.text
    r = api.register("news", "jsonl", "news.jsonl", {**TEXT, "layout": "HW"})
    assert r.status_code == 422 and "layout" in r.text
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 4), np.float32), y=np.arange(3), ids=np.array(["a", "b", "c"]))
    r = api.client.post(
        "/v1/datasets/upload",
        data={"name": "arr", "features": json.dumps(TEXT)},
        files={"file": ("d.npz", buf.getvalue())},
    )
    assert r.status_code == 422 and "a text declaration applies to text datasets" in r.json()["detail"]
    api.nothing_stored()


def test_a_tokenizer_among_the_uploads_is_read_only_by_the_dataset_uploaded_with_it(api: Api) -> None:
    """A path into the uploads folder named another upload's tokenizer, maybe another tenant's, and was
    used (and a missing one said "no file at", telling which exist; a probe)."""
    up = api.upload_with_tokenizer("up", "jsonl", "news.jsonl")
    assert up.status_code == 201, up.text
    theirs = Path(up.json()["features"]["tokenizer"])
    for named in (str(theirs), str(theirs.parent / "nothing.tokenizer.json")):
        r = api.register("by-path", "jsonl", "news.jsonl", {**TEXT, "tokenizer": named})
        assert r.status_code == 422 and "is an uploaded file" in r.json()["detail"], r.text
    r = api.client.post(  # an upload naming it beside itself, without a tokenizer file of its own
        "/v1/datasets/upload",
        data={"name": "up2", "kind": "jsonl", "features": json.dumps({**TEXT, "tokenizer": theirs.name})},
        files={"file": ("news.jsonl", (api.data / "news.jsonl").read_bytes())},
    )
    assert r.status_code == 422 and "is an uploaded file" in r.json()["detail"], r.text
    assert [d["name"] for d in api.client.get("/v1/datasets").json()] == ["up"]


def test_the_sides_a_tokenizer_was_saved_to_truncate_and_pad_on_are_kept(api: Api) -> None:
    """A client's tokenizer truncated on the left, and the service read it on the right: a model that
    scored 100% on its data scored 24% (a probe)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(api.data / "tokenizer.json"))
    tok.enable_truncation(max_length=4, direction="left")
    tok.enable_padding(direction="left", pad_id=0, pad_token="[PAD]")
    tok.save(str(api.data / "left.json"))
    r = api.register("left", "jsonl", "news.jsonl", {**TEXT, "tokenizer": "left.json", "max_length": 6})
    assert r.status_code == 201, r.text
    with session_scope(api.settings.resolved_database_url) as s:
        ds = load_registered(DatasetRef.of(s.get_one(Dataset, r.json()["id"])))
    assert isinstance(ds.x, dict)
    tok.enable_truncation(max_length=6, direction="left")
    tok.enable_padding(length=6, direction="left", pad_id=0, pad_token="[PAD]")
    texts = [t for t, _ in sentences(30, 0)]
    assert ds.x["input_ids"].tolist() == [e.ids for e in tok.encode_batch(texts)]
    assert ds.x["input_ids"][:, -1].tolist() != ds.x["input_ids"][:, 0].tolist()  # not all one token


@pytest.mark.parametrize("saved", [{"stride": 128}, {"strategy": "only_second"}])
def test_a_tokenizers_saved_stride_and_strategy_do_not_break_reading_single_texts(
    api: Api, saved: dict[str, Any]
) -> None:
    """Only the saved sides are kept: a question-answering tokenizer's stride of 128 overran max_length 16
    with a 500, and an "only_second" strategy registered, then failed every load (a review)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(api.data / "tokenizer.json"))
    tok.enable_truncation(max_length=384, **saved)
    tok.save(str(api.data / "saved.json"))
    r = api.register("saved", "jsonl", "news.jsonl", {**TEXT, "tokenizer": "saved.json", "max_length": 6})
    assert r.status_code == 201, r.text
    with session_scope(api.settings.resolved_database_url) as s:
        ds = load_registered(DatasetRef.of(s.get_one(Dataset, r.json()["id"])))
    assert isinstance(ds.x, dict) and ds.x["input_ids"].shape == (30, 6)


def test_a_tokenizer_that_panics_on_a_text_is_an_error_naming_its_line(api: Api) -> None:
    """The tokenizers library panics (pyo3's PanicException, a BaseException) where a pre-tokenizer's
    regex backtracks too far: a probe's registration killed the worker process three times. A text that
    holds a lone surrogate is named by its line too (it was an opaque TypeError from the tokenizer)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from models.text import TokenizerError

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "a": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(a|aa)+b"), behavior="isolated")
    tok.save(str(api.data / "panics.json"))
    write_jsonl(api.data / "panics.jsonl", [("a b", 0), ("a", 1), ("a" * 60 + "c", 0)], "p")
    r = api.register("panics", "jsonl", "panics.jsonl", {**TEXT, "tokenizer": "panics.json"})
    assert r.status_code == 201, r.text
    with session_scope(api.settings.resolved_database_url) as s, pytest.raises(TokenizerError) as failed:
        load_registered(DatasetRef.of(s.get_one(Dataset, r.json()["id"])))
    assert "the tokenizer failed on line 3: PanicException" in str(failed.value)
    (api.data / "lone.jsonl").write_text('{"sample_id": "l-0", "text": "x\\udc00", "label": 0}\n')
    r = api.register("lone", "jsonl", "lone.jsonl")
    assert r.status_code == 422 and "line 1: text holds a lone UTF-16 surrogate" in r.json()["detail"], r.text


def test_a_tokenizer_too_large_or_padding_outside_its_vocabulary_is_a_422(api: Api) -> None:
    """A probe's 60 MB tokenizer.json held the API at 946 MB; one whose own padding id was outside its
    vocabulary registered, and its model was then invalid for a vocabulary miss."""
    from tokenizers import Tokenizer

    from models.text import MAX_TOKENIZER_BYTES

    tok = Tokenizer.from_file(str(api.data / "tokenizer.json"))
    tok.enable_padding(pad_id=999_999, pad_token="[NOPE]")
    tok.save(str(api.data / "nope.json"))
    r = api.register("nope", "jsonl", "news.jsonl", {**TEXT, "tokenizer": "nope.json"})
    assert r.status_code == 422 and "is not in its vocabulary" in r.json()["detail"], r.text
    with open(api.data / "huge.json", "wb") as fh:
        fh.truncate(MAX_TOKENIZER_BYTES + 1)  # sparse: its size is all that is read
    r = api.register("huge", "jsonl", "news.jsonl", {**TEXT, "tokenizer": "huge.json"})
    assert r.status_code == 422 and "a tokenizer.json here is at most" in r.json()["detail"], r.text
