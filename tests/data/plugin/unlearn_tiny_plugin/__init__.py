"""Two architecture factories, one per way of meeting the service's contract.

- ``tiny_convnet``: a plain ``nn.Module`` ending in an ``nn.Linear``; the service adapts it (features are
  the Linear's input, taken from the same forward pass) without renaming its ``state_dict`` keys.
- ``tiny_native``: implements ``features(x) -> (B, D)`` and ``head(f) -> (B, K)`` itself, with
  ``forward == head . features``; the service uses it as it is.

Factories are called as ``factory(num_classes=K, **arch_kwargs)`` and must never load weights.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class TinyNative(TinyConvNet):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out

    def head(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(f)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny_convnet(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    return TinyConvNet(num_classes, in_channels, width)


def tiny_native(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    return TinyNative(num_classes, in_channels, width)
