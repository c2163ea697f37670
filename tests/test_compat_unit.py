"""Fast tests of the NNI 3.0 compatibility fixes (nni_compat) that need no NNI manager.

Each test shows the failure with the fix undone (``compat.unpatched``) and the repaired behaviour
with it. Fixes that need a running NNI manager are proven in test_compat_experiments.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import nni_compat as compat
import nni
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.strategy import RegularizedEvolution
from nni.runtime.command_channel.websocket import connection
from nni.runtime.tuner_command_channel.command_type import CommandType, RequestTrialJobs, TrialEnd

from tests.nni_harness import ScriptedChannel, TinySpace, UntracedBox, arch_metric, evaluate_model


def test_every_fix_is_registered_and_apply_is_idempotent():
    names = compat.patch_names()
    assert {'torch_load_weights_only', 'tuner_channel_resume_commands', 'failed_resume_keeps_checkpoint',
            'websocket_keep_comments', 'trial_runs_own_parameter', 'engine_pairs_reported_parameter',
            'wait_models_for_trial_ends', 'trials_ended_after_checkpoint', 'nnictl_view_profile', 'manager_dies_with_driver',
            'sequential_engine_local_training_service', 'oneshot_log_every_n_steps', 'final_report_without_metrics',
            'final_metric_before_trial_end', 'mispaired_trial_ends_experiment', 'resumed_trials_reach_tuner'} <= set(names)
    compat.apply()
    assert compat.patch_names() == names
    with pytest.raises(ValueError, match='Unknown NNI compatibility fix'):
        compat.revert('no_such_fix')


def test_every_fix_is_listed_in_the_module_docstring_and_the_docs_table():
    table = (Path(__file__).resolve().parents[1] / 'docs' / 'nni-compat.md').read_text()
    assert [name for name in compat.patch_names() if f'| `{name}` |' not in table] == []
    assert [name for name in compat.patch_names() if f'``{name}``' not in compat.__doc__] == []


def test_unpatched_restores_inherited_and_own_attributes():
    own = NasExperiment.__dict__['save_checkpoint']
    assert '_stop_nni_manager' in NasExperiment.__dict__           # patched override of an inherited method
    with compat.unpatched('failed_resume_keeps_checkpoint', 'nnictl_view_profile'):
        assert NasExperiment.__dict__['save_checkpoint'] is not own
        assert '_stop_nni_manager' not in NasExperiment.__dict__    # back to Experiment._stop_nni_manager
    assert NasExperiment.__dict__['save_checkpoint'] is own


def test_undoing_one_fix_keeps_another_on_the_same_call():
    """Two fixes wrap ``_trial_end_callback``; undoing either leaves the other in place."""
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine as Engine
    both = Engine.__dict__['_trial_end_callback']
    with compat.unpatched('engine_pairs_reported_parameter'):
        assert Engine.__dict__['_trial_end_callback'].__name__ == 'callback'            # the resume fix
    with compat.unpatched('resumed_trials_rejoin_strategy'):
        top = Engine.__dict__['_trial_end_callback']
        assert top is not both and top.__name__ == '_trial_end_callback'                # the pairing fix
    with compat.unpatched('resumed_trials_rejoin_strategy', 'engine_pairs_reported_parameter',
                          'trials_ended_after_checkpoint'):
        assert Engine.__dict__['_trial_end_callback'].__module__.startswith('nni.')      # NNI's own
    assert Engine.__dict__['_trial_end_callback'] is both


# --- when the fixes are installed ------------------------------------------------------------------

_NNI_MODULES = ('nni.nas.experiment', 'nni.nas.execution.training_service', 'nni.nas.strategy.hpo',
                'nni.nas.oneshot.pytorch.strategy', 'nni.runtime.msg_dispatcher', 'nni.runtime.trial_command_channel.v3')
_STACKS = """
import importlib, json, sys
{before}
import nni_compat
from nni_compat import registry
light = sorted(m for m in ('nni', 'torch') if m in sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
stacks = sorted(f"{{getattr(o, '__qualname__', None) or o.__name__}}.{{attr}}: {{[p.name for p in stack]}}"
                for (_, attr), (o, _, stack) in registry._STACKS.items())
waiting = [p.name for patches in registry._PATCHES.values() for p in patches
           if not any(p in stack for _, _, stack in registry._STACKS.values())]
print(json.dumps([light, stacks, waiting]))
"""


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_fixes_wait_for_their_nni_module_and_stack_as_when_nni_is_imported_first():
    """``import nni_compat`` imports no NNI; each NNI module is patched when imported, every patch is
    installed, and two fixes of one call stack in the same order as when NNI was imported before."""
    lazy = json.loads(_python(_STACKS.format(before='', modules=_NNI_MODULES)))
    eager = json.loads(_python(_STACKS.format(before=f'import {", ".join(_NNI_MODULES)}', modules=())))
    assert lazy[0] == [] and eager[0] == ['nni', 'torch']
    assert lazy[1] == eager[1] and lazy[2] == eager[2] == []
    assert "TrainingServiceExecutionEngine._trial_end_callback: ['trials_ended_after_checkpoint', " \
           "'resumed_trials_rejoin_strategy', 'engine_pairs_reported_parameter']" in lazy[1]


def test_a_fix_undone_before_its_module_is_imported_stays_off_until_restored():
    _python("""
import sys, nni_compat
assert 'nni' not in sys.modules and 'manager_start_patience' in nni_compat.patch_names()
nni_compat.revert('manager_start_patience')
with nni_compat.unpatched('torch_load_weights_only'):
    from nni.nas.utils.serializer import TorchSerializer
    assert TorchSerializer.__dict__['load'].__module__ == 'nni.nas.utils.serializer'
assert TorchSerializer.__dict__['load'].__module__ == 'nni_compat.checkpoint'
from nni.experiment.launcher import _check_rest_server, _start_rest_server   # what an importer gets
assert _check_rest_server.__module__ == 'nni.experiment.launcher'
assert _start_rest_server.__module__ == 'nni_compat.manager'
""")


def test_a_callback_waits_for_its_module_or_runs_at_once():
    calls = []
    compat.when_imported('json', calls.append)
    assert calls == [json]
    assert _python("""
import sys, nni_compat
nni_compat.when_imported('nni', lambda nni: print('nni imported, logging set up:', nni.runtime.log._handlers != {}))
assert 'nni' not in sys.modules
import nni.runtime
""") == 'nni imported, logging set up: True\n'


# --- resume: torch.load and a failed resume -------------------------------------------------------

def _sequential_experiment(workdir, exp_id):
    config = NasExperimentConfig('sequential', 'simplified')
    config.execution_engine.max_model_count = 5
    config.experiment_working_directory = str(workdir)
    strategy = RegularizedEvolution(population_size=4, sample_size=2, seed=1)
    return NasExperiment(TinySpace(), FunctionalEvaluator(evaluate_model), strategy, config, id=exp_id), strategy


def _population_on_disk(workdir, exp_id):
    state = torch.load(workdir / exp_id / 'checkpoint' / 'state.ckpt.torch', weights_only=False)
    return [(dict(ind.x), ind.y) for ind in state['strategy']['population']]


@pytest.fixture
def searched(tmp_path):
    """A finished in-process search whose checkpoint holds a population of 4 (no NNI manager, no
    manifest: the experiment's engine/strategy start is called directly)."""
    exp, strategy = _sequential_experiment(tmp_path, 'seq')
    exp._action = 'create'
    exp._start_engine_and_strategy()
    exp.save_checkpoint()
    population = _population_on_disk(tmp_path, 'seq')
    assert len(population) == 4 and all(y == arch_metric(x) for x, y in population)
    return tmp_path, population


def _resume(workdir):
    exp, strategy = _sequential_experiment(workdir, 'seq')
    exp._action = 'resume'
    exp.load_checkpoint()       # what NasExperiment.resume() does before starting
    return exp, strategy


def test_resume_loads_strategy_state_under_torch_2_6(searched):
    workdir, population = searched
    exp, strategy = _resume(workdir)
    with compat.unpatched('torch_load_weights_only'):
        with pytest.raises(Exception, match='Weights only load failed|weights_only'):
            exp._start_engine_and_strategy()
    from nni.nas.utils.serializer import get_default_serializer
    state = get_default_serializer().load(workdir / 'seq' / 'checkpoint' / 'state.ckpt')
    assert [(dict(i.x), i.y) for i in state['strategy']['population']] == population
    exp, strategy = _resume(workdir)
    exp._start_engine_and_strategy()            # loads the state, then searches on
    # The strategy goes on from the 5 individuals and the population of the first run.
    assert strategy._individual_counter >= 5
    assert [(dict(i.x), i.y) for i in strategy._population][:4 - (strategy._individual_counter - 5)] == \
        population[strategy._individual_counter - 5:]


def test_failed_resume_keeps_the_checkpoint(searched):
    workdir, population = searched
    # Without the fix: the failed resume's stop() overwrites the checkpoint with an empty state.
    with compat.unpatched('torch_load_weights_only', 'failed_resume_keeps_checkpoint'):
        exp, _ = _resume(workdir)
        with pytest.raises(Exception):
            exp._start_engine_and_strategy()
        exp.save_checkpoint()                   # what stop() (atexit) does
    assert _population_on_disk(workdir, 'seq') == []

    # With the fix (torch.load still failing): the checkpoint is left as it was.
    exp, strategy = _sequential_experiment(workdir, 'seq2')
    exp._action = 'create'
    exp._start_engine_and_strategy()
    exp.save_checkpoint()
    kept = _population_on_disk(workdir, 'seq2')
    with compat.unpatched('torch_load_weights_only'):
        exp, _ = _sequential_experiment(workdir, 'seq2')
        exp._action = 'resume'
        with pytest.raises(Exception):
            exp._start_engine_and_strategy()
        exp.save_checkpoint()
    assert _population_on_disk(workdir, 'seq2') == kept and len(kept) == 4


# --- the tuner command channel ------------------------------------------------------------------



def test_resume_commands_are_ignored_not_fatal():
    commands = [(CommandType.ImportData, '[{"parameter": {}, "value": 1}]'),
                (CommandType.AddCustomizedTrialJob, '{}'),
                (CommandType.RequestTrialJobs, '2')]
    with compat.unpatched('tuner_channel_resume_commands'):
        with pytest.raises(ValueError, match='Unknown command type'):
            ScriptedChannel(commands).receive()
    channel = ScriptedChannel(commands)
    first, second, third = channel.receive(), channel.receive(), channel.receive()
    assert isinstance(first, compat.IgnoredCommand) and first.command_type == CommandType.ImportData
    assert isinstance(second, compat.IgnoredCommand) and second.command_type == CommandType.AddCustomizedTrialJob
    assert third == RequestTrialJobs(2)


def test_trial_end_with_double_slash_in_nested_json_is_decoded():
    """A traced evaluator argument that is itself JSON with '//' (a URL) sits two string levels
    deep in the TrialEnd content; TunerCommandChannel.receive's load() stripped it as a comment."""
    parameters = {'parameter_id': 7, 'parameters': {'arg': json.dumps({'url': 'http://example.org/x'})}}
    content = json.dumps({'trial_job_id': 'abc', 'event': 'SUCCEEDED', 'hyper_params': json.dumps(parameters)})
    with compat.unpatched('websocket_keep_comments', 'trial_end_reads_parameter_id'):
        with pytest.raises(json.JSONDecodeError):
            ScriptedChannel([(CommandType.TrialEnd, content)]).receive()
    assert ScriptedChannel([(CommandType.TrialEnd, content)]).receive() == \
        TrialEnd(trial_job_id='abc', parameter_ids=[7], event='SUCCEEDED')


class _FakeWebsocket:
    def __init__(self, message: str):
        self.message = message

    async def recv(self):
        return self.message


@pytest.fixture
def event_loop_thread(monkeypatch):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(connection, '_event_loop', loop)
    yield
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_websocket_message_with_untraced_pickle_is_not_lost(event_loop_thread):
    """The TrialEnd websocket message of a trial whose evaluator holds an untraced object: the
    base64 pickle (here containing '//') sits two string levels deep in the message."""
    hyper_params = nni.dump({'parameter_id': 3, 'parameters': {'box': UntracedBox(b'\xff' * 48)}})
    assert '//' in hyper_params
    content = json.dumps({'trial_job_id': 'abc', 'event': 'SUCCEEDED', 'hyper_params': hyper_params})
    message = json.dumps({'type': 'EN', 'content': content})
    conn = connection.WsConnection('ws://127.0.0.1:1/tuner')
    conn._ws = _FakeWebsocket(message)
    with compat.unpatched('websocket_keep_comments'):
        with pytest.raises(json.JSONDecodeError):
            conn.receive()
    assert conn.receive() == {'type': 'EN', 'content': content}


# --- nnictl view's stored profile -------------------------------------------------------------------

def test_viewable_profile_passes_nas_config_canonicalisation(tmp_path, monkeypatch):
    config = NasExperimentConfig('ts', 'simplified', 'local')
    config.trial_concurrency = 2
    config.experiment_working_directory = str(tmp_path)
    stored = config.canonical_copy().json()
    stored['searchSpace'] = {'a': {'_type': 'choice', '_value': [0, 1, 2, 3]}}   # pushed for the portal
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                                               # nnictl runs from anywhere
    from nni.experiment.config import ExperimentConfig
    with pytest.raises(ValueError, match='search_space'):
        ExperimentConfig(**stored).canonical_copy()
    viewable = ExperimentConfig(**compat.viewable_profile(stored)).canonical_copy()
    assert isinstance(viewable, NasExperimentConfig) and viewable.trial_concurrency == stored['trialConcurrency']


# --- one-shot runs ----------------------------------------------------------------------------------

class _OneShotSpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.fc = LayerChoice([nn.Linear(4, 2), nn.Sequential(nn.Linear(4, 2), nn.Tanh())], label='fc')

    def forward(self, x):
        return self.fc(x)


def _classification(tmp_path, **trainer_kwargs):
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    return Classification(train_dataloaders=DataLoader(data, batch_size=8),
                          val_dataloaders=DataLoader(data, batch_size=8), num_classes=2,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          **trainer_kwargs)


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _training_service_warnings(action) -> list[str]:
    handler = _Count()
    config_logger = logging.getLogger('nni.nas.experiment.config.experiment')
    config_logger.addHandler(handler)
    try:
        action()
    finally:
        config_logger.removeHandler(handler)
    return [m for m in handler.messages if 'training_service' in m]


def test_sequential_engine_config_does_not_warn_about_its_local_training_service(tmp_path):
    from nni.nas.strategy import DARTS

    def default_config():
        return NasExperimentConfig.default(_OneShotSpace(), _classification(tmp_path, max_epochs=1), DARTS())

    def canonicalise_five_times():
        for _ in range(5):
            default_config().canonical_copy()

    config = default_config()
    config.experiment_working_directory = str(tmp_path / 'exp')
    exp = NasExperiment(_OneShotSpace(), _classification(tmp_path, max_epochs=1), DARTS(), config, id='seqcfg')
    exp.save_checkpoint()             # config.json, as a run leaves it; NasExperiment.resume() reads it back

    with compat.unpatched('sequential_engine_local_training_service'):
        assert len(_training_service_warnings(canonicalise_five_times)) == 5
        assert _training_service_warnings(exp.load_checkpoint) != []     # 3 with NNI 3.0: both configs, canonicalised
    assert _training_service_warnings(canonicalise_five_times) == []
    assert _training_service_warnings(exp.load_checkpoint) == []
    canonical = default_config().canonical_copy()
    assert canonical.training_service.platform == 'local' and canonical.trial_concurrency == 1

    remote = default_config()                 # a training service the engine cannot use still warns
    remote.training_service = nni.experiment.config.training_services.RemoteConfig(
        machine_list=[{'host': '127.0.0.1', 'user': 'nobody', 'password': 'x'}])
    assert len(_training_service_warnings(remote.canonical_copy)) == 1


def _prob_columns_after_darts(tmp_path, name):
    from nni.nas.strategy import DARTS
    from pytorch_lightning.loggers import CSVLogger
    evaluator = _classification(tmp_path, max_epochs=2, logger=CSVLogger(str(tmp_path), name=name))
    config = NasExperimentConfig.default(_OneShotSpace(), evaluator, DARTS())
    config.experiment_working_directory = str(tmp_path / name)
    exp = NasExperiment(_OneShotSpace(), evaluator, DARTS(), config, id=name)
    exp._action = 'create'
    exp._start_engine_and_strategy()     # the one-shot run, without writing the NNI manifest
    written = list((tmp_path / name).rglob('metrics.csv'))
    if not written:                      # Lightning wrote no metric at all
        return set()
    lines = written[0].read_text().splitlines()
    header = lines[0].split(',')
    rows = [dict(zip(header, line.split(','))) for line in lines[1:]]
    return {column for column in header for row in rows if column.startswith('prob/') and row[column]}


def test_oneshot_architecture_probabilities_reach_the_logger(tmp_path):
    with compat.unpatched('oneshot_log_every_n_steps'):
        assert _prob_columns_after_darts(tmp_path, 'unpatched') == set()
    assert _prob_columns_after_darts(tmp_path, 'patched') == {'prob/fc/0', 'prob/fc/1'}


# --- the engine's pairing of metrics, TrialEnd and database rows -------------------------------------

def _engine_with_trials(trials):
    """A TrainingServiceExecutionEngine without NNI manager: its binding is a fixed trial list."""
    from types import SimpleNamespace
    from nni.nas.execution.engine import ExecutionEngine
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    engine = object.__new__(TrainingServiceExecutionEngine)
    ExecutionEngine.__init__(engine)             # no command channel
    engine.nodejs_binding = SimpleNamespace(list_trial_jobs=lambda: trials)
    engine.fetch_intermediates = False
    engine._models, engine._submitted_cache, engine._stopped = {}, {}, False
    return engine


def test_engine_pairs_metric_and_trial_end_with_the_parameter_the_trial_reported():
    """Trial X was submitted with parameter 0 but ran parameter 1 (and trial Y the reverse): its
    metrics say 1, the database row and TrialEnd say 0."""
    from types import SimpleNamespace
    from nni.nas.space import SimplifiedModelSpace
    from nni.runtime.tuner_command_channel.command_type import ReportMetricData
    space = SimplifiedModelSpace.from_model(TinySpace(), FunctionalEvaluator(evaluate_model))
    samples = [{'a': 0, 'b': 1}, {'a': 3, 'b': 2}]
    models = [space.freeze(s) for s in samples]

    def row(trial_id, submitted, ran):
        param = SimpleNamespace(parameter_id=submitted, parameter_source='algorithm', parameters=models[submitted],
                                parameter_index=0)
        metric = SimpleNamespace(parameterId=str(ran), data=arch_metric(samples[ran]), type='FINAL')
        return SimpleNamespace(trialJobId=trial_id, status='SUCCEEDED', hyperParameters=[param],
                               finalMetricData=[metric])

    def exported(engine):
        return sorted((str(dict(m.sample)), m.metric) for m in engine.list_models())

    truth = sorted((str(s), arch_metric(s)) for s in samples)
    with compat.unpatched('engine_pairs_reported_parameter'):
        assert exported(_engine_with_trials([row('X', 0, 1), row('Y', 1, 0)])) != truth
    assert exported(_engine_with_trials([row('X', 0, 1), row('Y', 1, 0)])) == truth

    def ended(engine):
        live = [space.freeze(s) for s in samples]
        import weakref
        engine._models = {i: weakref.ref(m) for i, m in enumerate(live)}
        events = []
        engine.dispatch_model_event = lambda event: events.append(event)
        engine._report_metric_data_callback(ReportMetricData(parameter_id=1, trial_job_id='X', type='FINAL',
                                                             sequence=0, value=0.5))
        engine._trial_end_callback(TrialEnd(trial_job_id='X', parameter_ids=[0], event='SUCCEEDED'))
        return [dict(e.model.sample) for e in events if e.event_type.value == 'training_end']

    with compat.unpatched('engine_pairs_reported_parameter'):
        assert ended(_engine_with_trials([])) == [samples[0]]
    assert ended(_engine_with_trials([])) == [samples[1]]


def test_wait_models_waits_for_trial_ends_sent_before_done(monkeypatch, caplog):
    """The manager lists trial X as SUCCEEDED and reads DONE while X's TrialEnd is still in flight
    (dispatched 0.5 s later on the listener thread): the strategy must see it before its run ends."""
    import time
    import weakref
    from types import SimpleNamespace
    from nni.nas.execution.event import TrainingEndEvent
    from nni.nas.execution.engine import ModelEventType
    from nni.nas.space import ModelStatus, SimplifiedModelSpace
    space = SimplifiedModelSpace.from_model(TinySpace(), FunctionalEvaluator(evaluate_model))

    def ended_by_return(deliver_after):
        model = space.freeze({'a': 1, 'b': 2})
        model.status = ModelStatus.Training
        row = SimpleNamespace(trialJobId='X', status='SUCCEEDED', finalMetricData=[],
                              hyperParameters=[SimpleNamespace(parameter_id=0)])
        engine = _engine_with_trials([row])
        engine.nodejs_binding.get_status = lambda: 'DONE'
        engine._models = {0: weakref.ref(model)}
        seen = []
        engine.register_model_event_callback(ModelEventType.TrainingEnd, lambda event: seen.append(event.model))
        if deliver_after is not None:
            threading.Timer(deliver_after, engine.dispatch_model_event,
                            [TrainingEndEvent(model, ModelStatus.Trained)]).start()
        start = time.monotonic()
        engine.wait_models()
        return seen == [model], time.monotonic() - start

    with compat.unpatched('wait_models_for_trial_ends'):
        assert ended_by_return(0.5)[0] is False
    time.sleep(0.6)                                  # let the unpatched run's timer fire
    assert ended_by_return(0.5)[0] is True
    # a TrialEnd that never comes costs the patience, then a warning naming the trial
    monkeypatch.setattr(compat.engine, 'TRIAL_END_PATIENCE', 0.3)
    with caplog.at_level(logging.WARNING, logger='nni_compat'):
        ended, seconds = ended_by_return(None)
    assert not ended and 0.3 <= seconds < 5
    assert 'trial(s) X never reached the strategy' in caplog.text


def test_checkpoint_is_saved_after_each_finished_trial(tmp_path, monkeypatch):
    """A driver killed mid-search must leave a checkpoint that knows the trials finished so far."""
    from nni.nas.execution.engine import ExecutionEngine
    from nni.nas.execution.event import TrainingEndEvent
    from nni.nas.execution.training_service import TrainingServiceExecutionEngine
    from nni.nas.space import ModelStatus
    # An engine without NNI manager (its __init__ would connect to the tuner channel).
    monkeypatch.setattr(TrainingServiceExecutionEngine, '__init__', lambda self, binding: ExecutionEngine.__init__(self))

    def finish_one_trial(name):
        config = NasExperimentConfig('ts', 'simplified', 'local')
        config.trial_concurrency = 1
        config.experiment_working_directory = str(tmp_path)
        strategy = RegularizedEvolution(population_size=4, sample_size=2)
        exp = NasExperiment(TinySpace(), FunctionalEvaluator(evaluate_model), strategy, config, id=name)
        engine = exp.execution_engine_factory(config.canonical_copy().execution_engine)
        exp._engine = engine
        model = exp.executable_model_factory(config.canonical_copy().model_format).freeze({'a': 1, 'b': 2})
        engine.dispatch_model_event(TrainingEndEvent(model, ModelStatus.Trained))
        return (tmp_path / name / 'checkpoint' / 'state.ckpt.torch').exists()

    with compat.unpatched('checkpoint_after_each_trial'):
        assert not finish_one_trial('unpatched')
    assert finish_one_trial('patched')


def test_slow_manager_start_is_waited_for(monkeypatch):
    """The NNI manager answers /check-status only after 5 s (a busy machine)."""
    from nni.experiment import launcher
    calls = []

    def check_status(port, path, prefix):
        calls.append(path)
        if len(calls) <= 5:
            raise ConnectionError('manager not up yet')
        return {'status': 'INITIALIZED'}
    monkeypatch.setattr(launcher.rest, 'get', check_status)
    monkeypatch.setattr(launcher.time, 'sleep', lambda seconds: None)
    with compat.unpatched('manager_start_patience'):
        with pytest.raises(ConnectionError):
            launcher._check_rest_server(8080)
    calls.clear()
    launcher._check_rest_server(8080)
    assert len(calls) == 6


def test_in_process_run_leaves_no_current_trial_parameter():
    """After a SequentialExecutionEngine run, ``Evaluator.mock_runtime`` must still be usable."""
    import nni.trial
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace
    from nni.nas.strategy import Random

    def run():
        nni.trial._params = None
        space = RawFormatModelSpace(TinySpace(), FunctionalEvaluator(evaluate_model))
        Random()(space, SequentialExecutionEngine(max_model_count=2))
        return nni.get_current_parameter()

    with compat.unpatched('sequential_engine_trial_params'):
        assert run() is not None                    # NNI leaves the last model as the current parameter
    nni.trial._params = None
    assert run() is None
    frozen = RawFormatModelSpace(TinySpace(), FunctionalEvaluator(evaluate_model)).freeze({'a': 1, 'b': 1})
    with FunctionalEvaluator.mock_runtime(frozen):
        assert nni.get_current_parameter() is frozen


def test_trial_rerun_by_resumed_manager_is_bound_not_trained_again():
    """The resumed manager re-runs parameter 4 (announced by AddCustomizedTrialJob); its final metric
    arrives before the strategy proposes that architecture again, its end after."""
    import time
    import weakref
    from nni.nas.space import SimplifiedModelSpace
    from nni.runtime.tuner_command_channel.command_type import ReportMetricData
    space = SimplifiedModelSpace.from_model(TinySpace(), FunctionalEvaluator(evaluate_model))
    rerun, other = {'a': 1, 'b': 2}, {'a': 3, 'b': 0}
    announced = json.dumps([{'parameter_id': 4, 'parameter_source': 'resumed', 'parameter_index': 0,
                             'parameters': json.loads(nni.dump(space.freeze(rerun)))}])

    def resume():
        channel = ScriptedChannel([(CommandType.AddCustomizedTrialJob, announced)])
        channel.receive()
        sent = []
        channel.send_trial = lambda parameter_id, parameters, placement_constraint=None: sent.append(
            (parameter_id, dict(parameters.sample)))
        engine = _engine_with_trials([])
        engine._channel, engine._workers, engine._current_parameter_id = channel, 2, 4
        events = []
        engine.dispatch_model_event = lambda event: events.append((event.event_type.value, dict(event.model.sample)))
        engine._report_metric_data_callback(ReportMetricData(parameter_id=4, trial_job_id='R', type='FINAL',
                                                             sequence=0, value=arch_metric(rerun)))
        models = [space.freeze(rerun), space.freeze(other)]
        engine.submit_models(*models)
        engine._trial_end_callback(TrialEnd(trial_job_id='R', parameter_ids=[4], event='SUCCEEDED'))
        deadline = time.time() + 10
        while len(events) < 2 and time.time() < deadline:
            time.sleep(0.01)
        return sent, events, engine

    with compat.unpatched('resumed_trials_rejoin_strategy'):
        sent, events, _ = resume()
    assert sent == [(5, rerun), (6, other)] and events == []     # trained twice, its result dropped
    sent, events, engine = resume()
    assert sent == [(5, other)]                                  # only the new architecture starts
    assert events == [('final_metric', rerun), ('training_end', rerun)]
    assert engine._workers == 0 and isinstance(engine._models[4], weakref.ref)


def test_trial_ended_after_the_last_checkpoint_is_not_trained_again():
    """Trial X ended and was checkpointed; trial Y ended after that checkpoint, before the driver
    was killed. The restored strategy saw Y running and proposes its architecture again."""
    import time
    import weakref
    from types import SimpleNamespace
    from nni.nas.space import SimplifiedModelSpace
    space = SimplifiedModelSpace.from_model(TinySpace(), FunctionalEvaluator(evaluate_model))
    seen, late, new = {'a': 0, 'b': 1}, {'a': 1, 'b': 2}, {'a': 3, 'b': 0}

    def row(trial_id, parameter_id, sample):
        param = SimpleNamespace(parameter_id=parameter_id, parameter_source='algorithm', parameter_index=0,
                                parameters=json.loads(nni.dump(space.freeze(sample))))
        metric = SimpleNamespace(parameterId=str(parameter_id), data=arch_metric(sample), type='FINAL')
        return SimpleNamespace(trialJobId=trial_id, status='SUCCEEDED', hyperParameters=[param],
                               finalMetricData=[metric])

    # Before the kill: X's end reaches the strategy, and the checkpoint records it.
    before = _engine_with_trials([])
    live = space.freeze(seen)
    before._models = {0: weakref.ref(live)}
    before.dispatch_model_event = lambda event: None
    before._trial_end_callback(TrialEnd(trial_job_id='X', parameter_ids=[0], event='SUCCEEDED'))
    checkpoint = json.loads(json.dumps(before.state_dict()))

    def resume(checkpoint):
        engine = _engine_with_trials([row('X', 0, seen), row('Y', 1, late)])
        channel = ScriptedChannel([])
        sent = []
        channel.send_trial = lambda parameter_id, parameters, placement_constraint=None: sent.append(
            (parameter_id, dict(parameters.sample)))
        engine._channel, engine._workers, engine._current_parameter_id = channel, 2, 1
        engine.load_state_dict(checkpoint)
        events = []
        engine.dispatch_model_event = lambda event: events.append((event.event_type.value, dict(event.model.sample)))
        models = [space.freeze(late), space.freeze(new)]
        engine.submit_models(*models)
        deadline = time.time() + 10
        while len(events) < 2 and time.time() < deadline and len(sent) < 2:
            time.sleep(0.01)
        return sent, events, engine, models

    with compat.unpatched('trials_ended_after_checkpoint'):
        assert resume({})[0] == [(2, late), (3, new)]                       # Y is trained twice
    assert resume({})[0] == [(2, late), (3, new)]                           # a checkpoint without the list
    sent, events, engine, models = resume(checkpoint)
    assert sent == [(2, new)]                                               # only the new architecture starts
    assert events == [('final_metric', late), ('training_end', late)]      # Y's result, as a trial's
    assert engine._models[1]() is models[0] and engine._workers == 1           # the new trial's worker only
    assert engine.state_dict()['nni_plugins_ended_trials'] == ['X', 'Y']  # the next checkpoint knows Y
    engine.submit_models(space.freeze(late))
    assert sent == [(2, new), (3, late)]                                    # proposed again: trained


def test_resuming_a_finished_oneshot_search_ends_with_its_checkpointed_supernet(tmp_path, monkeypatch, caplog):
    """NNI's ``DARTS`` runs 2 epochs with a Lightning checkpoint; resuming it at ``max_epochs=2`` trains no
    epoch, and NNI's final report then looks up a metric that was never logged."""
    from nni.nas.strategy import DARTS
    from tests import oneshot_helpers
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('NNI_CONFIG_DIR', str(tmp_path / 'nni'))
    torch.manual_seed(0)
    first = oneshot_helpers.checkpointed_experiment(tmp_path, DARTS(), 2)
    try:
        first.run()
        final = {k: v.detach().clone() for k, v in first.strategy.oneshot_module.state_dict().items()}
        exported = first.export_top_models(formatter='dict')[0]
    finally:
        first.stop()

    def resume():
        again = oneshot_helpers.checkpointed_experiment(tmp_path, DARTS(), 2)
        try:
            again.resume()
            return again.strategy.oneshot_module, again.export_top_models(formatter='dict')[0]
        finally:
            again.stop()

    with compat.unpatched('final_report_without_metrics'), pytest.raises(KeyError, match='train_acc'):
        resume()
    with caplog.at_level(logging.WARNING):
        module, sample = resume()
    assert module.trainer.current_epoch == 2
    oneshot_helpers.assert_same_tensors(module.state_dict(), final)
    assert sample == exported
    oneshot_helpers.TinySpace().freeze(sample)
    assert any('No final result is reported: this fit logged no train_acc' in r.getMessage() for r in caplog.records)
    assert [r for r in caplog.records if 'training_service' in r.getMessage()] == []   # a one-shot resume


def test_resumed_trials_reach_a_tuner_that_asks_for_them(monkeypatch):
    """``nnictl resume`` announces the re-run trials with ADD_CUSTOMIZED_TRIAL_JOB: the dispatcher
    recovers their ids as before, and a tuner with ``import_running`` now also gets their parameters
    (NNI's own tuners have no such method and are left alone)."""
    from nni.recoverable import Recoverable
    from nni.runtime import msg_dispatcher
    from nni.tuner import Tuner

    class Listening(Tuner):
        def __init__(self):
            self.running = []

        def import_running(self, parameters):
            self.running.extend(parameters)

    monkeypatch.setattr(msg_dispatcher, '_next_parameter_id', msg_dispatcher._next_parameter_id)
    announced = [nni.dump({'parameter_id': 3, 'parameter_source': 'resumed', 'parameter_index': 0,
                           'parameters': {'0_1': 'nor_conv_3x3'}}),
                 {'parameter_id': 5, 'parameter_source': 'resumed', 'parameter_index': 0, 'parameters': {'0_1': 'none'}}]

    def dispatch(tuner):
        dispatcher = msg_dispatcher.MsgDispatcher.__new__(msg_dispatcher.MsgDispatcher)
        Recoverable.__init__(dispatcher)
        dispatcher.tuner = tuner
        dispatcher.handle_add_customized_trial(announced)
        assert dispatcher.recovered_max_param_id == 5 and msg_dispatcher._next_parameter_id == 6
        return tuner

    with compat.unpatched('resumed_trials_reach_tuner'):
        assert dispatch(Listening()).running == []
    assert dispatch(Listening()).running == [{'0_1': 'nor_conv_3x3'}, {'0_1': 'none'}]
    dispatch(Tuner())                    # a tuner without the hook: nothing else happens
