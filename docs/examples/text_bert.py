"""A text classifier, end to end, small enough for a laptop CPU (about a minute on 2 cores).

1. Generates a small text set: template sentences about three topics (sport, computing, cooking), with
   shared filler words, as `train.jsonl` (one {"sample_id", "text", "label"} object per line) and
   `test.csv` (columns sample_id,text,label).
2. Trains a WordPiece tokenizer on it with the `tokenizers` library and saves `tokenizer.json`.
3. Builds a small BERT from a `BertConfig` (hidden 64, 2 layers, 2 heads; vocabulary from the tokenizer)
   with `AutoModelForSequenceClassification.from_config`, trains it from scratch for a few epochs and
   saves it as transformers does (`bert/config.json`, `bert/model.safetensors`). Nothing is downloaded.
4. With `--url` and `--key`: registers both datasets (uploaded with their tokenizer) and the model
   (`hf:sequence-classification`, its config.json as the `config` file) through the HTTP API, waits until
   it is `ready`, asks it to forget five training sentences, waits for the request to complete, downloads
   v2 and loads it strictly into `AutoModelForSequenceClassification.from_config`.

    .venv/bin/python docs/examples/text_bert.py --out var/text-example
    .venv/bin/python docs/examples/text_bert.py --out var/text-example \\
        --url http://127.0.0.1:8000 --key "$(cat var/admin.key)"

The texts are tokenized here exactly as the service's worker tokenizes them (truncated and padded to
`--max-length` by the tokenizer itself), so the model is trained on the inputs the service feeds it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; make sure nothing tries

TOPICS = {
    0: {  # sport
        "subjects": [
            "the striker",
            "our goalkeeper",
            "the coach",
            "the referee",
            "a young winger",
            "the captain",
        ],
        "verbs": ["scored", "missed", "defended", "celebrated", "trained for", "argued about"],
        "objects": ["a penalty", "the final", "the derby", "a late goal", "the league title", "extra time"],
    },
    1: {  # computing
        "subjects": [
            "the compiler",
            "our server",
            "the kernel",
            "a database",
            "the new laptop",
            "the script",
        ],
        "verbs": ["crashed during", "optimised", "compiled", "cached", "rebooted after", "logged"],
        "objects": ["the build", "a memory leak", "the query", "an update", "the network", "a segfault"],
    },
    2: {  # cooking
        "subjects": ["the chef", "my grandmother", "the baker", "a waiter", "the sous chef", "our cook"],
        "verbs": ["baked", "seasoned", "burnt", "served", "tasted", "simmered"],
        "objects": ["the bread", "a risotto", "the soup", "fresh pasta", "a lemon tart", "the sauce"],
    },
}
FILLERS = [
    "yesterday",
    "again",
    "on sunday",
    "quite badly",
    "really well",
    "this morning",
    "at last",
    "today",
]
NAMES = ["sport", "computing", "cooking"]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """n (text, label) pairs, labels cycling through the topics."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % len(TOPICS)
        t = TOPICS[label]
        words = [rng.choice(t["subjects"]), rng.choice(t["verbs"]), rng.choice(t["objects"])]
        if rng.random() < 0.7:
            words.append(rng.choice(FILLERS))
        rows.append((" ".join(words), label))
    return rows


