"""TensorBoard output, read back with tensorboard's own event reader: the one-shot architecture
distribution callback, the multi-trial logger behind the nnictl tuners, and the compat link that
makes the web portal's TensorBoard button open the trial's log directory."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nni_compat as compat
from nni_plugins.table import NasBench201Table
from nni_plugins.tensorboard import ArchDistributionLogger, TrialMetricsLogger, distribution_image
from nni_plugins.tuners import GOALTuner

from .oneshot_helpers import TinySpace, classification, search

torch.set_num_threads(1)


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.parametrize("strategy_name", ["DARTS", "DrNAS"])
def test_arch_distribution_per_epoch_scalars_and_image(tmp_path, strategy_name):
    if strategy_name == "DARTS":
        from nni.nas.strategy import DARTS
        strategy = DARTS()
    else:
        from strategies import DrNAS
        strategy = DrNAS()
    log_dir = tmp_path / "arch"
    evaluator = classification(max_epochs=2, n=8, size=8, callbacks=[ArchDistributionLogger(str(log_dir))])
    _, module, _ = search(strategy, TinySpace(c=4), evaluator)
    acc = _events(log_dir)
    tags = acc.Tags()
    final = module.export_probs()
    assert set(final) == {"op", "last"}
    for label, dist in final.items():
        per_epoch = {}
        for choice in dist:
            points = _scalars(acc, f"arch/{label}/{choice}")
            assert [s for s, _ in points] == [0, 1]
            for step, value in points:
                per_epoch.setdefault(step, []).append(value)
            assert points[-1][1] == pytest.approx(dist[choice], abs=1e-6)
        for values in per_epoch.values():
            assert sum(values) == pytest.approx(1.0, abs=1e-5)
        entropy = _scalars(acc, f"arch_entropy/{label}")
        assert [s for s, _ in entropy] == [0, 1] and all(0 <= v <= np.log(len(dist)) + 1e-6 for _, v in entropy)
    images = acc.Images("arch/distribution")
    assert [i.step for i in images] == [0, 1]
    assert (images[0].height, images[0].width) == (2 * 12, 3 * 12)  # 2 labels x 3 candidates
    assert "arch/argmax/text_summary" in tags["tensors"]


def test_distribution_image_colours():
    image = distribution_image({"a": {"x": 0.0, "y": 1.0}, "b": {"z": 1.0}}, cell=2)
    assert image.shape == (3, 4, 4) and image.dtype == np.uint8
    assert (image[:, 0, 0] == 255).all()                    # p = 0: white
    assert tuple(image[:, 0, 2]) == (8, 48, 107)              # p = 1: dark blue
    assert (image[:, 2, 2] == 200).all()                     # padding: grey
    with pytest.raises(ValueError, match="empty"):
        distribution_image({})


def test_callback_without_logger_or_dir_is_an_error(tmp_path):
    from nni.nas.strategy import DARTS
    evaluator = classification(max_epochs=1, n=8, size=8, callbacks=[ArchDistributionLogger()])
    with pytest.raises(ValueError, match="no TensorBoard logger"):
        search(DARTS(), TinySpace(c=4), evaluator)


def test_tuner_logs_trials_best_so_far_and_surrogate_quality(tmp_path):
    """The GOAL tuner (as nnictl runs it) writes per-trial metric and architecture, best-so-far,
    failures and GOAL's surrogate quality (Kendall tau from ``model_history``)."""
    table = NasBench201Table()
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    space = {e: {"_type": "choice", "_value": ops} for e in ["0_1", "0_2", "1_2", "0_3", "1_3", "2_3"]}
    tuner = GOALTuner(space="nasbench201", n_init=3, batch_size=2, epochs=5, ensemble=1, hidden=8, ascent_steps=3,
                      seed=0, tensorboard_dir=str(tmp_path / "tuner"))
    tuner.update_search_space(space)
    metrics = []
    for pid in range(10):
        params = tuner.generate_parameters(pid)
        if pid == 4:
            tuner.trial_end(pid, False)
            continue
        metrics.append(table.query(params))
        tuner.receive_trial_result(pid, params, metrics[-1])
        tuner.trial_end(pid, True)
    tuner._on_exit()  # the logger flushes after every trial
    acc = _events(tmp_path / "tuner")
    assert [v for _, v in _scalars(acc, "trial/metric")] == pytest.approx(metrics)
    best = [v for _, v in _scalars(acc, "search/best_so_far")]
    assert best == pytest.approx(list(np.maximum.accumulate(metrics)))
    assert [v for _, v in _scalars(acc, "search/failed_trials")] == [1]
    history = tuner.strategy.model_history
    taus = [r["kendall_tau"] for r in history if r.get("kendall_tau") is not None]
    assert taus and [v for _, v in _scalars(acc, "surrogate/kendall_tau")] == pytest.approx(taus)
    assert "trial/architecture/text_summary" in acc.Tags()["tensors"]


