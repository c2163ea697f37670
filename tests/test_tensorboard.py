"""TensorBoard output, read back with tensorboard's own event reader: the one-shot architecture
distribution callback, the multi-trial logger behind the nnictl tuners, and the compat link that
makes the web portal's TensorBoard button open the trial's log directory."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_lightning.loggers import CSVLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

import nni_compat as compat
from nni.nas.space import ModelStatus
from nni_plugins.evaluators import RunDirLogger
from nni_plugins.table import NasBench201Table
from nni_plugins.tensorboard import (
    MIN_HELDOUT, ArchDistributionLogger, TrialMetricsLogger, distribution_image, flatten_hparams, log_run_hparams,
)
from nni_plugins.tuners import GOALTuner

from .oneshot_helpers import TinySpace, classification, search

torch.set_num_threads(1)


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def _layout(acc: EventAccumulator) -> dict[str, dict[str, list[str]]]:
    """The Custom Scalars layout: {category: {chart title: [tag regexes of its lines]}}."""
    [event] = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}


def _hparams(acc: EventAccumulator) -> tuple[dict, list[str]]:
    """The HParams tab's data of a run: (its hyperparameters, its metrics: the run's scalars). No
    experiment summary, which would fix the tab's columns for every other run."""
    content = acc.PluginTagToContent("hparams")
    assert sorted(content) == ["_hparams_/session_end_info", "_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    return values, sorted(acc.Tags()["scalars"])


def _check_arch_views(acc: EventAccumulator, final: dict, scalar_prefix: str, epochs: int) -> None:
    """Layout: one chart per choice whose lines are its candidates' scalars (named by the candidate);
    one heat map and one table of the chosen candidates (by name) per epoch."""
    layout = _layout(acc)
    assert list(layout) == ["architecture"]
    assert layout["architecture"] == {label: [f"^{re.escape(f'{scalar_prefix}/{label}/{c}')}$" for c in dist]
                                      for label, dist in final.items()}
    scalar_tags = acc.Tags()["scalars"]
    for label, dist in final.items():
        for choice in dist:
            assert f"{scalar_prefix}/{label}/{choice}" in scalar_tags
    images = acc.Images("arch/distribution")
    assert [i.step for i in images] == list(range(epochs))
    assert (images[0].height, images[0].width) == (2 * 12, 3 * 12)  # 2 labels x 3 candidates
    chosen = _texts(acc, "arch/chosen")
    assert [step for step, _ in chosen] == list(range(epochs))
    for label, dist in final.items():
        best = max(dist, key=dist.get)
        assert f"| `{label}` | `{best}` | {dist[best]:.3f} |" in chosen[-1][1]
    [(_, legend)] = _texts(acc, "arch/legend")
    assert "| 0 | `op` | `conv`, `skip`, `pool` |" in legend and "| 1 | `last` | `conv`, `pool` |" in legend


@pytest.mark.parametrize("strategy_name", ["DARTS", "DrNAS"])
def test_arch_distribution_callback_per_epoch_scalars_and_image(tmp_path, strategy_name):
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
    _check_arch_views(acc, final, "arch", epochs=2)


def test_oneshot_module_writes_layout_heatmap_and_chosen_names_to_the_search_logger(tmp_path):
    """DrNAS / GAEA / TETLO (their common module) on the TensorBoard logger `nni-plugins search` gives
    them: the per-choice charts, a heat map and the chosen candidates by name each epoch, and no
    index scalar."""
    from strategies import DrNAS
    evaluator = classification(max_epochs=2, n=8, size=8, logger=RunDirLogger(output_dir=str(tmp_path)))
    _, module, trainer = search(DrNAS(), TinySpace(c=4), evaluator)
    trainer.logger.finalize("success")
    acc = _events(tmp_path / "lightning")
    final = module.export_probs()
    _check_arch_views(acc, final, "prob", epochs=2)
    assert not [tag for tag in acc.Tags()["scalars"] if tag.startswith("argmax")]
    for label, dist in final.items():  # Lightning's scalars end at the exported distribution
        for choice, p in dist.items():
            assert acc.Scalars(f"prob/{label}/{choice}")[-1].value == pytest.approx(p, abs=1e-6)


def test_oneshot_module_without_tensorboard_logger_still_logs_scalars(tmp_path):
    from strategies import GAEA
    evaluator = classification(max_epochs=1, n=8, size=8, logger=CSVLogger(str(tmp_path)))
    _, _, trainer = search(GAEA(), TinySpace(c=4), evaluator)
    assert "prob/op/conv" in trainer.callback_metrics


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


def test_tuner_logs_trials_best_so_far_proposals_and_no_tau_on_few_heldout(tmp_path):
    """The GOAL tuner (as nnictl runs it) writes per-trial metric and architecture, best-so-far at
    every finished trial, failures, the proposal counts of every candidate of the space as an image
    every 10 finished trials and at the end, and no Kendall tau while fewer than 10 held-out
    architectures back it."""
    table = NasBench201Table()
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    edges = ["0_1", "0_2", "1_2", "0_3", "1_3", "2_3"]
    space = {e: {"_type": "choice", "_value": ops} for e in edges}
    tuner = GOALTuner(space="nasbench201", n_init=3, batch_size=2, epochs=5, ensemble=1, hidden=8, ascent_steps=3,
                      seed=0, tensorboard_dir=str(tmp_path / "tuner"))
    tuner.update_search_space(space)
    metrics, proposed = [], []
    for pid in range(12):
        params = tuner.generate_parameters(pid)
        proposed.append(params)
        if pid == 4:
            tuner.trial_end(pid, False)
            continue
        metrics.append(table.query(params))
        tuner.receive_trial_result(pid, params, metrics[-1])
        tuner.trial_end(pid, True)
    tuner._on_exit()
    tuner._thread.join(timeout=60)  # the strategy's thread ends the chain: the logger's last image
    acc = _events(tmp_path / "tuner")
    steps = [1, 2, 3, 4, *range(6, 13)]                    # trial 5 failed
    assert _scalars(acc, "trial/metric") == [(s, pytest.approx(m)) for s, m in zip(steps, metrics)]
    best = _scalars(acc, "search/best_so_far")   # one point per finished trial, the failed one included
    expected = list(np.maximum.accumulate(metrics))
    assert [s for s, _ in best] == list(range(1, 13))
    assert [v for _, v in best] == pytest.approx(expected[:4] + [expected[3]] + expected[4:])
    assert _scalars(acc, "search/failed_trials") == [(5, 1)]
    history = tuner.strategy.model_history
    assert history and all(r.get("num_heldout_all", 0) < MIN_HELDOUT for r in history)
    assert not [tag for tag in acc.Tags()["scalars"] if tag.startswith("surrogate/kendall_tau")]
    images = acc.Images("search/proposals")
    assert [i.step for i in images] == [10, 12]
    assert (images[0].height, images[0].width) == (6 * 12, 5 * 12)  # 6 edges x 5 operations
    counts = _texts(acc, "search/proposal_counts")
    assert [s for s, _ in counts] == [10, 12]
    submitted = [m.sample for m in tuner.engine.list_models()]   # the 12 run, and the one kept ready for a request
    assert [m for m in submitted if m in proposed] == proposed and len(submitted) <= len(proposed) + 1
    for edge in edges:
        value = proposed[0][edge]
        n = sum(p[edge] == value for p in submitted)
        assert f"`{value}` {n}" in counts[-1][1].split(f"| `{edge}` |")[1].split("\n")[0]
    [(_, legend)] = _texts(acc, "search/proposals_legend")
    assert f"| 0 | `0_1` | {', '.join(f'`{op}`' for op in ops)} |" in legend
    assert "trial/architecture/text_summary" in acc.Tags()["tensors"]


def test_surrogate_quality_needs_enough_heldout_architectures():
    """A Kendall tau is logged only with at least MIN_HELDOUT held-out architectures behind it, and
    its count beside it; other model figures always, NaN never."""
    written = []

    class Writer:
        def __init__(self, log_dir):
            pass

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

    class Strategy:
        model_history = [  # NASGEM-style, then GOAL-style entries
            {"num_evaluated": 12, "num_heldout": 2, "kendall_tau": 1.0, "seconds": 0.1},
            {"num_evaluated": 50, "num_heldout": 10, "kendall_tau": 0.4, "seconds": 0.2},
            {"num_evaluated": 60, "num_heldout": 12, "kendall_tau": float("nan"), "seconds": 0.1},
            {"num_evaluated": 70, "round": 5, "num_heldout": 3, "kendall_tau": -0.33, "num_heldout_all": 9,
             "kendall_tau_all": 0.5, "train_loss": 0.7},
            {"num_evaluated": 73, "round": 6, "num_heldout": 3, "kendall_tau": 0.33, "num_heldout_all": 12,
             "kendall_tau_all": 0.25, "train_loss": 0.6},
        ]

    assert MIN_HELDOUT == 10
    logger = TrialMetricsLogger("unused", strategy=Strategy(), writer_factory=Writer)
    logger._log_quality()
    taus = [(tag, value, step) for tag, value, step in written if "kendall" in tag or "heldout" in tag]
    assert taus == [("surrogate/num_heldout", 10, 50), ("surrogate/kendall_tau", 0.4, 50),
                    ("surrogate/num_heldout_all", 12, 73), ("surrogate/kendall_tau_all", 0.25, 73)]
    assert ("surrogate/seconds", 0.1, 12) in written and ("surrogate/train_loss", 0.6, 73) in written
    assert not [tag for tag, _, _ in written if tag in ("surrogate/num_evaluated", "surrogate/round")]  # steps


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


class _Engine:
    """The engine below the logger: takes submissions, records waits, holds no callbacks."""

    def __init__(self):
        self.waited = []

    def submit_models(self, *models):
        pass

    def wait_models(self, *models):
        self.waited.append(models)

    def register_model_event_callback(self, event_type, callback):
        pass

    def unregister_model_event_callback(self, event_type, callback):
        pass


def _trial(metric, sample):
    model = SimpleNamespace(metric=metric, sample=sample)
    return SimpleNamespace(model=model, status=ModelStatus.Trained if metric is not None else ModelStatus.Failed)


def _run_trials(logger, results):
    for metric, sample in results:
        trial = _trial(metric, sample)
        logger.submit_models(trial.model)
        logger._on_training_end(trial)


def test_trial_logger_checkpoint_continues_the_curves():
    """NNI's Chain saves every middleware's state with the strategy's: the logger's counters and
    proposal counts survive a (JSON) checkpoint, so a resumed run appends to the same curves and
    reports the run's progress counted from its start."""
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

    first = TrialMetricsLogger("unused", writer_factory=Writer)
    first.set_engine(_Engine())
    _run_trials(first, [(0.5, {"op": "a"}), (0.7, {"op": "b"}), (None, {"op": "a"})])
    progress = []  # what the search records in run.json after each trial
    resumed = TrialMetricsLogger("unused", writer_factory=Writer, on_trial_end=progress.append)
    resumed.set_engine(_Engine())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    written.clear()
    _run_trials(resumed, [(0.6, {"op": "b"}), (None, {"op": "a"})])
    assert ("trial/metric", 0.6, 4) in written and ("search/best_so_far", 0.7, 4) in written
    assert resumed.state_dict()["proposed"] == {"op": {"a": 3, "b": 2}}
    assert progress == [{"trials_succeeded": 3, "trials_failed": 1, "best_metric": 0.7},
                        {"trials_succeeded": 3, "trials_failed": 2, "best_metric": 0.7}]


def test_trial_logger_waits_with_the_engine():
    """A strategy's final ``wait_models()`` reaches the engine: the generic wait of NNI's
    ExecutionEngine returned while the last trial still ran, so its result was never logged (nor
    learnt by the strategy)."""
    logger = TrialMetricsLogger("unused", writer_factory=lambda log_dir: None)
    engine = _Engine()
    logger.set_engine(engine)
    model = SimpleNamespace(sample={"op": "a"})
    logger.wait_models()
    logger.wait_models(model)
    assert engine.waited == [(), (model,)]


def test_trial_logger_writes_hparams_and_final_proposals_at_cleanup(tmp_path):
    """Given the strategy's arguments, the logger ends the search with an HParams entry (arguments,
    strategy name, best metric, trial counts) and a last proposal image, in its own directory."""

    class MyStrategy:
        model_history = []

    logger = TrialMetricsLogger(str(tmp_path), strategy=MyStrategy(), image_every=10,
                                hparams={"n_init": 3, "encoder": {"dims": [8, 4], "kind": "gin"}})
    logger.set_engine(_Engine())
    _run_trials(logger, [(0.5, {"op": "a", "in": [0, 1]}), (0.8, {"op": "b", "in": [1]}),
                         (None, {"op": "a", "in": [0]})])
    logger._cleanup()
    assert all(p.is_file() for p in (tmp_path / "hparams").iterdir())   # no timestamped sub-directory
    values, metric_names = _hparams(_events(tmp_path / "hparams"))
    assert values == {"n_init": 3, "encoder.dims": "[8, 4]", "encoder.kind": "gin", "strategy": "MyStrategy"}
    assert metric_names == ["final_metric", "trials_failed", "trials_succeeded"]
    assert _scalars(_events(tmp_path / "hparams"), "final_metric") == [(3, pytest.approx(0.8))]
    acc = _events(tmp_path)
    [image] = acc.Images("search/proposals")
    assert image.step == 3 and (image.height, image.width) == (2 * 12, 2 * 12)  # op: a, b; in: 0, 1
    [(_, counts)] = _texts(acc, "search/proposal_counts")
    assert "| `op` | `a` 2, `b` 1 |" in counts and "| `in` | `0` 2, `1` 2 |" in counts


def test_trial_logger_holds_running_trials_and_logs_those_ending_after_the_strategy(tmp_path):
    """NNI's training-service engine drops the events of a model nobody references, and a strategy's run
    may end before its last trials do (the experiment waits for them): the logger holds each running
    model, counts the trials that end after the strategy's run, then writes its final entries once."""
    import gc
    import weakref

    class Model:  # weakly referable, as NNI's model spaces are
        def __init__(self, op):
            self.sample, self.metric = {"op": op}, None

    progress = []
    logger = TrialMetricsLogger(str(tmp_path), hparams={"n": 1}, on_trial_end=progress.append)
    logger.set_engine(_Engine())
    models = [Model(op) for op in "ab"]
    logger.submit_models(*models)
    refs = [weakref.ref(m) for m in models]
    del models
    gc.collect()
    assert all(ref() is not None for ref in refs)  # what the engine holds is a weak reference
    logger._cleanup()  # the strategy's run ends with both trials running
    assert not (tmp_path / "hparams").exists()
    for ref, metric in zip(refs, (0.4, 0.6)):
        model = ref()
        model.metric = metric
        logger._on_training_end(SimpleNamespace(model=model, status=ModelStatus.Trained))
    assert [p["trials_succeeded"] for p in progress] == [1, 2] and progress[-1]["best_metric"] == 0.6
    assert _scalars(_events(tmp_path / "hparams"), "final_metric") == [(2, pytest.approx(0.6))]
    assert [step for step, _ in _scalars(_events(tmp_path), "trial/metric")] == [1, 2]
    del model
    gc.collect()
    assert all(ref() is None for ref in refs)  # released once ended
    logger.close()  # again: nothing more is written
    logger._on_training_end(SimpleNamespace(model=SimpleNamespace(sample={}, metric=0.9), status=ModelStatus.Trained))
    assert len(progress) == 2


def test_log_run_hparams_writes_flat_arguments_and_final_metrics_into_the_directory(tmp_path):
    log_run_hparams(tmp_path / "tb", {"strategy": "DrNAS", "seed": 0, "flag": True, "none": None,
                                      "strategy_args": {"arc_learning_rate": 3e-4, "stages": [4, 2]}},
                    {"final_metric": 0.91, "missing": None, "bad": float("nan")})
    assert all(p.is_file() for p in (tmp_path / "tb").iterdir())
    acc = _events(tmp_path / "tb")
    values, metric_names = _hparams(acc)
    assert values == {"strategy": "DrNAS", "seed": 0, "flag": "True", "none": "None",
                      "strategy_args.arc_learning_rate": pytest.approx(3e-4), "strategy_args.stages": "[4, 2]"}
    assert metric_names == ["final_metric"] and _scalars(acc, "final_metric") == [(0, pytest.approx(0.91))]
    assert flatten_hparams({"a": {"b": {"c": (1, "x")}}}) == {"a.b.c": '[1, "x"]'}
    # a resumed run records itself again: its new record replaces the old one
    log_run_hparams(tmp_path / "tb", {"strategy": "DrNAS", "complete": True}, {"final_metric": 0.95}, step=7)
    assert len(list((tmp_path / "tb").iterdir())) == 1
    acc = _events(tmp_path / "tb")
    assert _hparams(acc) == ({"strategy": "DrNAS", "complete": "True"}, ["final_metric"])
    assert _scalars(acc, "final_metric") == [(7, pytest.approx(0.95))]
