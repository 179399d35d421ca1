"""v1 for CIFAR-100: torchvision's ResNet-18 (100 classes) trained with the service's own training loop
(models.training, the loop the `retrain` method uses) on the `npy` folder, read by 8 reader processes;
on CUDA when present. A starting recipe, not a tuned one. Saved with safetensors, keys as torchvision
names them.

    python docs/examples/gpu/train_cifar100.py /data/cifar100/train /data/cifar100/v1.safetensors [EPOCHS]
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout's models
from models.architectures import build_model
from models.datasets import load_dataset
from models.training import TrainRecipe, train

features = {"layout": "CHW", "scale": 255, "mean": [0.507, 0.487, 0.441], "std": [0.267, 0.256, 0.276]}
data = load_dataset("npy", sys.argv[1], features, workers=8)
model = build_model("torchvision:resnet18", num_classes=100)
recipe = TrainRecipe(epochs=int(sys.argv[3]) if len(sys.argv) > 3 else 50, lr=0.1, batch_size=256)
train(model, data, recipe, device="cuda" if torch.cuda.is_available() else "cpu")
save_model(model.cpu(), sys.argv[2])
