"""20 Newsgroups (the extracted 20news-bydate.tar.gz, already on disk) as train.jsonl and test.jsonl (label =
the group's index in name order; IDs 20ng-train-<group>-<file>) and a BERT-style WordPiece tokenizer.json
trained on the training texts. Nothing is downloaded.

    python docs/examples/gpu/prepare_20ng.py /data/raw/20news-bydate /data/20ng
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
groups = sorted(p.name for p in (src / "20news-bydate-train").iterdir())  # label = index in this list
texts = []
for split in ("train", "test"):
    with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
        for label, group in enumerate(groups):
            for doc in sorted((src / f"20news-bydate-{split}" / group).iterdir()):
                text = doc.read_text(encoding="latin-1")
                texts += [text] if split == "train" else []
                row = {"sample_id": f"20ng-{split}-{group}-{doc.name}", "text": text, "label": label}
                fh.write(json.dumps(row) + "\n")
# A BERT-style WordPiece tokenizer trained on the training texts ([PAD] = 0, [CLS] text [SEP]).
tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
tok.normalizer = normalizers.BertNormalizer(lowercase=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=30_000, special_tokens=specials))
tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
)
tok.save(str(out / "tokenizer.json"))
