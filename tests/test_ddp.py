"""One-shot strategies under Lightning's DDP (``ddp_spawn``, two CPU processes, gloo).

Each rank must end with the same supernet and architecture (only BatchNorm running statistics are
per rank, as in any DDP run), and the main process must get rank 0's result in the shapes it has
(DrNAS progressive widens its ops during the run)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from nni.nas.strategy import DARTS
from strategies import GAEA, TETLO, DrNAS
from strategies.oneshot_common import MixedLayer
from tests.oneshot_helpers import TinySpace, classification, search

torch.set_num_threads(1)

PROGRESSIVE = [{"epochs": 1, "partial_k": 2, "warmup_epochs": 0},
               {"epochs": 1, "partial_k": 1, "num_ops": 2, "warmup_epochs": 0}]


class SaveRankState(pl.Callback):
    """Each rank writes its module's state at the end of training."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.directory / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("make", [DARTS, DrNAS, lambda: DrNAS(stages=PROGRESSIVE), lambda: GAEA(base="pc-darts", partial_k=2),
                                  lambda: GAEA(base="gdas"), TETLO],
                         ids=["nni-darts", "drnas", "drnas-progressive", "gaea-pc-darts", "gaea-gdas", "tetlo"])
def test_ranks_agree_and_the_main_process_exports(tmp_path, make):
    torch.manual_seed(0)
    evaluator = classification(max_epochs=2, n=32, accelerator="cpu", devices=2, strategy="ddp_spawn",
                               callbacks=[SaveRankState(tmp_path)])
    sample, module, trainer = search(make(), TinySpace(), evaluator)
    assert trainer.world_size == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    differ = [k for k, v in ranks[0].items() if "running_" not in k and not torch.equal(v, ranks[1][k])]
    assert differ == []
    main = module.state_dict()
    assert all(torch.equal(main[k], v) for k, v in ranks[0].items())   # rank 0's result, in the main process
    TinySpace().freeze(sample)
    if isinstance(make(), DrNAS) and make().stages:
        assert module.current_stage == 1
        assert all(m.partial_k == 1 for m in module.supernet_modules() if isinstance(m, MixedLayer))
        assert sorted(len([p for p in probs.values() if p > 0]) for probs in module.export_probs().values()) == [2, 2]


def test_nas_experiment_with_ddp_spawn_exports_the_searched_sample(tmp_path, monkeypatch):
    """The user's path: ``NasExperiment(space, Classification(..., strategy="ddp_spawn", devices=2), DrNAS(...))``."""
    from nni.nas.experiment import NasExperiment
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path / "nni"))
    torch.manual_seed(0)
    evaluator = classification(max_epochs=2, n=32, accelerator="cpu", devices=2, strategy="ddp_spawn")
    experiment = NasExperiment(TinySpace(), evaluator, DrNAS(stages=PROGRESSIVE))
    experiment.config.experiment_working_directory = str(tmp_path / "exp")
    try:
        experiment.run()
        sample = experiment.export_top_models(formatter="dict")[0]
        assert sample == experiment.strategy.oneshot_module.export()
        TinySpace().freeze(sample)
    finally:
        experiment.stop()
