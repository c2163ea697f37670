"""The CLI's bad inputs, the strategy registry and the space registry."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nni_plugins.cli import main
from nni_plugins.registry import STRATEGIES, make_strategy, strategy_spec
from nni_plugins.search import SearchConfig, load_config
from nni_plugins.spaces import SPACES, build_space


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear message
    assert err[0].startswith("error: ")
    return err[0]


def test_registry_builds_nni_builtins_with_defaults_and_seed():
    rea = make_strategy("rea", seed=3)
    assert type(rea).__name__ == "RegularizedEvolution"
    assert (rea.population_size, rea.sample_size) == (20, 5)
    assert rea.mutation_prob == pytest.approx(1 / 6)
    assert type(make_strategy("random", seed=1)).__name__ == "Random"
    assert type(make_strategy("darts")).__name__ == "DARTS"
    assert type(make_strategy("GUMBEL-DARTS")).__name__ == "GumbelDARTS"
    assert {"random", "rea", "tpe", "darts", "gumbel-darts", "proxyless", "random-oneshot",
            "goal", "nasgem", "gaea", "drnas", "tetlo"} <= set(STRATEGIES)


def test_registry_errors():
    with pytest.raises(ValueError, match="Unknown strategy 'nope'"):
        strategy_spec("nope")
    with pytest.raises(ValueError, match="Invalid arguments for strategy 'rea'"):
        make_strategy("rea", not_an_argument=1)


def test_space_registry_errors():
    with pytest.raises(ValueError, match="Unknown model space"):
        build_space("nope", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="3x32x32"):
        build_space("nasbench201-hub", 10, (1, 8, 8))
    assert set(SPACES) >= {"digits", "nasbench201", "nasbench201-hub", "darts-hub", "nasbench101-hub"}


def test_hub_space_by_name():
    space = build_space("nasbench201-hub", 10, (3, 32, 32), stem_out_channels=8, num_modules_per_stack=1)
    assert set(space.simplify()) == {f"cell/{e}" for e in ("0_1", "0_2", "1_2", "0_3", "1_3", "2_3")}
    with pytest.raises(ValueError, match="does not take"):
        build_space("nasbench201-hub", 10, (3, 32, 32), bogus=1)


@pytest.mark.parametrize("argv, message", [
    (["search", "--strategy", "nope", "--output", "x"], "Unknown strategy 'nope'"),
    (["search", "--strategy", "darts"], "--output DIR is required"),
    (["search", "--strategy", "darts", "--epochs", "0", "--output", "x"], "'epochs' must be a positive integer"),
    (["search", "--config", "missing.yml"], "does not exist"),
    (["export", "no-such-run"], "is not a finished"),
    (["frobnicate"], "invalid choice"),
    (["benchmark", "--strategies", ",", "--output", "x"], "at least one name"),
])
def test_cli_bad_inputs_give_one_error_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _error(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_search_bad_space_and_dataset_write_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--strategy", "darts", "--space", "nope", "--output", str(out)]) == 2
    assert "Unknown model space" in _error(capsys)
    assert main(["search", "--strategy", "darts", "--dataset", "nope", "--output", str(out)]) == 2
    assert "nope" in _error(capsys)
    assert main(["search", "--strategy", "darts", "--dataset", "npz", "--data-path", str(tmp_path / "missing.npz"),
                 "--output", str(out)]) == 2
    assert "missing.npz" in _error(capsys)
    assert not out.exists()


def test_yaml_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("strategy: [unclosed\n")
    assert main(["search", "--config", str(bad)]) == 2
    assert "not valid YAML" in _error(capsys)
    bad.write_text("- a list\n")
    assert main(["search", "--config", str(bad)]) == 2
    assert "mapping" in _error(capsys)
    bad.write_text("strategy: darts\nfrobnicate: 1\noutput: x\n")
    assert main(["search", "--config", str(bad)]) == 2
    assert "Unknown key(s) ['frobnicate']" in _error(capsys)


def test_yaml_config_flags_override_file(tmp_path):
    path = tmp_path / "run.yml"
    path.write_text("strategy: rea\ntrials: 3\nseed: 4\noutput: a\nexperiment: {trial_concurrency: 2}\n")
    cfg = load_config(path, seed=7, output=None)
    assert (cfg.strategy, cfg.trials, cfg.seed, cfg.output) == ("rea", 3, 7, "a")
    assert cfg.experiment == {"trial_concurrency": 2}
    assert cfg.epochs == 2  # multi-trial default
    assert SearchConfig(strategy="darts", output="x").validate().epochs == 8


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "nni_plugins", "strategies"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rea" in proc.stdout and "drnas" in proc.stdout


def test_export_prints_run_json(tmp_path, capsys):
    (tmp_path / "best_architecture.json").write_text(json.dumps({"sample": {"a": 1}}))
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "copy.json")]) == 0
    assert json.loads(capsys.readouterr().out) == {"sample": {"a": 1}}
    assert json.loads((tmp_path / "copy.json").read_text()) == {"sample": {"a": 1}}


@pytest.mark.parametrize("name", ["search_oneshot.yml", "search_multitrial.yml"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / name)
    strategy_spec(cfg.strategy)
    assert cfg.output