def test_model_history_scalars_are_logged_at_their_num_evaluated():
    """TrialMetricsLogger reads a strategy's ``model_history`` (NASGEM's entries here): every scalar
    but the step ``num_evaluated``, NaN skipped."""
    written = []

    class Writer:
        def __init__(self, log_dir):
            pass

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

    class FakeNASGEM:
        model_history = [{"num_evaluated": 12, "num_heldout": 3, "kendall_tau": 0.5, "seconds": 0.1},
                         {"num_evaluated": 16, "num_heldout": 3, "kendall_tau": float("nan"), "seconds": 0.1}]

    logger = TrialMetricsLogger("unused", strategy=FakeNASGEM(), writer_factory=Writer)
    logger._log_quality()
    assert ("surrogate/kendall_tau", 0.5, 12) in written and ("surrogate/num_heldout", 3, 16) in written
    assert all(tag != "surrogate/num_evaluated" for tag, _, _ in written)
    assert [step for tag, _, step in written if tag == "surrogate/kendall_tau"] == [12]


def test_compat_links_trial_output_for_tensorboard_button(tmp_path, monkeypatch):
    """The directory NNI's manager opens for the TensorBoard button
    (<exp>/trials/<id>/output/tensorboard) is the trial's $NNI_OUTPUT_DIR/tensorboard."""
    trial_dir = tmp_path / "exp1" / "environments" / "env-a" / "trials" / "Ab1Cd"
    trial_dir.mkdir(parents=True)
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(trial_dir))
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "Ab1Cd")
    compat._fix_tensorboard_button_dir()
    opened = tmp_path / "exp1" / "trials" / "Ab1Cd" / "output" / "tensorboard"
    assert opened.is_dir() and opened.resolve() == (trial_dir / "tensorboard").resolve()
    (trial_dir / "tensorboard" / "x").write_text("1")
    assert (opened / "x").read_text() == "1"
    compat._fix_tensorboard_button_dir()  # idempotent
    # outside a local trial, or in another layout: nothing happens
    other = tmp_path / "elsewhere" / "Zz9"
    other.mkdir(parents=True)
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(other))
    monkeypatch.setenv("NNI_TRIAL_JOB_ID", "Zz9")
    compat._fix_tensorboard_button_dir()
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "exp1"] and not (tmp_path / "trials").exists()


def test_trial_logger_checkpoint_continues_the_curves():
    """NNI's Chain saves every middleware's state with the strategy's: the logger's counters
    survive a checkpoint, so a resumed run appends to the same curves (it had no state_dict, and
    every checkpoint of a multi-trial `nni-plugins search` failed with NotImplementedError)."""
    from types import SimpleNamespace

    from nni.nas.space import ModelStatus

    written = []

    class Writer:
        def __init__(self, log_dir):
            pass

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def add_text(self, tag, text, step):
            pass

        def flush(self):
            pass

    def trial(metric):
        model = SimpleNamespace(metric=metric, sample={"op": metric})
        return SimpleNamespace(model=model, status=ModelStatus.Trained)

    first = TrialMetricsLogger("unused", writer_factory=Writer)
    for metric in (0.5, 0.7, None):
        first._on_training_end(trial(metric))
    resumed = TrialMetricsLogger("unused", writer_factory=Writer)
    resumed.load_state_dict(first.state_dict())
    written.clear()
    resumed._on_training_end(trial(0.6))
    assert ("trial/metric", 0.6, 3) in written and ("search/best_so_far", 0.7, 3) in written
