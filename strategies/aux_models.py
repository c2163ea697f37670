"""Auxiliary models for :class:`strategies.TETLO`.

TETLO transfers knowledge from the searched (main) network to an auxiliary network and rates an
architecture by how well the auxiliary then generalises. The auxiliary can be any ``nn.Module``
whose penultimate features can be hooked (the input of its final ``nn.Linear``); this module gives
the default, a small CIFAR ResNet.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CifarResNet"]


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016, Sec. 4.2): a 3×3 stem, three stages of ``n`` basic
    blocks at widths ``w, 2w, 4w`` (strides 1, 2, 2), global average pooling and a linear classifier;
    ``depth = 6n + 2`` (20 gives ResNet-20, 0.27 M parameters at ``width=16``).

    The penultimate features TETLO matches are the input of :attr:`classifier`.

    Parameters
    ----------
    num_classes
        Number of output classes.
    depth
        Network depth, ``6n + 2`` for an integer ``n >= 1`` (8, 14, 20, 32, ...).
    width
        Channels of the first stage.
    in_channels
        Channels of the input images.
    """

    def __init__(self, num_classes: int = 10, depth: int = 20, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels),
                            ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CifarResNet: {name} must be a positive integer, got {value!r}")
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(_BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.classifier(out.flatten(1))
