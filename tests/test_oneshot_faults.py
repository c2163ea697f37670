"""Faults of the one-shot strategies (DrNAS, GAEA, TETLO): one clear error, never a false success.

A search whose loss, architecture gradient or architecture parameter goes NaN or infinite stops at that
step with :class:`strategies.NonFiniteError` (epoch, batch, global step, what, likely causes) and exports
nothing; the CLI exits 2 with one ``error:`` line and no ``best_architecture.json``. Every constructor
argument is checked, and an unknown keyword names the strategy. docs/errors.md lists the messages.
"""
from __future__ import annotations

import json

import re

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni_plugins.cli import main
from strategies import GAEA, TETLO, DrNAS, NonFiniteError
from strategies.oneshot_common import DirichletWeights
from tests.oneshot_helpers import TinySpace, oneshot_module, search, tiny_data

torch.set_num_threads(1)

_QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
_CAUSES = ("The search is stopped and no architecture is exported. Likely causes: NaN or infinite values in the "
           "input data, or a learning rate too high")

STRATEGIES = {"drnas": DrNAS, "gaea": lambda **kw: GAEA(single_level=False, **kw), "tetlo": TETLO}


class NaNAt(Dataset):
    """``data`` with a NaN pixel in example ``index`` from its ``after``-th read on (``after=1``: the
    second epoch of an unshuffled loader)."""

    def __init__(self, data: TensorDataset, index: int, after: int = 0):
        self.data, self.index, self.after, self.reads = data, index, after, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        if i == self.index:
            self.reads += 1
            if self.reads > self.after:
                x = x.clone()
                x[0, 0, 0] = float("nan")
        return x, y


def _evaluator(train, max_epochs=2, batch_size=8, **kwargs):
    val = TensorDataset(*tiny_data(32, 16, seed=1))
    return Classification(train_dataloaders=DataLoader(train, batch_size=batch_size),
                          val_dataloaders=DataLoader(val, batch_size=batch_size), max_epochs=max_epochs,
                          num_classes=10, **_QUIET, **kwargs)


def _fails(make, evaluator) -> str:
    """Run ``make()`` in a NasExperiment that must fail with NonFiniteError and export nothing; the message."""
    experiment = NasExperiment(TinySpace(), evaluator, make())
    try:
        with pytest.raises(NonFiniteError) as info:
            experiment.run()
        with pytest.raises(RuntimeError, match="the search failed .* so it has no architecture to export"):
            experiment.export_top_models(formatter="dict")
    finally:
        experiment.stop()
    return str(info.value)


@pytest.fixture(autouse=True)
def _nni_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_nan_batch_in_the_second_epoch_stops_the_search_naming_epoch_step_and_cause(name):
    torch.manual_seed(0)
    train = NaNAt(TensorDataset(*tiny_data(32, 16)), index=17, after=1)  # batch 2 of epoch 1
    message = _fails(STRATEGIES[name], _evaluator(train))
    owner = {"drnas": "DrNAS", "gaea": "GAEA", "tetlo": "TETLO"}[name]
    if name == "tetlo":  # its architecture step unrolls a weight step on the training batch first
        what = (r"the gradient of the architecture parameter of choice\(s\) \['op', 'last'\] holds NaN or infinite "
                r"values \(the hypergradient; on this process main_val_loss=\S+, aux_val_loss=\S+\)")
    else:
        what = r"the weight-step loss \(the evaluator's training loss\) is nan"
    assert re.fullmatch(rf"{owner}: {what} at epoch 1, batch 2 \(global step \d+\)\. {re.escape(_CAUSES)} "
                        r"\(the weight optimiser's lr=0\.001, arc_learning_rate=\S+\)", message), message


@pytest.mark.parametrize("name", STRATEGIES)
def test_huge_weight_learning_rate_stops_the_search(name):
    torch.manual_seed(0)
    message = _fails(STRATEGIES[name], _evaluator(TensorDataset(*tiny_data(32, 16)), learning_rate=1e30))
    # TETLO's hypergradient unrolls a weight step, which diverges before the weight step does
    what = "holds NaN or infinite values" if name == "tetlo" else "(is nan|is inf)"
    assert re.search(rf"{what}( \(.*\))? at epoch 0, batch \d \(global step \d+\)\. ", message), message
    assert _CAUSES in message and "the weight optimiser's lr=1e+30" in message


