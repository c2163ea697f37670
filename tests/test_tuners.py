"""The nnictl tuner faces (nni_plugins.tuners) driven the way NNI's dispatcher drives them:
update_search_space, generate_parameters, receive_trial_result / trial_end (out of order, failures)."""
from __future__ import annotations

import json
import random
import time

import nni
import pytest
import torch

from nni_plugins.table import NasBench201Table
from nni_plugins.tuners import GOALTuner, NASGEMTuner, build_space
from search_spaces.graph import GenericView, NasBench101View, NasBench201View, graph_view

torch.set_num_threads(1)

EDGES = ["0_1", "0_2", "1_2", "0_3", "1_3", "2_3"]
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
NB201 = {e: {"_type": "choice", "_value": NB201_OPS} for e in EDGES}
NESTED = {
    "block": {"_type": "choice", "_value": [{"_name": "conv", "kernel": {"_type": "choice", "_value": [3, 5]}},
                                           {"_name": "pool"}]},
    "width": {"_type": "choice", "_value": [16, 32]},
}
NB101_OPS = ["conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"]
NB101 = {"num_nodes": {"_type": "choice", "_value": [2, 3, 4, 5]},
         **{f"op{i}": {"_type": "choice", "_value": NB101_OPS} for i in (1, 2, 3)}}
FAST_GOAL = dict(n_init=3, batch_size=2, epochs=5, ensemble=1, hidden=8, ascent_steps=3, seed=0, tensorboard_dir="")
FAST_NASGEM = dict(num_init=2, batch_size=2, pool_size=30, pretrain_size=10, encoder_steps=2, hidden_dim=8,
                   embedding_dim=4, predictor_epochs=5, seed=0, tensorboard_dir="")


def _view(space):
    from nni.nas.space import RawFormatModelSpace
    return graph_view(RawFormatModelSpace(space, None))


def test_build_space_views_and_nested_labels():
    assert isinstance(_view(build_space(NB201, "nasbench201")), NasBench201View)
    assert isinstance(_view(build_space(NB201, "generic")), GenericView)
    assert isinstance(_view(build_space(NB201, "auto")), NasBench201View)
    nested = build_space(NESTED)
    assert sorted(nested) == ["block", "block/conv/kernel", "width"]
    assert nested.to_parameters({"block": "conv", "block/conv/kernel": 5, "width": 16}) == \
        {"block": {"_name": "conv", "kernel": 5}, "width": 16}
    assert nested.to_parameters({"block": "pool", "block/conv/kernel": 5, "width": 32}) == \
        {"block": {"_name": "pool"}, "width": 32}
    nb101 = build_space(NB101, "nasbench101")
    assert isinstance(_view(nb101), NasBench101View)
    assert {"input1", "input2", "input3", "input4"} <= set(nb101)


@pytest.mark.parametrize("space, kind, message", [
    ({"lr": {"_type": "uniform", "_value": [0, 1]}}, "auto", "accept only 'choice'"),
    ({"b": {"_type": "choice", "_value": [{"kernel": 3}]}}, "auto", "without '_name'"),
    ({"b": {"_type": "choice", "_value": []}}, "auto", "non-empty list"),
    ({"b": {"_type": "choice", "_value": [1, 1]}}, "auto", "duplicate options"),
    ({"b": 3}, "auto", "must be {'_type'"),
    ({"0_1": {"_type": "choice", "_value": NB201_OPS}}, "nasbench201", "NAS-Bench-201"),
    ({"num_nodes": {"_type": "choice", "_value": [2, 3]}}, "nasbench101", "expected exactly the parameters"),
    (NB201, "darts", "space must be one of"),
])
def test_build_space_rejects_bad_input(space, kind, message):
    with pytest.raises(ValueError, match=message):
        build_space(space, kind)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(optimize_mode="best"), ValueError, "optimize_mode"),
    (dict(space="nb201"), ValueError, "space must be one of"),
    (dict(max_num_edges=0), ValueError, "max_num_edges"),
    (dict(n_init_typo=3), ValueError, r"unknown class argument\(s\) \['n_init_typo'\]"),
    (dict(n_init=0), ValueError, "n_init must be >= 1"),
    (dict(n_init="3"), TypeError, "n_init must be an int"),
])
def test_goal_tuner_validates_class_args(kwargs, error, message):
    with pytest.raises(error, match=message):
        GOALTuner(**kwargs)


