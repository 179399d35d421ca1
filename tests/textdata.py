"""Small text datasets for the tests: template sentences about three topics, a word-level tokenizer
trained on them with the `tokenizers` library (nothing downloaded), written as jsonl or text_csv."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

TOPICS = {
    0: (["the", "a"], ["goalkeeper", "striker", "referee", "coach"], ["scored", "missed", "won", "lost"]),
    1: (["the", "a"], ["compiler", "kernel", "database", "server"], ["crashed", "booted", "compiled", "ran"]),
    2: (["the", "a"], ["chef", "baker", "waiter", "cook"], ["baked", "fried", "served", "tasted"]),
}
ENDINGS = ["today", "again", "yesterday", "at night", "on sunday", "badly", "well"]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """n (text, label) pairs, labels cycling 0, 1, 2."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % len(TOPICS)
        dets, nouns, verbs = TOPICS[label]
        text = f"{rng.choice(dets)} {rng.choice(nouns)} {rng.choice(verbs)} {rng.choice(ENDINGS)}"
        out.append((text, label))
    return out


def write_jsonl(path: Path, rows: list[tuple[str, int]], prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(len(rows))]
    with open(path, "w", encoding="utf-8") as fh:
        for sid, (text, label) in zip(ids, rows, strict=True):
            fh.write(json.dumps({"sample_id": sid, "text": text, "label": label}) + "\n")
    return ids


def write_text_csv(path: Path, rows: list[tuple[str, int]], prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(len(rows))]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "text", "label"])
        for sid, (text, label) in zip(ids, rows, strict=True):
            writer.writerow([sid, text, label])
    return ids


def train_tokenizer(path: Path, texts: list[str]) -> int:
    """A word-level tokenizer with [PAD]=0, [UNK], [CLS], [SEP], saved as tokenizer.json; its vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.save(str(path))
    return int(tok.get_vocab_size())