@pytest.mark.parametrize("name, holds", [
    ("drnas", "NaN or infinite values, or a Dirichlet concentration ELU(alpha) + 1 of 0"),
    ("gaea", "NaN or infinite values"),
    ("tetlo", "NaN or infinite values"),
])
def test_huge_architecture_learning_rate_stops_the_search(name, holds):
    torch.manual_seed(0)
    message = _fails(lambda: STRATEGIES[name](arc_learning_rate=1e30), _evaluator(TensorDataset(*tiny_data(32, 16))))
    assert re.match(rf"\w+: the architecture parameter of choice\(s\) \[('op'|'last'|, )+\] holds {re.escape(holds)} "
                    rf"at epoch 0, batch \d \(global step \d+\)\. {re.escape(_CAUSES)}", message), message
    assert "arc_learning_rate=1e+30)" in message


def test_dirichlet_sampling_refuses_a_bad_concentration_with_the_same_error():
    weights = DirichletWeights().train()
    expected = (r"^DrNAS: the Dirichlet concentration ELU\(alpha\) \+ 1 = \[1\.0, (nan|0\.0), 2\.0\] of a choice is "
                r"not finite and positive\. The search ")
    for alpha in (torch.tensor([0.0, float("nan"), 1.0]), torch.tensor([0.0, -200.0, 1.0])):  # NaN; ELU(-200)+1 = 0
        with pytest.raises(NonFiniteError, match=expected):
            weights(torch.nn.Parameter(alpha))
    assert torch.isclose(weights(torch.nn.Parameter(torch.zeros(3))).sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name", STRATEGIES)
def test_export_refuses_non_finite_architecture_parameters(name):
    _, module = oneshot_module(STRATEGIES[name](), TinySpace())
    with torch.no_grad():
        module.unique_arch_parameters()["last"][0] = float("inf")
    with pytest.raises(NonFiniteError, match=r": the architecture parameter of choice\(s\) \['last'\] holds NaN"):
        module.export()


def test_finite_search_is_unchanged():
    torch.manual_seed(0)
    sample, _, trainer = search(DrNAS(), TinySpace(), _evaluator(TensorDataset(*tiny_data(32, 16)), max_epochs=1))
    TinySpace().freeze(sample)
    assert trainer.current_epoch == 1


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.mark.parametrize("name", STRATEGIES)
def test_cli_diverging_search_exits_2_with_one_error_line_and_no_result(tmp_path, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best_architecture.json").write_text("{}")  # an earlier run's result must not survive a failed run
    config = tmp_path / "run.yml"
    config.write_text(f"strategy: {name}\nstrategy_args: {{arc_learning_rate: 1.0e+30}}\nepochs: 1\nlimit: 128\n"
                      f"batch_size: 16\noutput: {out}\noverwrite: true\n")
    assert main(["search", "--config", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the architecture parameter of choice(s)" in errors[0] and _CAUSES in errors[0]
    assert not (out / "best_architecture.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------------------------ DDP

class RecordNonFinite(pl.Callback):
    """Each rank writes the message of the NonFiniteError it builds to ``<directory>/rank<r>.txt``."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_start(self, trainer, pl_module):
        build = pl_module.non_finite

        def record(what):
            error = build(what)
            (self.directory / f"rank{trainer.global_rank}.txt").write_text(str(error))
            return error

        pl_module.non_finite = record


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_nan_on_one_rank_stops_every_rank(tmp_path):
    """Only one rank draws the NaN example: the other's loss is finite, yet both ranks raise at the same
    step, so none waits for the other in a collective."""
    torch.manual_seed(0)
    train = NaNAt(TensorDataset(*tiny_data(32, 16)), index=1)
    evaluator = _evaluator(train, max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn",
                           callbacks=[RecordNonFinite(tmp_path)])
    with pytest.raises(Exception, match="NonFiniteError"):
        search(DrNAS(), TinySpace(), evaluator)
    found = [re.match(r"DrNAS: the weight-step loss \(the evaluator's training loss\) (.*) (at epoch 0, batch \d "
                      r"\(global step \d+\))\. ", (tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    assert sorted(m[1] for m in found) == ["is finite on this process but not on another DDP rank", "is nan"]
    assert found[0][2] == found[1][2]  # the same step


# ------------------------------------------------------------------------------------------------ arguments

@pytest.mark.parametrize("make, kwargs, error, message", [
    (DrNAS, {"warmup_epochs": -1}, ValueError, "DrNAS: warmup_epochs must be >= 0, got -1"),
    (DrNAS, {"warmup_epochs": 1.5}, TypeError, "DrNAS: warmup_epochs must be an integer >= 0, got 1.5"),
    (DrNAS, {"log_prob_every_n_step": 0}, ValueError, "DrNAS: log_prob_every_n_step must be >= 1, got 0"),
    (DrNAS, {"arc_learning_rate": 0}, ValueError, "DrNAS: arc_learning_rate must be > 0, got 0"),
    (DrNAS, {"arc_learning_rate": float("nan")}, TypeError,
     "DrNAS: arc_learning_rate must be a finite number > 0, got nan"),
    (DrNAS, {"arc_learning_rate": "1e-3"}, TypeError,
     "DrNAS: arc_learning_rate must be a finite number > 0, got '1e-3'"),
    (DrNAS, {"gradient_clip_val": 0}, ValueError, "DrNAS: gradient_clip_val must be > 0, got 0"),
    (DrNAS, {"gradient_clip_val": True}, TypeError,
     "DrNAS: gradient_clip_val must be a finite number > 0 or None, got True"),
    (DrNAS, {"reg_scale": -1}, ValueError, "DrNAS: reg_scale must be >= 0, got -1"),
    (DrNAS, {"reg_type": "l1"}, ValueError, "DrNAS: reg_type must be one of ('l2', 'kl'), got 'l1'"),
    (DrNAS, {"stages": []}, TypeError, "DrNAS: stages must be None, a preset name or a non-empty sequence of"),
    (DrNAS, {"stages": "imagenet"}, ValueError, "DrNAS: unknown stage preset 'imagenet'"),
    (DrNAS, {"penalty": 3}, TypeError, "DrNAS: penalty must be a dict of ExpectationProfilerPenalty's arguments"),
    (DrNAS, {"mutation_hooks": [1]}, TypeError,
     "DrNAS: mutation_hooks must be a list of callables or None, got [1]"),
    (GAEA, {"arc_learning_rate": -1.0}, ValueError, "GAEA: arc_learning_rate must be > 0, got -1.0"),
    (GAEA, {"base": "pc-darts", "edge_learning_rate": 0}, ValueError,
     "GAEA: edge_learning_rate must be > 0, got 0"),
    (GAEA, {"entropy_weight": -0.1}, ValueError, "GAEA: entropy_weight must be >= 0, got -0.1"),
    (GAEA, {"base": "pc-darts", "partial_k": 0}, ValueError, "GAEA: partial_k must be >= 1, got 0"),
    (GAEA, {"sparsity_threshold": 1.0}, ValueError, "GAEA: sparsity_threshold must be in [0, 1), got 1.0"),
    (GAEA, {"sparsity_threshold": -0.5}, ValueError, "GAEA: sparsity_threshold must be in [0, 1), got -0.5"),
    (GAEA, {"sparsity_threshold": None}, TypeError,
     "GAEA: sparsity_threshold must be a finite number in [0, 1), got None"),
    (GAEA, {"base": "gdas", "temperature": 5.0}, TypeError,
     "GAEA: temperature must be a pair (start, end) with start >= end > 0, got 5.0"),
    (GAEA, {"base": "gdas", "temperature": (1.0, 0)}, ValueError, "GAEA: temperature end must be > 0, got 0"),
    (GAEA, {"base": "gdas", "temperature": (0.1, 10.0)}, ValueError,
     "GAEA: temperature must be a pair (start, end) with start >= end > 0, got (0.1, 10.0)"),
    (GAEA, {"single_level": "yes"}, TypeError, "GAEA: single_level must be True or False, got 'yes'"),
    (GAEA, {"exclude_none": 1}, TypeError, "GAEA: exclude_none must be True or False, got 1"),
    (GAEA, {"warmup_epochs": -2}, ValueError, "GAEA: warmup_epochs must be >= 0, got -2"),
    (GAEA, {"log_prob_every_n_step": -1}, ValueError, "GAEA: log_prob_every_n_step must be >= 1, got -1"),
    (GAEA, {"gradient_clip_val": -5}, ValueError, "GAEA: gradient_clip_val must be > 0, got -5"),
    (TETLO, {"warmup_epochs": -1}, ValueError, "TETLO: warmup_epochs must be >= 0, got -1"),
    (TETLO, {"log_prob_every_n_step": 0}, ValueError, "TETLO: log_prob_every_n_step must be >= 1, got 0"),
    (TETLO, {"arc_learning_rate": 0.0}, ValueError, "TETLO: arc_learning_rate must be > 0, got 0.0"),
    (TETLO, {"tau": -1}, ValueError, "TETLO: tau must be > 0, got -1"),
    (TETLO, {"gamma": "1"}, TypeError, "TETLO: gamma must be a finite number >= 0, got '1'"),
    (TETLO, {"hypergradient": "second_order"}, ValueError,
     "TETLO: hypergradient must be one of ('finite_difference', 'exact'), got 'second_order'"),
    (TETLO, {"mutation_hooks": "hook"}, TypeError, "TETLO: mutation_hooks must be a list of callables or None"),
])
def test_bad_arguments_name_strategy_argument_value_and_range(make, kwargs, error, message):
    with pytest.raises(error) as info:
        make(**kwargs)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("make, wrong, hint, accepted", [
    (DrNAS, "reg_scal", " (did you mean 'reg_scale'?)",
     "arc_learning_rate, reg_type, reg_scale, stages, gradient_clip_val, log_prob_every_n_step, warmup_epochs, "
     "penalty, mutation_hooks"),
    (GAEA, "x", "", "base, arc_learning_rate, edge_learning_rate, entropy_weight, single_level, partial_k, "
     "exclude_none, temperature, gradient_clip_val, log_prob_every_n_step, warmup_epochs, sparsity_threshold, "
     "penalty, mutation_hooks"),
    (TETLO, "lambda_qr", " (did you mean 'lambda_qrs'?)", "aux_model, base, partial_k, lambda_qrs, gamma, tau"),
])
def test_unknown_keyword_names_the_strategy_and_lists_the_accepted_ones(make, wrong, hint, accepted):
    with pytest.raises(TypeError) as info:
        make(**{wrong: 1})
    message = str(info.value)
    assert message.startswith(f"{make.__name__}() got an unexpected keyword argument '{wrong}'{hint}; "
                              f"it accepts {accepted}"), message
    assert "penalty" not in message if make is TETLO else message.endswith("penalty, mutation_hooks")


def test_valid_arguments_keep_their_defaults_and_forms():
    assert repr(DrNAS()) == "DrNAS(arc_learning_rate=0.0003, reg_type='l2', reg_scale=0.001, stages=None)"
    gdas = GAEA(base="gdas", temperature=[5, 1], sparsity_threshold=0, arc_learning_rate=1)  # YAML gives lists, ints
    assert gdas.temperature == (5.0, 1.0) and gdas.arc_learning_rate == 1 and gdas.entropy_weight == 0.01
    assert GAEA().arc_learning_rate == 0.1 and GAEA(warmup_epochs=0, gradient_clip_val=None).warmup_epochs == 0
    assert TETLO(warmup_epochs=None, mutation_hooks=[]).warmup_epochs == 0
