"""Worked example for "Register your own model": a torchvision ResNet-18 trained on 32x32 colour images,
written the way a product would hand its model to the service.

    .venv/bin/python docs/examples/resnet18_shapes.py --out /tmp/shapes

writes `train.npz` and `test.npz` (uint8 images, HWC, with IDs `shape-00000`...) and `v1.safetensors`
(the trained `torchvision.models.resnet18(num_classes=4)`, saved with safetensors, keys as torchvision
names them). The README's "Register your own model" section registers them with the `unlearn` CLI.
The images are generated (four classes: horizontal bars, vertical bars, a disc, a diagonal; random colours
and noise), so nothing is downloaded. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.shapes import CLASSES, as_model_input, images  # noqa: E402


def save_npz(path: Path, x: np.ndarray, y: np.ndarray, offset: int) -> None:
    ids = np.array([f"shape-{offset + i:05d}" for i in range(len(y))])
    np.savez(path, x=x, y=y, ids=ids)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = images(args.train, seed=0)
    x_test, y_test = images(args.test, seed=1)
    save_npz(args.out / "train.npz", x_train, y_train, 0)
    save_npz(args.out / "test.npz", x_test, y_test, args.train)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = as_model_input(x_train), torch.from_numpy(y_train)
    model.train()
    for epoch in range(args.epochs):
        for idx in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(as_model_input(x_test)).argmax(1) == torch.from_numpy(y_test)).float().mean()
    save_model(model, str(args.out / "v1.safetensors"))
    print(f"test accuracy {accuracy:.3f}; wrote train.npz, test.npz and v1.safetensors to {args.out}")


if __name__ == "__main__":
    main()
