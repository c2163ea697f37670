"""Tests of nni_plugins.evaluators: DARTS training recipe, log placement, serialisation, one-shot DARTS."""
from __future__ import annotations

from pathlib import Path

import nni
import pytest
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.space import RawFormatModelSpace

from nni_plugins.datasets import build_datasets
from nni_plugins.evaluators import SearchClassification, SearchClassificationModule, build_evaluator

QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


class TinySpace(ModelSpace):
    """One LayerChoice over three convolutions, for 8x8 one-channel digits."""

    def __init__(self):
        super().__init__()
        self.conv = LayerChoice([nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2),
                                 nn.Conv2d(1, 4, 1)], label="conv")
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        return self.head(self.conv(x))


@pytest.fixture(scope="module")
def splits():
    return build_datasets("digits", limit=200, seed=0)


def _event_files(root: Path) -> list[Path]:
    return sorted(root.rglob("events.out.tfevents.*"))


def _scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for file in _event_files(log_dir):
        accumulator = EventAccumulator(str(file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


def _attached(evaluator):
    module = evaluator.module
    module.set_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    module.trainer = evaluator.trainer
    return module


def test_search_recipe_sgd_cosine_to_0001(splits):
    evaluator = build_evaluator(splits, max_epochs=7, logger=False, **QUIET)
    assert isinstance(evaluator, SearchClassification)
    module = _attached(evaluator)
    assert isinstance(module, SearchClassificationModule)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.025)
    assert group["momentum"] == pytest.approx(0.9) and group["weight_decay"] == pytest.approx(3e-4)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 7 and scheduler.eta_min == pytest.approx(0.001)
    assert config["lr_scheduler"]["interval"] == "epoch"
    rates = []
    for _ in range(7):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] == pytest.approx(0.001)
    # learning_rate overrides the recipe's initial rate only
    custom = _attached(build_evaluator(splits, learning_rate=0.1, logger=False, **QUIET))
    assert custom.configure_optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1)


def test_gradient_clip_5_lives_in_the_module(splits):
    evaluator = build_evaluator(splits, logger=False, **QUIET)
    # not a trainer-level clip: Lightning forbids that with the manual optimisation of one-shot modules
    assert evaluator.trainer.gradient_clip_val is None
    module = _attached(evaluator)
    assert module.gradient_clip_val == 5
    optimizer = module.configure_optimizers()["optimizer"]
    parameters = [p for p in module.parameters() if p.requires_grad]

    def clipped_norm(**kwargs):
        for p in parameters:
            p.grad = torch.full_like(p, 100.0)
        module.configure_gradient_clipping(optimizer, **kwargs)
        return torch.norm(torch.stack([p.grad.norm() for p in parameters])).item()

    assert clipped_norm() == pytest.approx(5.0, rel=1e-4)
    assert clipped_norm(gradient_clip_val=1.0) == pytest.approx(1.0, rel=1e-4)  # e.g. DARTS(gradient_clip_val=1)


def test_classification_kind_is_nnis_plain_evaluator(splits):
    evaluator = build_evaluator(splits, kind="classification", logger=False, **QUIET)
    assert type(evaluator) is Classification
    module = _attached(evaluator)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert evaluator.trainer.log_every_n_steps == 1


@pytest.mark.parametrize("kwargs, error", [
    (dict(kind="regression"), ValueError),
    (dict(max_epochs=0), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(num_workers=-1), ValueError),
    (dict(learning_rate=-0.1), ValueError),
])
def test_bad_evaluator_arguments(splits, kwargs, error):
    with pytest.raises(error):
        build_evaluator(splits, **kwargs)


def test_bad_module_arguments_and_splits():
    with pytest.raises(TypeError, match="DataSplits"):
        build_evaluator({"train": None})
    with pytest.raises(ValueError, match="num_classes"):
        SearchClassificationModule()
    with pytest.raises(ValueError, match="learning_rate_min"):
        SearchClassificationModule(num_classes=10, learning_rate=0.01, learning_rate_min=0.1)
    with pytest.raises(ValueError, match="gradient_clip_val"):
        SearchClassificationModule(num_classes=10, gradient_clip_val=-1)


def test_short_fit_reports_and_logs_under_output_dir_not_cwd(splits, tmp_path, monkeypatch):
    monkeypatch.delenv("NNI_OUTPUT_DIR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    evaluator = build_evaluator(splits, max_epochs=2, output_dir=str(tmp_path / "out"), **QUIET)
    frozen = RawFormatModelSpace(TinySpace(), evaluator).freeze({"conv": 0})
    with evaluator.mock_runtime(frozen):
        evaluator.evaluate(frozen.executable_model())
    assert 0.0 <= frozen.metrics.final <= 1.0
    assert len(frozen.metrics.intermediates) == 2  # one report per validation epoch
    log_dir = tmp_path / "out" / "lightning"
    assert _event_files(log_dir)
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= _scalar_tags(log_dir)
    assert list(cwd.iterdir()) == []


def test_trial_process_logs_under_nni_output_dir(splits, tmp_path, monkeypatch):
    """The evaluator is dumped by the driver and rebuilt in the trial, where NNI sets NNI_OUTPUT_DIR."""
    monkeypatch.delenv("NNI_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "out"
    for kind in ("search", "classification"):
        dumped = nni.dump(build_evaluator(splits, kind=kind, output_dir=str(output_dir), **QUIET))
        trial_dir = tmp_path / f"trial_{kind}"
        monkeypatch.setenv("NNI_OUTPUT_DIR", str(trial_dir))
        evaluator = nni.load(dumped)
        assert Path(evaluator.trainer.logger.log_dir).resolve() == (trial_dir / "tensorboard").resolve()
        monkeypatch.delenv("NNI_OUTPUT_DIR")
        if kind == "search":
            evaluator.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
            assert _event_files(trial_dir / "tensorboard")
    assert not output_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial_search"]


def test_dump_is_small_and_round_trips(splits):
    evaluator = build_evaluator(splits, max_epochs=3, batch_size=32, output_dir="/tmp/some/run", **QUIET)
    dumped = nni.dump(evaluator)
    assert len(dumped) < 4096, "the evaluator must not carry pickled data"
    assert "pickle" not in dumped
    loaded = nni.load(dumped)
    assert isinstance(loaded, SearchClassification)
    assert nni.dump(loaded) == dumped
    assert loaded.trainer.max_epochs == 3 and loaded.train_dataloaders.batch_size == 32
    assert len(loaded.train_dataloaders.dataset) == len(splits.train)
    assert loaded.module.gradient_clip_val == 5 and loaded.module.hparams.learning_rate == pytest.approx(0.025)


def test_oneshot_darts_experiment_runs_and_exports(splits, tmp_path, monkeypatch):
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import DARTS
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni_config"))
    monkeypatch.delenv("NNI_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    space = TinySpace()
    evaluator = build_evaluator(splits, max_epochs=1, batch_size=32, output_dir=str(tmp_path / "run"), **QUIET)
    experiment = NasExperiment(space, evaluator, DARTS())
    experiment.config.experiment_working_directory = str(tmp_path / "experiments")
    try:
        experiment.run()
        top = experiment.export_top_models(formatter="dict")
    finally:
        experiment.stop()
    assert len(top) == 1 and top[0]["conv"] in (0, 1, 2)
    assert isinstance(space.freeze(top[0]), nn.Module)
    tags = _scalar_tags(tmp_path / "run" / "lightning")
    assert {"prob/conv/0", "prob/conv/1", "prob/conv/2", "train_loss"} <= tags
    assert not (tmp_path / "lightning_logs").exists()