def test_nasgem_tuner_validates_class_args():
    with pytest.raises(ValueError, match="unknown class argument"):
        NASGEMTuner(n_init=3)  # NASGEM calls it num_init
    with pytest.raises(ValueError, match="epsilon"):
        NASGEMTuner(epsilon=2.0)


def test_goal_tuner_out_of_order_results_and_failures():
    """Concurrency 3, results delivered in random order, every 4th trial fails: the tuner keeps
    handing out distinct NB201 cells in NNI's format and GOAL learns only from real metrics."""
    table = NasBench201Table()
    tuner = GOALTuner(space="nasbench201", **FAST_GOAL)
    tuner.update_search_space(NB201)
    rng = random.Random(0)
    running, seen, failed = [], set(), 0
    for pid in range(14):
        params = tuner.generate_parameters(pid)
        assert set(params) == set(EDGES) and all(op in NB201_OPS for op in params.values())
        key = json.dumps(params, sort_keys=True)
        assert key not in seen
        seen.add(key)
        running.append((pid, params))
        while len(running) >= 3:
            done_pid, done_params = running.pop(rng.randrange(len(running)))
            if done_pid % 4 == 3:
                failed += 1
                tuner.trial_end(done_pid, False)
            else:
                tuner.receive_trial_result(done_pid, done_params, {"default": table.query(done_params), "x": 1})
                tuner.trial_end(done_pid, True)
    evaluated = tuner.strategy.evaluated
    assert len(evaluated) == 14 - 2 - failed
    for sample, metric in evaluated:
        assert metric == pytest.approx(table.query(sample))
    tuner.strategy.wait_idle()                          # fits run in the background
    assert tuner.strategy.model_history, "the surrogate was never fitted"
    tuner._on_exit()


def test_a_parameter_request_never_waits_for_a_refit():
    """The tuner runs GOAL with background_fit=True: with every surrogate fit slowed to 1 s, each
    request at concurrency 4 is answered at once, and every result reaches the strategy."""
    table = NasBench201Table()
    assert GOALTuner(space="nasbench201", background_fit=False, **FAST_GOAL).strategy.background_fit is False
    tuner = GOALTuner(space="nasbench201", **FAST_GOAL)
    assert tuner.strategy.background_fit is True
    fit = tuner.strategy._fit
    tuner.strategy._fit = lambda job: time.sleep(1.0) or fit(job)
    tuner.update_search_space(NB201)
    running = []
    for pid in range(12):
        running.append((pid, tuner.generate_parameters(pid)))
        if len(running) == 4:
            done_pid, done_params = running.pop(0)
            tuner.receive_trial_result(done_pid, done_params, table.query(done_params))
            tuner.trial_end(done_pid, True)
    assert len(tuner.request_seconds) == len(tuner.slot_seconds) == 12
    assert max(tuner.slot_seconds) < 0.5                      # a fit takes 1 s
    tuner.strategy.wait_idle()
    assert len(tuner.strategy.evaluated) == 9 and tuner.strategy.timing["background"] >= 1.0
    tuner._on_exit()


def test_a_ready_model_answers_the_next_request_and_an_import_overrides_it():
    """Once NNI has asked, the strategy keeps one model ready, so a request takes it at once; a
    ready model whose parameters are imported meanwhile gets the imported result, not a trial."""
    tuner = GOALTuner(space="nasbench201", **FAST_GOAL)
    tuner.update_search_space(NB201)
    time.sleep(0.2)
    assert not tuner.engine._queue                      # nothing proposed before NNI asks
    first = tuner.generate_parameters(0)
    deadline = time.time() + 10
    while not tuner.engine._queue and time.time() < deadline:
        time.sleep(0.01)
    (_, ready, _), = tuner.engine._queue
    tuner.import_data([{"parameter": ready, "value": 12.5}])
    second = tuner.generate_parameters(1)
    assert second not in (first, ready)
    while 12.5 not in [m for _, m in tuner.strategy.evaluated] and time.time() < deadline:
        time.sleep(0.01)
    assert (ready, 12.5) in tuner.strategy.evaluated
    tuner._on_exit()


