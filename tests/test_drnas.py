"""DrNAS: Dirichlet relaxation, regularisers, progressive stages, exports on NNI hub spaces, experiment."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from nni.nas.hub.pytorch import DARTS as DartsSpace, NasBench201

from strategies import DrNAS
from strategies.drnas import DrNASLightningModule, NB201_STAGES, ProgressiveStage
from strategies.oneshot_common import DirichletWeights
from nni_plugins.registry import make_strategy
from tests.oneshot_helpers import (
    Holder, TinySpace, classification, oneshot_module, run_then_resume, search,
)

torch.set_num_threads(1)


def test_gradient_flows_through_dirichlet_samples_to_concentrations():
    torch.manual_seed(0)
    model, module = oneshot_module(DrNAS(), TinySpace())
    model.train()
    module.resample()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    params = module.unique_arch_parameters()
    assert set(params) == {"op", "last"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_regularisers():
    torch.manual_seed(0)
    _, module = oneshot_module(DrNAS(reg_type="l2", reg_scale=2e-3), TinySpace())
    opt = module.configure_architecture_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["weight_decay"] == 2e-3
    assert opt.defaults["betas"] == (0.5, 0.999) and opt.defaults["lr"] == 3e-4
    assert module.arch_regularizer() is None

    _, module = oneshot_module(DrNAS(reg_type="kl", reg_scale=0.5), TinySpace())
    assert module.configure_architecture_optimizers().defaults["weight_decay"] == 0.0
    params = module.unique_arch_parameters()
    with torch.no_grad():
        params["op"].copy_(torch.tensor([1.0, -0.5, 0.2]))
    expected = 0.0
    for p in params.values():
        beta = torch.nn.functional.elu(p.detach()) + 1
        # closed form KL(Dir(beta) || Dir(1))
        b0 = beta.sum()
        k = len(beta)
        expected += (torch.lgamma(b0) - torch.lgamma(beta).sum() - torch.lgamma(torch.tensor(float(k)))
                     + ((beta - 1) * (torch.digamma(beta) - torch.digamma(b0))).sum())
    assert torch.isclose(module.arch_regularizer(), 0.5 * expected, atol=1e-5)
    assert torch.isclose(module.arch_regularizer(), torch.tensor(0.0) + 0.5 * expected)  # differentiable
    module.arch_regularizer().backward()
    assert params["op"].grad is not None
    # a pruned choice stays in the KL, as in DrNAS's _get_kl_reg (which ignores the masks)
    module.arch_weights.set_mask(params["op"], torch.tensor([True, False, True]))
    assert torch.isclose(module.arch_regularizer(), 0.5 * expected, atol=1e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="reg_type"):
        DrNAS(reg_type="l1")
    with pytest.raises(ValueError, match="preset"):
        DrNAS(stages="imagenet")
    with pytest.raises(TypeError, match="ProgressiveStage"):
        DrNAS(stages=[(50, 4, None, 10)])
    with pytest.raises(TypeError, match="'width'.*the fields are epochs, partial_k"):
        DrNAS(stages=[{"epochs": 50, "width": 4}])
    with pytest.raises(TypeError, match="partial_k"):
        DrNAS(stages=[{"epochs": 50}])
    with pytest.raises(ValueError, match="Invalid progressive stage.*: epochs must be an int >= 1$"):
        DrNAS(stages=[{"epochs": 0, "partial_k": 4}])
    with pytest.raises(ValueError, match="partial_k must be an int >= 1; num_ops must be an int >= 1$"):
        ProgressiveStage(2, 0, num_ops=0)
    with pytest.raises(ValueError, match="warmup_epochs must be an int >= 0$"):
        ProgressiveStage(2, 4, warmup_epochs=1.5)
    with pytest.raises(ValueError, match="^DrNAS: arc_learning_rate must be > 0, got 0$"):
        DrNAS(arc_learning_rate=0)
    with pytest.raises(ValueError, match="LayerChoice 'op'.*not divisible"):
        DrNAS(stages=[ProgressiveStage(2, 3), ProgressiveStage(2, 1)]).mutate_model(TinySpace(c=8))


def test_stages_can_be_given_as_mappings_of_their_fields():
    """YAML configs and ``--strategy-kwargs`` JSON write a stage as a mapping."""
    stages = [{"epochs": 50, "partial_k": 4}, {"epochs": 50, "partial_k": 2, "num_ops": 3, "warmup_epochs": 5}]
    expected = (ProgressiveStage(50, 4, None, 10), ProgressiveStage(50, 2, 3, 5))
    assert DrNAS(stages=stages).stages == expected
    assert make_strategy("drnas", stages=stages).stages == expected
    assert DrNAS(stages=[ProgressiveStage(50, 4), {"epochs": 50, "partial_k": 2}]).stages[1].partial_k == 2


def test_stage_transition_prunes_widens_and_carries_optimizer_state():
    torch.manual_seed(0)
    stages = [ProgressiveStage(1, 4, None, 0), ProgressiveStage(1, 2, 2, 0)]
    model, module = oneshot_module(DrNAS(stages=stages), TinySpace(c=8))
    conv = model.a["conv"][1]
    assert conv.weight.shape == (2, 2, 3, 3)  # C/K = 8/4
    weight_params = [p for n, p in model.named_parameters() if "_arch_alpha" not in n]
    optimizer = torch.optim.SGD(weight_params, lr=0.1, momentum=0.9)
    model.train()
    module.resample()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    old_buf = optimizer.state[conv.weight]["momentum_buffer"].clone()
    alpha = model.a._arch_alpha
    with torch.no_grad():
        alpha.copy_(torch.tensor([0.5, -1.0, 0.2]))  # conv, skip, pool -> keep conv and pool
    module.weight_optimizer = lambda: optimizer
    module._stage_starts, module._stage_warmups = module.stage_schedule(2)
    module.advance_stage()
    assert module.current_stage == 1
    assert module.arch_weights.mask(alpha).tolist() == [True, False, True]
    assert conv.weight.shape == (4, 4, 3, 3) and model.a["conv"][2].num_features == 4
    buf = optimizer.state[conv.weight]["momentum_buffer"]
    assert buf.shape == conv.weight.shape and torch.equal(buf[:2, :2], old_buf)
    assert model.a.partial_k == 2
    model.train()
    module.resample()
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
    out.sum().backward()
    optimizer.step()
    theta = module.arch_weights(alpha)
    assert theta[1] == 0 and torch.isclose(theta.sum(), torch.tensor(1.0))
    assert module.export()["op"] == "conv"


def test_stage_schedule_scales_to_max_epochs():
    module = DrNASLightningModule(Holder(nn.Linear(1, 1)), DirichletWeights(), reg_type="l2", reg_scale=1e-3,
                                  stages=NB201_STAGES)
    assert module.stage_schedule(100) == ([0, 50], [10, 10])
    assert module.stage_schedule(10) == ([0, 5], [1, 1])


def test_progressive_run_resumes_from_its_checkpoint_through_nas_experiment(tmp_path, monkeypatch):
    """NNI's one-shot resume: the experiment's checkpoint holds the Lightning checkpoint's path; the
    resumed run must rebuild the stage's widened, pruned supernet before the weights load (the
    optimiser states compared by the helper hold Adam moments at the widened shapes)."""
    stages = [ProgressiveStage(1, 4, None, 0), ProgressiveStage(1, 2, 2, 0)]
    first, record, ckpt_path = run_then_resume(tmp_path, monkeypatch, lambda: DrNAS(stages=stages))
    module = first.oneshot_module
    assert module.current_stage == 1 and first.supernet.a["conv"][1].weight.shape == (4, 4, 3, 3)
    masks = module.current_masks()
    assert list(masks) == ["op"] and sum(masks["op"]) == 2
    assert record.module.current_stage == 1 and record.module.current_masks() == masks

    plain = DrNAS()
    lightning = plain.mutate_evaluator(classification(max_epochs=3, n=16, size=16))
    lightning.fit_kwargs["ckpt_path"] = ckpt_path
    with pytest.raises(ValueError, match="stages with K \\[4, 2\\].*no stages"):
        lightning.evaluate(plain.mutate_model(TinySpace()))


def _small_nb201():
    return NasBench201(stem_out_channels=8, num_modules_per_stack=1)


@pytest.mark.parametrize("stages", [None, "nb201"])
def test_exports_on_hub_nasbench201_freeze(stages):
    torch.manual_seed(0)
    evaluator = classification(max_epochs=2, n=8, size=16, batch_size=8)
    sample, module, trainer = search(DrNAS(stages=stages), _small_nb201(), evaluator)
    assert set(sample) == {f"cell/{e}" for e in ("0_1", "0_2", "1_2", "0_3", "1_3", "2_3")}
    _small_nb201().freeze(sample)
    metrics = trainer.callback_metrics
    assert any(k.startswith("prob/cell/0_1/") for k in metrics)
    assert any(k.startswith("beta/cell/0_1/") for k in metrics) and "entropy/cell/0_1" in metrics
    assert not any(k.startswith("argmax/") for k in metrics)  # the chosen op is a TensorBoard text, by name
    if stages:
        assert module.current_stage == 1
        masks = [module.arch_weights.mask(p) for p in module.unique_arch_parameters().values()]
        assert all(m is not None and int(m.sum()) == 3 for m in masks)


def test_export_on_hub_darts_space_uses_darts_rule():
    torch.manual_seed(0)
    space = lambda: DartsSpace(width=8, num_cells=3)  # noqa: E731
    evaluator = classification(max_epochs=1, n=8, size=8, batch_size=8)
    sample, module, _ = search(DrNAS(arc_learning_rate=6e-4), space(), evaluator)
    space().freeze(sample)
    for cell in ("normal", "reduce"):
        for node in range(2, 6):
            inputs = {sample[f"{cell}/input_{node}_{k}"][0] for k in range(2)}
            assert len(inputs) == 2 and all(0 <= j < node for j in inputs)
    alphas = module.unique_arch_parameters()
    assert all(len(p) == 7 for p in alphas.values())  # no implicit zero op in DrNAS


def test_experiment_end_to_end_and_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni"))
    from nni.nas.experiment import NasExperiment
    torch.manual_seed(0)
    strategy = make_strategy("drnas", reg_type="kl")
    assert isinstance(strategy, DrNAS)
    experiment = NasExperiment(TinySpace(), classification(max_epochs=1, n=8, size=8), strategy)
    experiment.config.experiment_working_directory = str(tmp_path / "exp")
    try:
        experiment.run()
        sample = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()
    assert sample["op"] in ("conv", "skip", "pool") and sample["last"] in ("conv", "pool")
    TinySpace().freeze(sample)
    assert os.path.isdir(tmp_path / "exp")