def write_data(out: Path, n_train: int, n_test: int) -> tuple[list[tuple[str, int]], list[str]]:
    train, test = sentences(n_train, 0), sentences(n_test, 1)
    train_ids = [f"news-{i:04d}" for i in range(len(train))]
    with open(out / "train.jsonl", "w", encoding="utf-8") as fh:
        for sid, (text, label) in zip(train_ids, train, strict=True):
            fh.write(json.dumps({"sample_id": sid, "text": text, "label": label}) + "\n")
    with open(out / "test.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "text", "label"])
        for i, (text, label) in enumerate(test):
            writer.writerow([f"news-test-{i:04d}", text, label])
    return train + test, train_ids


def train_tokenizer(out: Path, texts: list[str]) -> Any:
    """WordPiece, BERT-style: [PAD] = 0, [UNK], [CLS] text [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.save(str(out / "tokenizer.json"))
    return tok


def encode(tok: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """As the service's worker does it: truncate and pad to max_length with the tokenizer's [PAD]."""
    import torch

    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {
        "input_ids": torch.tensor([e.ids for e in enc]),
        "attention_mask": torch.tensor([e.attention_mask for e in enc]),
    }


def train_bert(
    out: Path, tok: Any, rows: list[tuple[str, int]], n_train: int, args: argparse.Namespace
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=len(TOPICS),
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    x = encode(tok, [t for t, _ in rows], args.max_length)
    y = torch.tensor([label for _, label in rows])
    train_x, test_x = {k: v[:n_train] for k, v in x.items()}, {k: v[n_train:] for k, v in x.items()}
    train_y, test_y = y[:n_train], y[n_train:]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(n_train, generator=gen).split(32):
            loss = model(**{k: v[idx] for k, v in train_x.items()}, labels=train_y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = [(model(**xs).logits.argmax(1) == ys).float().mean().item() for xs, ys in
                   ((train_x, train_y), (test_x, test_y))]  # fmt: skip
        print(f"epoch {epoch + 1}: train accuracy {acc[0]:.3f}, test accuracy {acc[1]:.3f}")
    model.save_pretrained(
        out / "bert"
    )  # config.json + model.safetensors (transformers 5: always safetensors)
    print(f"saved {out / 'bert'} ({sum(p.numel() for p in model.parameters()):,} parameters)")


# ---------------------------------------------------------------- through the HTTP API


def register_and_forget(out: Path, train_ids: list[str], args: argparse.Namespace) -> None:
    import httpx

    http = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=60)
    suffix = time.strftime("%H%M%S")
    features = json.dumps({"type": "text", "max_length": args.max_length})
    ids = {}
    for role, file, kind in (("train", "train.jsonl", "jsonl"), ("test", "test.csv", "text_csv")):
        r = http.post(
            "/v1/datasets/upload",
            data={"name": f"news-{role}-{suffix}", "kind": kind, "features": features},
            files={
                "file": (file, (out / file).read_bytes()),
                "tokenizer": ("tokenizer.json", (out / "tokenizer.json").read_bytes()),
            },
        )
        r.raise_for_status()
        ids[role] = r.json()["id"]
        print(f"dataset {r.json()['name']}: {r.json()['num_samples']} samples ({kind})")
    name = f"news-bert-{suffix}"
    spec = {
        "name": name,
        "architecture": "hf:sequence-classification",
        "num_classes": len(TOPICS),
        "train_dataset": ids["train"],
        "test_dataset": ids["test"],
        "default_params": {"epochs": 1},
        # how main() trained it: unlearning runs Adam(W) at half this lr, and a retrain repeats it
        "train_recipe": {
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.01,
            "epochs": args.epochs,
            "batch_size": 32,
            "schedule": "constant",
        },
    }
    r = http.post(
        "/v1/models",
        data={"spec": json.dumps(spec)},
        files={
            "checkpoint": ("model.safetensors", (out / "bert" / "model.safetensors").read_bytes()),
            "config": ("config.json", (out / "bert" / "config.json").read_bytes()),
        },
    )
    r.raise_for_status()
    model = wait(lambda: http.get(f"/v1/models/{name}").json(), lambda m: m["status"] != "validating")
    if model["status"] != "ready":
        sys.exit(f"model {name} is {model['status']}: {model.get('status_detail')}")
    v1 = http.get(f"/v1/models/{name}/versions/v1").json()["metrics"]
    print(f"model {name} ready; v1 test accuracy {v1['test_accuracy']:.3f}")
    forget = train_ids[:5]
    r = http.post(f"/v1/models/{name}/deletion-requests", json={"sample_ids": forget})
    r.raise_for_status()
    request_id = r.json()["id"]
    req = wait(
        lambda: http.get(f"/v1/deletion-requests/{request_id}").json(),
        lambda q: q["state"] in ("completed", "failed", "cancelled"),
    )
    if req["state"] != "completed":
        sys.exit(f"deletion request {request_id} {req['state']}: {req}")
    job = http.get(f"/v1/jobs/{req['job_id']}").json()
    print(f"forgot {forget} in {req['model_version']} (job {req['job_id']})")
    shown = ("unlearning_accuracy", "mia_score", "retain_accuracy", "test_accuracy")
    for when in ("base", "result"):
        scores = job["metrics"][when]
        print(f"  {when:6}", ", ".join(f"{k} {scores[k]:.3f}" for k in shown if scores.get(k) is not None))
    r = http.get(f"/v1/models/{name}/versions/{req['model_version']}/checkpoint")
    r.raise_for_status()
    (out / "v2.safetensors").write_bytes(r.content)

    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    v2 = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(out / "bert"))
    load_model(v2, str(out / "v2.safetensors"), strict=True)
    print(f"{out / 'v2.safetensors'} loads strictly into AutoModelForSequenceClassification.from_config")


def wait(get: Any, done: Any, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while not done(got := get()):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting: {got}")
        time.sleep(1)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/text-example"))
    parser.add_argument("--train", type=int, default=900, help="training sentences")
    parser.add_argument("--test", type=int, default=300, help="test sentences")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--url", help="a running service: register the model and serve a deletion request")
    parser.add_argument("--key", help="an admin API key for --url")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, train_ids = write_data(args.out, args.train, args.test)
    tok = train_tokenizer(args.out, [t for t, _ in rows[: args.train]])
    print(f"wrote {args.out}/train.jsonl, test.csv, tokenizer.json ({tok.get_vocab_size()} tokens)")
    train_bert(args.out, tok, rows, args.train, args)
    print(f"prepared in {time.perf_counter() - started:.0f} s")
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        register_and_forget(args.out, train_ids, args)
        print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