def test_success_without_metric_counts_as_failed_and_minimize_negates():
    tuner = GOALTuner(space="generic", optimize_mode="minimize", **FAST_GOAL)
    tuner.update_search_space(NESTED)
    first, second = tuner.generate_parameters(0), tuner.generate_parameters(1)
    tuner.trial_end(0, True)                       # succeeded but never reported: failed
    tuner.receive_trial_result(1, second, 0.25)
    tuner.trial_end(1, True)
    assert [m for _, m in tuner.strategy.evaluated] == [-0.25]
    assert tuner.strategy._failed and first != second
    tuner._on_exit()


def test_nasgem_tuner_nested_space_exhausts_cleanly():
    """The nested space has 6 distinct configurations: NASGEM hands out each once (in NNI's nested
    format) and then the tuner raises NoMoreTrialError instead of blocking."""
    tuner = NASGEMTuner(space="generic", **FAST_NASGEM)
    tuner.update_search_space(NESTED)
    configs = []
    with pytest.raises(nni.NoMoreTrialError):
        for pid in range(20):
            params = tuner.generate_parameters(pid)
            configs.append(json.dumps(params, sort_keys=True))
            block = params["block"]
            assert block["_name"] in ("conv", "pool")
            assert set(block) == ({"_name", "kernel"} if block["_name"] == "conv" else {"_name"})
            tuner.receive_trial_result(pid, params, params["width"] + (block.get("kernel", 0)))
            tuner.trial_end(pid, True)
    # pool x {16, 32} and conv x {3, 5} x {16, 32}: each configuration once, however many
    # samples (which also differ in the inactive kernel) NASGEM proposed
    assert len(configs) == len(set(configs)) == 6


def test_nasbench101_parameters_are_valid_cells():
    tuner = GOALTuner(space="nasbench101", max_num_edges=9, **FAST_GOAL)
    tuner.update_search_space(NB101)
    for pid in range(4):
        params = tuner.generate_parameters(pid)
        n = params["num_nodes"]
        assert n in (2, 3, 4, 5)
        assert all(isinstance(params[f"input{i}"], list) for i in range(1, 5))
        assert all(0 <= j < i for i in range(1, n) for j in params[f"input{i}"])
        tuner.receive_trial_result(pid, params, float(n))
    tuner._on_exit()


def test_search_space_cannot_change_while_running():
    tuner = GOALTuner(**FAST_GOAL)
    tuner.update_search_space(NESTED)
    with pytest.raises(ValueError, match="cannot be changed"):
        tuner.update_search_space(NESTED)
    tuner._on_exit()


def test_parameters_round_trip_to_samples_and_bad_ones_are_named():
    nested = build_space(NESTED)
    for params in ({"block": {"_name": "conv", "kernel": 5}, "width": 16}, {"block": {"_name": "pool"}, "width": 32}):
        assert nested.to_parameters(nested.from_parameters(params)) == params
    assert nested.from_parameters({"block": {"_name": "pool"}, "width": 32})["block/conv/kernel"] == 3  # inactive
    for params, message in [({"block": {"_name": "conv", "kernel": 7}, "width": 16}, "'block/conv/kernel' = 7"),
                            ({"block": "pool", "width": 32}, "'block' = 'pool' is not one of its choices"),
                            ({"width": 16}, "'block' is missing"),
                            ({"block": {"_name": "pool"}, "width": 32, "depth": 2}, r"\['depth'\] are not in"),
                            ([16], "expected a JSON object")]:
        with pytest.raises(ValueError, match=message):
            nested.from_parameters(params)
    nb101 = build_space(NB101, "nasbench101")
    params = {"num_nodes": 4, "op1": "maxpool3x3", "op2": "conv1x1-bn-relu", "op3": "conv1x1-bn-relu",
              "input1": [0], "input2": [1], "input3": [2], "input4": []}
    assert nb101.to_parameters(nb101.from_parameters(params)) == params
    with pytest.raises(ValueError, match="not a valid architecture"):
        nb101.from_parameters({**params, "input3": []})           # node 3 no longer reaches the output
    with pytest.raises(ValueError, match="'input1' must be a list"):
        nb101.from_parameters({**params, "input1": 0})


