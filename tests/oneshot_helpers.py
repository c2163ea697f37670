"""Tiny spaces, data and a direct search runner shared by the DrNAS / GAEA / one-shot-common tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import nni_plugins.compat  # noqa: F401
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.nn.pytorch import LayerChoice, ModelSpace


def conv_bn(c: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c))


class TinySpace(ModelSpace):
    """Stem -> two LayerChoices sharing label ``op`` -> one LayerChoice ``last`` -> classifier."""

    def __init__(self, c: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        ops = lambda: {"conv": conv_bn(c), "skip": nn.Identity(), "pool": nn.AvgPool2d(3, 1, 1)}  # noqa: E731
        self.a = LayerChoice(ops(), label="op")
        self.b = LayerChoice(ops(), label="op")
        self.c = LayerChoice({"conv": conv_bn(c), "pool": nn.MaxPool2d(3, 1, 1)}, label="last")
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.c(self.b(self.a(self.stem(x))))
        return self.head(x.mean((2, 3)))


def tiny_data(n: int = 16, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def classification(max_epochs: int = 1, n: int = 16, size: int = 16, batch_size: int = 8, **trainer_kwargs):
    x, y = tiny_data(n, size)
    kwargs = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs)
    return Classification(train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=batch_size),
                          val_dataloaders=DataLoader(TensorDataset(x, y), batch_size=batch_size),
                          max_epochs=max_epochs, num_classes=10, **kwargs)


def search(strategy, space, evaluator):
    """Run a one-shot strategy on ``space`` without an experiment; returns (export, lightning module, trainer)."""
    model = strategy.mutate_model(space)
    lightning = strategy.mutate_evaluator(evaluator)
    lightning.evaluate(model)
    return lightning.module.export(), lightning.module, lightning.trainer
