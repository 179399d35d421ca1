"""A generated text classification set that a small BERT has to memorise (nothing is downloaded).

docs/examples/text_bert.py's template sentences (one topic's own subjects, verbs and objects) are separable
by any single word: a model scores 1.000 on its test set, so the original and an exact retrain agree on
every sample and no unlearning quality can be measured. Here the four topics share their vocabulary:

- every word of a sentence comes from a pool of shared words (``SHARED``) with probability ``p_shared``,
  otherwise from a topic's words, that topic being the sentence's own with probability ``own`` and one of
  the other three otherwise: every topic word appears in every class, only more often in its own;
- a fraction ``noise`` of the labels (exactly ``round(noise * n)`` samples, chosen by the seed) is replaced
  by another class, uniformly.

The noise is part of the distribution (train, test and held-out reference alike), so that a sample the
model never saw is, to it, just like a test sample: an exact retrain's accuracy on a forgotten set is its
test accuracy (~0.8), while the original, which memorised its training set noisy labels included, scores
~1.0 on it. That gap is what unlearning has to close.

``text_dataset`` writes the texts as a ``jsonl`` file, trains a WordPiece tokenizer with ``tokenizers`` on
the training texts and reads the files back with the service's own loader (``models.datasets.load_text``),
so the model sees exactly the ``{"input_ids", "attention_mask"}`` batches a registered text set gives.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# "season" is a sport and a cooking word on purpose.
TOPICS: dict[str, tuple[str, ...]] = {
    "sport": _words(
        "striker goalkeeper referee penalty derby league stadium coach winger tackle offside trophy season "
        "fans match goal pitch captain transfer kickoff"
    ),
    "computing": _words(
        "compiler server kernel database laptop script query cache network segfault update patch thread "
        "memory cluster browser firmware debugger python deploy"
    ),
    "cooking": _words(
        "chef oven risotto soup pasta sauce bread baker garlic butter recipe kitchen lemon tart simmer "
        "season flour onion spice dinner"
    ),
    "travel": _words(
        "flight airport hotel passport luggage train beach museum ticket tourist island journey map visa "
        "cruise station border guide hostel delay"
    ),
}
SHARED = _words(
    "the a new old big small again today yesterday really quite late early long short best worst team plan "
    "report problem week morning night good bad first last every after before during with without about our "
    "my their this"
)
NAMES = tuple(TOPICS)


@dataclass(frozen=True)
class TextSet:
    texts: list[str]
    labels: list[int]  # as given to the model: noisy where ``flipped``
    flipped: list[bool]  # the label was replaced by another class


def generate(
    n: int,
    seed: int,
    *,
    noise: float = 0.15,
    own: float = 0.75,
    p_shared: float = 0.5,
    length: tuple[int, int] = (6, 12),
) -> TextSet:
    """n sentences with balanced true classes (cycling, then shuffled by the seed), ``round(noise * n)``
    of them relabelled to another class. Deterministic in all arguments."""
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    rng = random.Random(seed)
    k = len(TOPICS)
    pools = list(TOPICS.values())
    true = [i % k for i in range(n)]
    rng.shuffle(true)
    texts = []
    for label in true:
        words = []
        for _ in range(rng.randint(*length)):
            if rng.random() < p_shared:
                words.append(rng.choice(SHARED))
            else:
                topic = label if rng.random() < own else rng.choice([c for c in range(k) if c != label])
                words.append(rng.choice(pools[topic]))
        texts.append(" ".join(words))
    noisy = set(rng.sample(range(n), round(noise * n)))
    labels = [rng.choice([c for c in range(k) if c != y]) if i in noisy else y for i, y in enumerate(true)]
    return TextSet(texts, labels, [i in noisy for i in range(n)])


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """WordPiece, BERT-style ([PAD] = 0, [UNK], "[CLS] text [SEP]"), as docs/examples/text_bert.py trains
    it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def bert_config(vocab_size: int, max_length: int) -> dict[str, Any]:
    """A small BERT's config.json (as an ``hf:sequence-classification`` model's arch_kwargs.config)."""
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": max_length,
        "hidden_dropout_prob": 0.0,  # no dropout: the model memorises its noisy labels within the recipe
        "attention_probs_dropout_prob": 0.0,
        "num_labels": len(TOPICS),
    }


def text_dataset(
    splits: dict[str, tuple[int, int]],
    *,
    max_length: int,
    vocab_size: int,
    noise: float,
    tokenizer: Path | None = None,
) -> dict[str, Any]:
    """{split name: SampleDataset} for ``splits`` = {name: (n, seed)}, the first split being the training
    set the tokenizer is trained on; sample IDs are ``<name>-00000``...

    ``tokenizer``: a tokenizer file to read the texts with, trained and written there when it does not
    exist yet. Why: the WordPiece trainer breaks ties between equally frequent merges in no fixed order,
    so two trainings on the same texts give different vocabularies (four runs, four token sets), and a
    model cached by one process read another process's token IDs: a loss of 1.13 on a forget set it had
    memorised to 0.09."""
    from tokenizers import Tokenizer

    from models.datasets import load_text

    sets = {name: generate(n, seed, noise=noise) for name, (n, seed) in splits.items()}
    if tokenizer is not None and tokenizer.exists():
        tok = Tokenizer.from_file(str(tokenizer))
    else:
        tok = train_tokenizer(next(iter(sets.values())).texts, vocab_size)
        if tokenizer is not None:
            tokenizer.parent.mkdir(parents=True, exist_ok=True)
            tok.save(str(tokenizer))
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, the model {vocab_size}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp) / "tokenizer.json"))
        features = {"type": "text", "tokenizer": str(Path(tmp) / "tokenizer.json"), "max_length": max_length}
        for name, data in sets.items():
            path = Path(tmp) / f"{name}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for i, (text, label) in enumerate(zip(data.texts, data.labels, strict=True)):
                    record = {"sample_id": f"{name}-{i:05d}", "text": text, "label": label}
                    fh.write(json.dumps(record) + "\n")
            out[name] = load_text("jsonl", path, features)
    return out
