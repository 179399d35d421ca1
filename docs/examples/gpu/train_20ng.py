"""v1 for 20 Newsgroups: a small BERT (BERT-mini's shape: 4 layers, hidden 256, 4 heads) trained from scratch
with the service's own training loop on train.jsonl, tokenized by the service's loader (max_length 256);
on CUDA when present. A starting recipe, not a tuned one. Writes config.json and model.safetensors.

    python docs/examples/gpu/train_20ng.py /data/20ng /data/20ng/bert [EPOCHS]
"""

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import BertConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout's models
from models.architectures import build_model
from models.datasets import load_dataset
from models.training import TrainRecipe, train

data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
features = {"type": "text", "tokenizer": str(data_dir / "tokenizer.json"), "max_length": 256}
data = load_dataset("jsonl", str(data_dir / "train.jsonl"), features)
vocab = Tokenizer.from_file(features["tokenizer"]).get_vocab_size()
config = BertConfig(  # a small BERT (BERT-mini's shape), trained from scratch
    vocab_size=vocab,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    max_position_embeddings=512,
    num_labels=20,
)
model = build_model("hf:sequence-classification", num_classes=20, config=config.to_dict())
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
recipe = TrainRecipe(epochs=epochs, lr=1e-4, batch_size=32, optimizer="adam", weight_decay=0.0)
train(model, data, recipe, device="cuda" if torch.cuda.is_available() else "cpu")
model.wrapped.cpu().save_pretrained(out)  # the transformers module the adapter wraps
