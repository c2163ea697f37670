"""``nni-plugins retrain`` and ``search --retrain``: the found architecture trained from scratch and tested.

Every retrain here uses the digits space with a tiny protocol (1-2 epochs, width 4, at most 200
training images) so that the file runs in a minute or two; the multi-trial search through NNI's
manager is marked slow, as in tests/test_search.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nni_plugins.retrain as retrain_module
from nni_plugins.cli import main
from nni_plugins.retrain import (PROTOCOLS, final_space_args, load_retrained, random_samples, resolve_settings,
                                 write_json)
from nni_plugins.spaces import build_space
from tests.nni_harness import isolate, isolated, multi_trial_search  # noqa: F401 (isolated: a fixture)

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_subset.npz"
TINY = ["--epochs", "1", "--width", "4"]


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture(scope="module")
def one_shot_run(tmp_path_factory) -> Path:
    """A finished one-shot search (DARTS, 1 epoch, 200 digits images); tests retrain copies of it."""
    root = tmp_path_factory.mktemp("oneshot")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, root)
        assert main(["search", "--strategy", "darts", "--epochs", "1", "--limit", "200", "--output",
                     str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def run(one_shot_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(one_shot_run, copy)
    return copy


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err  # one clear message
    return err[0]


def _no_null(value) -> bool:
    if isinstance(value, dict):
        return all(_no_null(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_null(v) for v in value)
    return value is not None


def _scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for event_file in root.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_one_shot_search_records_the_supernet_estimate_not_null(one_shot_run):
    payload = json.loads((one_shot_run / "best_architecture.json").read_text())
    assert _no_null(payload), payload
    metric = payload["metric"]
    assert metric["kind"] == "one-shot estimate" and metric["weights"] == "inherited"
    assert 0.0 <= metric["supernet_val_acc"] <= 1.0
    assert not (one_shot_run / "trials.json").exists()  # one architecture only


def test_retrain_one_shot_run_writes_model_results_curves_and_best_architecture(run, capsys):
    assert main(["retrain", str(run), "--epochs", "2", "--width", "4"]) == 0
    out = capsys.readouterr().out
    assert "retrained     test acc" in out and "strategy      darts on digits" in out
    directory = run / "retrain"
    result = json.loads((directory / "result.json").read_text())
    assert result["protocol"] == "digits-quick" and result["epochs"] == 2 and result["resumed_from_epoch"] == 0
    assert result["settings"]["width"] == 4 and result["settings"]["epochs"] == 2
    assert result["space_args"]["channels"] == 4
    assert 0.0 <= result["test_acc"] <= 1.0 and result["parameters"] > 0 and result["seconds"] > 0
    assert (result["train_images"], result["test_images"]) == (200, 359)  # train + val of the search; digits test
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    assert result["test_acc"] == result["history"][-1]["test_acc"]

    model = load_retrained(directory)  # architecture.json + model.pt (a state_dict)
    assert sum(p.numel() for p in model.parameters()) == result["parameters"]
    assert isinstance(torch.load(directory / "model.pt", weights_only=True), dict)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    arch = json.loads((directory / "architecture.json").read_text())
    best = json.loads((run / "best_architecture.json").read_text())
    assert arch["sample"] == best["sample"] == result["sample"]

    assert best["retrain"]["test_acc"] == result["test_acc"] and best["retrain"]["protocol"] == "digits-quick"
    assert best["metric"]["kind"] == "one-shot estimate" and _no_null(best)
    scalars = _scalars(directory / "tensorboard")
    assert {"train/loss", "train/acc", "test/acc", "lr"} <= set(scalars)
    assert sorted(step for step, _ in scalars["test/acc"]) == [1, 2]
    assert (directory / "last.ckpt").is_file()
    assert not list(run.rglob("*.tmp"))  # every file renamed into place
    summary = json.loads((directory / "summary.json").read_text())
    assert [m["member"] for m in summary["members"]] == ["best"]

    assert main(["export", str(run)]) == 0  # export keeps working and shows the retrain
    assert json.loads(capsys.readouterr().out)["retrain"]["test_acc"] == result["test_acc"]


def test_killed_retrain_resumes_from_last_ckpt_like_an_uninterrupted_one(run, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    shutil.copytree(run, reference)
    assert main(["retrain", str(reference), "--epochs", "2", "--width", "4"]) == 0
    expected = json.loads((reference / "retrain" / "result.json").read_text())

    save = retrain_module.save_torch

    def save_then_die(obj, path):  # killed right after the first epoch's checkpoint
        save(obj, path)
        if path.name == "last.ckpt":
            raise KeyboardInterrupt

    monkeypatch.setattr(retrain_module, "save_torch", save_then_die)
    assert main(["retrain", str(run), "--epochs", "2", "--width", "4"]) == 130
    assert torch.load(run / "retrain" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert not (run / "retrain" / "result.json").exists() and not (run / "retrain" / "model.pt").exists()
    monkeypatch.setattr(retrain_module, "save_torch", save)
    capsys.readouterr()

    assert main(["retrain", str(run), "--epochs", "2", "--width", "4"]) == 0
    assert "resuming from" in capsys.readouterr().err
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert result["resumed_from_epoch"] == 1 and [row["epoch"] for row in result["history"]] == [1, 2]
    for key in ("test_acc", "parameters"):
        assert result[key] == expected[key]
    for got, want in zip(result["history"], expected["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    assert sorted(step for step, _ in _scalars(run / "retrain" / "tensorboard")["test/acc"]) == [1, 2]

    # other settings than the checkpoint's: one error naming the fix; --restart starts over
    assert main(["retrain", str(run), "--epochs", "3", "--width", "4"]) == 2
    assert "--restart" in _error(capsys)
    assert main(["retrain", str(run), "--epochs", "1", "--width", "4", "--restart"]) == 0
    result = json.loads((run / "retrain" / "result.json").read_text())
    assert result["resumed_from_epoch"] == 0 and result["epochs"] == 1


def test_top_k_retrains_ranked_trials_and_random_baseline(run, capsys):
    space = build_space("digits", 10, (1, 8, 8))
    best = json.loads((run / "best_architecture.json").read_text())["sample"]
    other = random_samples(space, 1, seed=5)[0]
    write_json(run / "trials.json", [{"rank": 1, "sample": best, "metric": 0.5},  # as a multi-trial run writes it
                                     {"rank": 2, "sample": other, "metric": 0.4}])
    assert main(["retrain", str(run), "--top-k", "2", "--random", "2", *TINY]) == 0
    out = capsys.readouterr().out
    for name in ("best", "rank2", "random1", "random2"):
        assert f"\n{name} " in out
    assert "random        test acc" in out and "search bought" in out
    assert json.loads((run / "retrain" / "rank2" / "result.json").read_text())["sample"] == other
    summary = json.loads((run / "retrain" / "summary.json").read_text())
    assert [m["member"] for m in summary["members"]] == ["best", "rank2", "random1", "random2"]
    assert summary["random"]["count"] == 2
    randoms = [json.loads((run / "retrain" / f"random{i}" / "result.json").read_text())["sample"] for i in (1, 2)]
    assert randoms == random_samples(space, 2, seed=0)  # seeded by the search's seed
    assert main(["retrain", str(run), "--top-k", "3", *TINY]) == 2
    assert "exceeds the 2 successful trial(s)" in _error(capsys)


def test_search_retrain_with_yaml_overrides_then_flags_win(tmp_path, capsys):
    config = tmp_path / "run.yml"
    out = tmp_path / "run"
    config.write_text(f"strategy: darts\nepochs: 1\nlimit: 120\noutput: {out}\n"
                      "retrain: {epochs: 1, width: 4, learning_rate: 0.02, random: 1}\n")
    assert main(["search", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "retrained     test acc" in text and "random        test acc" in text
    result = json.loads((out / "retrain" / "result.json").read_text())
    assert (result["settings"]["learning_rate"], result["epochs"], result["train_images"]) == (0.02, 1, 120)
    assert yaml.safe_load((out / "config.yml").read_text())["retrain"]["width"] == 4

    assert main(["retrain", str(out), "--lr", "0.03", "--restart"]) == 0  # the YAML's width and epochs stay
    result = json.loads((out / "retrain" / "result.json").read_text())
    assert (result["settings"]["learning_rate"], result["settings"]["width"], result["epochs"]) == (0.03, 4, 1)


def test_search_retrain_flag_uses_the_space_protocol(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--strategy", "darts", "--epochs", "1", "--limit", "60", "--output", str(out),
                 "--retrain"]) == 0
    assert "retrained     test acc" in capsys.readouterr().out
    result = json.loads((out / "retrain" / "result.json").read_text())
    assert (result["protocol"], result["epochs"]) == ("digits-quick", PROTOCOLS["digits"]["epochs"])


def test_protocols_and_final_space_args():
    darts = resolve_settings("darts-hub")
    assert (darts.protocol, darts.epochs, darts.learning_rate, darts.learning_rate_min, darts.momentum) == \
        ("darts", 600, 0.025, 0.0, 0.9)
    assert (darts.weight_decay, darts.cutout, darts.drop_path, darts.auxiliary_weight, darts.grad_clip) == \
        (3e-4, 16, 0.2, 0.4, 5.0)
    assert final_space_args("darts-hub", {"width": 16, "num_cells": 8}, darts) == \
        {"width": 36, "num_cells": 20, "drop_path_prob": 0.2, "auxiliary_loss": True}
    nb201 = resolve_settings("nasbench201")
    assert (nb201.epochs, nb201.batch_size, nb201.learning_rate, nb201.nesterov, nb201.weight_decay) == \
        (200, 256, 0.1, True, 5e-4)
    assert final_space_args("nasbench201", {"C": 4, "N": 1, "affine": False}, nb201) == {"C": 16, "N": 5, "affine": True}
    assert resolve_settings("nasbench201-hub") == nb201
    assert resolve_settings("nasbench101-hub").optimizer == "rmsprop"
    digits = resolve_settings("digits", {"epochs": 3, "width": None})
    assert (digits.protocol, digits.epochs, digits.cutout, digits.drop_path) == ("digits-quick", 3, 0, 0.0)
    assert final_space_args("digits", {"channels": 8}, digits) == {"channels": 8}  # width None: as searched
    assert set(PROTOCOLS) == {"digits", "nasbench201", "nasbench201-hub", "nasbench101-hub", "darts-hub", "wide-cell"}


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "unknown retrain setting(s) ['bogus']"),
    ({"epochs": 0}, "'epochs' must be a positive integer"),
    ({"drop_path": 0.2}, "space 'digits' has no drop-path"),
    ({"auxiliary_weight": 0.4}, "space 'digits' has no auxiliary head"),
    ({"optimizer": "adam"}, "'optimizer' must be 'sgd' or 'rmsprop'"),
    ({"learning_rate_min": 1.0}, "must not exceed 'learning_rate'"),
    ({"momentum": 2}, "'momentum' must be a number in [0, 1), got 2"),
    ({"device": "tpu"}, "'device' must be auto, cpu, cuda or cuda:N"),
])
def test_bad_settings(overrides, message):
    with pytest.raises(ValueError) as err:
        resolve_settings("digits", overrides)
    assert message in str(err.value)


def test_bad_input_one_error_exit_2_nothing_written(run, tmp_path, capsys):
    assert main(["retrain", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["retrain", str(tmp_path / "empty")]) == 2
    assert "is not a finished `nni-plugins search` run: best_architecture.json and config.yml missing" in _error(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["retrain", str(tmp_path / "file")]) == 2
    assert "is a file" in _error(capsys)
    for argv, message in ([["--drop-path", "0.2"], "has no drop-path"], [["--top-k", "2"], "needs the ranked trials"],
                          [["--epochs", "0"], "'epochs' must be a positive integer"],
                          [["--random", "-1"], "'random' must be an integer >= 0"], [["--bogus"], "unrecognized"]):
        assert main(["retrain", str(run), *argv]) == 2
        assert message in _error(capsys)
    assert not (run / "retrain").exists()

    config = tmp_path / "bad.yml"
    config.write_text(f"strategy: darts\noutput: {tmp_path / 'never'}\nretrain: {{lr: 0.1}}\n")
    assert main(["search", "--config", str(config)]) == 2
    assert "unknown retrain setting(s) ['lr']" in _error(capsys)
    config.write_text(f"strategy: darts\noutput: {tmp_path / 'never'}\nretrain: {{top_k: 2}}\n")
    assert main(["search", "--config", str(config)]) == 2
    assert "a one-shot search exports one architecture" in _error(capsys)
    assert not (tmp_path / "never").exists()


@pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason="needs ../shared/data/cifar10_subset.npz")
def test_darts_hub_search_estimate_and_retrain_with_auxiliary_head_drop_path_and_cutout(tmp_path):
    """NNI's hub DARTS space: the one-shot estimate inherits the DARTS cells' weights (``Repeat`` blocks,
    one mixed op per node and predecessor); the final network gets the auxiliary head and drop-path."""
    run = tmp_path / "darts"
    config = tmp_path / "darts.yml"
    config.write_text(f"strategy: darts\nspace: darts-hub\nspace_args: {{width: 4, num_cells: 3}}\ndataset: npz\n"
                      f"data_path: {CIFAR_NPZ}\nlimit: 48\nbatch_size: 16\nepochs: 1\noutput: {run}\n")
    assert main(["search", "--config", str(config)]) == 0
    assert json.loads((run / "best_architecture.json").read_text())["metric"]["weights"] == "inherited"

    report = retrain_module.retrain_run(run, {"epochs": 1, "width": 4, "depth": 3, "batch_size": 16})
    result = report.results[0]
    assert (result["protocol"], result["settings"]["auxiliary_weight"], result["settings"]["cutout"]) == ("darts", 0.4, 16)
    assert result["space_args"] == {"width": 4, "num_cells": 3, "drop_path_prob": 0.2, "auxiliary_loss": True}
    model = load_retrained(run / "retrain")
    assert any(name.startswith("auxiliary_head.") for name, _ in model.named_parameters())
    assert result["parameters"] < sum(p.numel() for p in model.parameters())  # the auxiliary head is not counted
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason="needs ../shared/data/cifar10_subset.npz")
def test_retrain_nb201_rank_example_quick(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import retrain_nb201_rank
    finally:
        sys.path.remove(str(REPO / "examples"))
    assert retrain_nb201_rank.main(["--quick", "--seeds", "0", "1", "--output", str(tmp_path / "rank")]) == 0
    summary = json.loads((tmp_path / "rank" / "rank.json").read_text())
    assert len(summary["cells"]) == 2 and -1.0 <= summary["kendall_tau"] <= 1.0
    assert summary["cells"][0]["table_acc"] < summary["cells"][1]["table_acc"]  # lowest and highest quantile
    for cell in summary["cells"]:  # the ranked figure is the mean over the seeds' retrains
        results = [json.loads((tmp_path / "rank" / f"seed{seed}" / f"cell{cell['cell']:02d}" / "retrain" /
                               "result.json").read_text()) for seed in (0, 1)]
        assert [r["seed"] for r in results] == [0, 1] and {r["protocol"] for r in results} == {"nasbench201"}
        assert cell["test_acc_per_seed"] == [r["test_acc"] for r in results]
        assert cell["mean_test_acc"] == pytest.approx(sum(cell["test_acc_per_seed"]) / 2)
    assert set(summary["kendall_tau_per_seed"]) == {"0", "1"}


@pytest.mark.slow
def test_multi_trial_run_ranks_trials_and_retrains_top_k(tmp_path):
    """A real multi-trial search (NNI manager, 3 trials), then ``retrain --top-k 2``."""
    out = multi_trial_search(tmp_path)
    trials = json.loads((out / "trials.json").read_text())
    best = json.loads((out / "best_architecture.json").read_text())
    assert [t["rank"] for t in trials] == list(range(1, len(trials) + 1)) and len(trials) >= 2
    metrics = [t["metric"] for t in trials]
    assert metrics == sorted(metrics, reverse=True) and trials[0]["sample"] == best["sample"]
    assert isinstance(best["metric"], float)
    proc = subprocess.run([sys.executable, "-m", "nni_plugins", "retrain", str(out), "--top-k", "2", *TINY],
                          cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nbest " in proc.stdout and "\nrank2 " in proc.stdout
    rank2 = json.loads((out / "retrain" / "rank2" / "result.json").read_text())
    assert rank2["sample"] == trials[1]["sample"] and rank2["search_metric"] == trials[1]["metric"]
    assert json.loads((out / "best_architecture.json").read_text())["retrain"]["epochs"] == 1
    assert np.isfinite(rank2["test_acc"])
