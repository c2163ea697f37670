"""Tiny spaces, data and a direct search runner shared by the DrNAS / GAEA / one-shot-common tests."""
from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
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


class Holder(pl.LightningModule):
    """A bare Lightning module holding ``model``: what a strategy's one-shot module wraps."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def oneshot_module(strategy, space):
    """``space`` mutated into ``strategy``'s supernet, and the strategy's Lightning module around it."""
    model = strategy.mutate_model(space)
    return model, strategy.configure_oneshot_module(Holder(model))


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


class RecordAtTrainStart(pl.Callback):
    """Copies what a run starts from: the epoch, the module's state and every optimiser's state."""

    def on_train_start(self, trainer, pl_module):
        self.epoch = trainer.current_epoch
        self.module = pl_module
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizer_states = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]


def checkpointed_experiment(tmp_path, strategy, max_epochs: int, *callbacks):
    """A ``NasExperiment`` (id ``resumable``) on :class:`TinySpace` whose evaluator writes ``last.ckpt``,
    so that ``strategy.state_dict()`` names a checkpoint and ``resume()`` continues from it.
    Set ``HOME`` / ``NNI_CONFIG_DIR`` to ``tmp_path`` before calling."""
    from nni.nas.experiment import NasExperiment
    from pytorch_lightning.callbacks import ModelCheckpoint
    evaluator = classification(max_epochs=max_epochs, n=16, size=16, enable_checkpointing=True,
                               callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), *callbacks])
    experiment = NasExperiment(TinySpace(), evaluator, strategy, id="resumable")
    experiment.config.experiment_working_directory = str(tmp_path / "exp")
    return experiment


def run_then_resume(tmp_path, monkeypatch, make):
    """Runs ``make()`` for 2 epochs in a :func:`checkpointed_experiment`, then resumes a fresh ``make()``
    to epoch 3 through ``NasExperiment.resume()``. Checks that the resumed run starts at epoch 2 from
    bit-equal module and optimiser states, ends at epoch 3 and exports a sample ``freeze()`` accepts.
    Returns the first strategy, the :class:`RecordAtTrainStart` of the resumed run and the checkpoint path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni"))
    torch.manual_seed(0)
    first = checkpointed_experiment(tmp_path, make(), 2)
    try:
        first.run()
        final = {k: v.detach().clone() for k, v in first.strategy.oneshot_module.state_dict().items()}
        ckpt_path = first.strategy.state_dict()["ckpt_path"]
        saved = torch.load(ckpt_path, weights_only=False)
    finally:
        first.stop()
    torch.manual_seed(1)
    record = RecordAtTrainStart()
    second = checkpointed_experiment(tmp_path, make(), 3, record)
    try:
        second.resume()
        assert record.epoch == 2 and second.strategy.oneshot_module.trainer.current_epoch == 3
        assert_same_tensors(record.state, final)
        assert_same_tensors({"opt": record.optimizer_states}, {"opt": saved["optimizer_states"]})
        TinySpace().freeze(second.export_top_models(formatter="dict")[0])
    finally:
        second.stop()
    return first.strategy, record, ckpt_path


def assert_same_tensors(actual: dict, expected: dict) -> None:
    """Equal keys, and bit-equal tensors (recursively through dicts and lists)."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        other = actual[key]
        if isinstance(value, dict):
            assert_same_tensors(other, value)
        elif isinstance(value, (list, tuple)):
            assert len(other) == len(value), key
            for a, b in zip(other, value):
                assert_same_tensors({0: a}, {0: b})
        elif torch.is_tensor(value):
            assert torch.equal(other, value), key
        else:
            assert other == value, key
