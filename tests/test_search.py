"""End-to-end ``nni-plugins search`` and ``nni-plugins benchmark`` runs (real NasExperiments)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nni_plugins.cli import main
from nni_plugins.spaces import build_space
from tests.nni_harness import isolated, multi_trial_search  # noqa: F401 (isolated: a fixture)

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_subset.npz"


pytestmark = pytest.mark.usefixtures("isolated")


def _scalar_tags(root: Path) -> set[str]:
    tags: set[str] = set()
    for event_file in root.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def _hparams(run_dir: Path) -> tuple[dict, dict]:
    """(arguments, final scalars) of the run's HParams record, read back from its event file."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard" / "hparams"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    return values, {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


def test_search_darts_on_digits_writes_json_and_events(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--strategy", "darts", "--epochs", "1", "--limit", "300", "--output", str(out)]) == 0
    payload = json.loads((out / "best_architecture.json").read_text())
    assert payload["strategy"] == "darts" and payload["space"] == "digits"
    space = build_space("digits", 10, (1, 8, 8))
    model = space.freeze(payload["sample"])  # a valid sample of the space
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    tags = _scalar_tags(out / "tensorboard")
    assert any(tag.startswith("prob/") for tag in tags), tags  # architecture distribution logged
    assert not (tmp_path / "lightning_logs").exists()
    values, finals = _hparams(out)  # the HParams tab: the run's arguments and its final metric
    assert values["strategy"] == "darts" and values["epochs"] == 1 and values["complete"] == "True"
    assert finals["final_metric"] == pytest.approx(payload["metric"]["supernet_val_acc"])
    assert "best_architecture.json" in capsys.readouterr().out
    assert main(["export", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["sample"] == payload["sample"]


@pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason="needs ../shared/data/cifar10_subset.npz")
def test_search_yaml_nasbench201_on_cifar_npz_reports_arch_string(tmp_path):
    config = tmp_path / "run.yml"
    config.write_text(
        "strategy: darts\n"
        "space: nasbench201\n"
        "space_args: {C: 4, N: 1}\n"
        "dataset: npz\n"
        f"data_path: {CIFAR_NPZ}\n"
        "limit: 128\n"
        "epochs: 1\n"
        "batch_size: 32\n"
        "accelerator: cpu\n"
        "devices: 1\n"
        f"output: {tmp_path / 'nb201'}\n"
    )
    assert main(["search", "--config", str(config)]) == 0
    payload = json.loads((tmp_path / "nb201" / "best_architecture.json").read_text())
    arch = payload["nb201_arch"]
    assert arch.count("~") == 6 and arch.startswith("|")


@pytest.mark.slow
def test_search_multi_trial_rea_through_nni_manager(tmp_path):
    """A multi-trial search: NNI manager, local training service, trials in their own processes."""
    out = multi_trial_search(tmp_path)
    payload = json.loads((out / "best_architecture.json").read_text())
    assert 0.0 < payload["metric"] <= 1.0
    build_space("digits", 10, (1, 8, 8)).freeze(payload["sample"])
    # every trial is logged, also those that end after the strategy's run (the experiment waits for them)
    search = EventAccumulator(str(out / "tensorboard" / "search"))
    search.Reload()
    assert [e.step for e in search.Scalars("trial/metric")] == [1, 2, 3]
    assert search.Scalars("search/best_so_far")[-1].value == pytest.approx(payload["metric"])
    progress = json.loads((out / "run.json").read_text())["progress"]
    assert progress == {"trials": 3, "trials_finished": 3, "trials_failed": 0,
                        "best_metric": pytest.approx(payload["metric"])}
    values, finals = _hparams(out)
    assert values["strategy"] == "rea" and values["strategy_args.population_size"] == 2
    assert finals["final_metric"] == pytest.approx(payload["metric"])
    # Each trial's own Lightning logs went to its NNI output directory, not to the cwd.
    assert list((out / "nni-experiments").rglob("trials/*/tensorboard/events.out.tfevents.*"))
    assert not (tmp_path / "lightning_logs").exists()


def test_benchmark_cli_random_rea(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--strategies", "random,rea", "--seeds", "2", "--budget", "30",
                 "--checkpoints", "10,30", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random" in text and "rea" in text and "@30" in text
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert {r["strategy"] for r in rows} == {"random", "rea"}
    assert len(rows) == 2 * 2 * 30