def test_import_data_joins_goal_history_and_is_never_run_again(caplog):
    """What NNI's dispatcher sends on ``nnictl resume`` (and ``nnictl experiment import``): GOAL
    fits its surrogate on the records and hands out none of their cells again; records that do not
    fit the space or carry no metric are skipped with a warning."""
    table = NasBench201Table()
    tuner = GOALTuner(space="nasbench201", **FAST_GOAL)
    with pytest.raises(RuntimeError, match="before update_search_space"):
        tuner.import_data([])
    tuner.update_search_space(NB201)
    rng = random.Random(1)
    imported = [{e: rng.choice(NB201_OPS) for e in EDGES} for _ in range(8)]
    bad = [{"parameter": {**imported[0], "0_1": "conv_5x5"}, "value": 1.0},
           {"parameter": {**imported[1], "0_2": "none"}, "value": {"arch": "no default"}}]
    tuner.import_data([{"parameter": p, "value": {"default": table.query(p)}} for p in imported] + bad)
    assert [s for s, _ in tuner.strategy.evaluated] == imported
    assert [m for _, m in tuner.strategy.evaluated] == pytest.approx([table.query(p) for p in imported])
    assert "'0_1' = 'conv_5x5' is not one of its choices" in caplog.text and "is not a metric" in caplog.text
    handed_out = []
    for pid in range(6):
        params = tuner.generate_parameters(pid)
        handed_out.append(params)
        tuner.receive_trial_result(pid, params, table.query(params))
        tuner.trial_end(pid, True)
    assert not any(p in imported for p in handed_out)
    tuner.strategy.wait_idle()                                      # fits run in the background
    assert tuner.strategy.model_history[0]["num_evaluated"] >= 8   # the first fit already used them
    tuner._on_exit()


def test_tuner_runs_no_parameters_it_has_imported():
    """NASGEM proposes samples that differ from the imported ones only in an inactive sub-choice:
    they get the imported results and no trial, so with every configuration imported nothing runs."""
    tuner = NASGEMTuner(space="generic", **FAST_NASGEM)
    tuner.update_search_space(NESTED)
    configs = [{"block": {"_name": "conv", "kernel": k}, "width": w} for k in (3, 5) for w in (16, 32)] + \
              [{"block": {"_name": "pool"}, "width": w} for w in (16, 32)]
    tuner.import_data([{"parameter": c, "value": float(i)} for i, c in enumerate(configs)])
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(0)
    evaluated = tuner.strategy.evaluated
    assert len(evaluated) == 8                 # 6 imported, and both pools with kernel 5 answered from them
    assert {m for _, m in evaluated} == {float(i) for i in range(6)}


def test_trials_rerun_by_a_resumed_experiment_are_not_handed_out_again():
    """``import_running`` (what the dispatcher hands over on ``nnictl resume``): those configurations
    are not proposed, and the metric imported for them later joins the strategy's history."""
    tuner = NASGEMTuner(space="generic", **FAST_NASGEM)
    tuner.update_search_space(NESTED)
    rerun = [{"block": {"_name": "conv", "kernel": 3}, "width": 16}, {"block": {"_name": "conv", "kernel": 5}, "width": 32}]
    tuner.import_running(rerun + [{"block": {"_name": "conv", "kernel": 4}, "width": 16}])   # the last does not fit
    handed_out = []
    with pytest.raises(nni.NoMoreTrialError):
        for pid in range(10):
            params = tuner.generate_parameters(pid)
            handed_out.append(params)
            tuner.receive_trial_result(pid, params, 1.0)
            tuner.trial_end(pid, True)
    assert len(handed_out) == 4 and not any(p in rerun for p in handed_out)
    tuner.import_data([{"parameter": p, "value": 2.0} for p in rerun])
    assert sorted(tuner.strategy.view.to_graph(s).key() for s, m in tuner.strategy.evaluated if m == 2.0) == \
        sorted(tuner.strategy.view.to_graph(tuner._space.from_parameters(p)).key() for p in rerun)


# --- the classes nnictl starts (nni_plugins_nnictl) ------------------------------------------------

def test_registered_tuner_module_imports_nothing_heavy():
    """NNI's manager gives the tuner process 10 s to connect; the class it constructs must not import
    torch, Lightning, NNI's NAS packages or ours (the strategies need the first three) before the
    dispatcher connects."""
    import subprocess
    import sys
    code = ("import sys, nni_plugins_nnictl; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'nni.nas', 'nni_compat', 'search_spaces', "
            "'strategies', 'nni_plugins') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_registered_tuner_hands_every_call_to_the_real_one():
    import nni_plugins_nnictl
    from nni_plugins import tuners

    table = NasBench201Table()
    proxy = nni_plugins_nnictl.GOALTuner(space="nasbench201", **FAST_GOAL)
    proxy.update_search_space(NB201)
    real = proxy._tuner
    assert type(real) is tuners.GOALTuner and real.strategy is not None
    proxy.import_running([dict(zip(EDGES, ["nor_conv_3x3"] * 6))])
    proxy.import_data([{"parameter": dict(zip(EDGES, ["skip_connect"] * 6)), "value": 80.0}])
    seen = set()
    for pid in range(4):
        params = proxy.generate_parameters(pid)
        assert set(params) == set(EDGES)
        seen.add(json.dumps(params, sort_keys=True))
        proxy.receive_trial_result(pid, params, table.query(params))
        proxy.trial_end(pid, True)
    assert len(seen) == 4
    assert json.dumps(dict(zip(EDGES, ["nor_conv_3x3"] * 6)), sort_keys=True) not in seen
    assert len(real.strategy.evaluated) == 4 + 1      # the four trials and the imported record
    proxy._on_exit()


def test_registered_tuner_that_cannot_start_ends_the_dispatcher(monkeypatch):
    import nni_plugins_nnictl

    aborted = []
    monkeypatch.setattr(nni_plugins_nnictl._LoadingTuner, "_abort", staticmethod(lambda: aborted.append(True)))
    proxy = nni_plugins_nnictl.NASGEMTuner(n_init=3)     # NASGEM calls it num_init
    with pytest.raises(RuntimeError, match=r"NASGEMTuner could not be started: .*unknown class argument"):
        proxy.update_search_space(NB201)
    assert aborted == [True]


def test_registered_tuner_ends_the_dispatcher_when_a_call_fails(monkeypatch):
    import nni_plugins_nnictl

    aborted = []
    monkeypatch.setattr(nni_plugins_nnictl._LoadingTuner, "_abort", staticmethod(lambda: aborted.append(True)))
    proxy = nni_plugins_nnictl.GOALTuner(space="nasbench201", **FAST_GOAL)
    with pytest.raises(ValueError, match="accept only 'choice'"):
        proxy.update_search_space({"lr": {"_type": "uniform", "_value": [0, 1]}})
    assert aborted == [True]
    proxy.update_search_space(NB201)
    monkeypatch.setattr(proxy._tuner, "generate_parameters", lambda pid, **kw: (_ for _ in ()).throw(nni.NoMoreTrialError()))
    with pytest.raises(nni.NoMoreTrialError):     # the end of the search, not a failure
        proxy.generate_parameters(0)
    assert aborted == [True]
    proxy._on_exit()


def test_register_replaces_the_earlier_tuner_class_and_refuses_a_foreign_one(tmp_path, monkeypatch):
    from nni.tools import package_utils
    from nni_plugins import registration

    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path))
    goal = next(m for m in registration._metas() if m.name == "GOAL")
    package_utils.register_algo_meta(goal._replace(class_name="nni_plugins.tuners.GOALTuner"))
    assert registration.registered()["GOAL"] is False
    assert registration.register() == ["GOAL", "NASGEM"]
    assert package_utils.get_algo_meta("GOAL").class_name == "nni_plugins_nnictl.GOALTuner"
    assert registration.registered() == {"GOAL": True, "NASGEM": True}
    package_utils.register_algo_meta(goal._replace(class_name="someone.else.GOALTuner"))
    with pytest.raises(ValueError, match="already registered .* for another class"):
        registration.register()
    with pytest.raises(ValueError, match="for another class"):
        registration.unregister()
