"""Faults in the experiment process's tuner command channel (the multi-trial search through an NNI
manager): a trial end whose parameters can no longer be rebuilt, and any error in the thread that
listens to the manager. Each unit test shows NNI's behaviour with the fix undone (``compat.unpatched``);
the end-to-end test runs a real search whose data file disappears after it started."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import nni
import numpy as np
import pytest
from nni.nas.execution.engine import ExecutionEngine
from nni.nas.execution.training_service import TrainingServiceExecutionEngine
from nni.runtime.tuner_command_channel.command_type import CommandType, TrialEnd

import nni_compat as compat
from nni_compat.channel import listener_error
from nni_plugins import datasets
from tests.nni_harness import ScriptedChannel

REPO = Path(__file__).resolve().parents[1]




def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((40, 1, 8, 8)).astype(np.float32), y_train=np.arange(40) % 3)
    return path


def test_trial_end_does_not_rebuild_the_trials_objects(tmp_path):
    """The TrialEnd of a trial whose evaluator's data set reads a file that is gone: rebuilding the
    parameter fails, reading its id must not."""
    path = _npz(tmp_path / "d.npz")
    part = datasets.build_datasets("npz", path=str(path), limit=20).train
    hyper_params = nni.dump({'parameter_id': 5, 'parameters': {'data': part}})
    path.unlink()
    datasets._load_source.cache_clear()   # as in a process that never loaded the file
    content = json.dumps({'trial_job_id': 'T', 'event': 'FAILED', 'hyper_params': hyper_params})
    with compat.unpatched('trial_end_reads_parameter_id'):
        with pytest.raises(ValueError, match="does not exist"):
            ScriptedChannel([(CommandType.TrialEnd, content)]).receive()
    assert ScriptedChannel([(CommandType.TrialEnd, content)]).receive() == \
        TrialEnd(trial_job_id='T', parameter_ids=[5], event='FAILED')


def _failing_channel() -> ScriptedChannel:
    """A channel whose first command's callback (a strategy's, through the engine) raises."""
    channel = ScriptedChannel([(CommandType.RequestTrialJobs, '1')])

    def callback(command):
        raise KeyError('no such model')
    channel.on_request_trial_jobs(callback)
    return channel


def test_listener_error_stops_the_strategy(caplog):
    with compat.unpatched('listener_failure_stops_strategy'):
        with pytest.raises(KeyError):
            _failing_channel().listen(threading.Event())   # in its thread: the thread dies, nothing else

    channel = _failing_channel()
    with caplog.at_level(logging.ERROR, logger='nni_compat.channel'):
        channel.listen(threading.Event())   # returns: the error is kept, not raised in the thread
    assert isinstance(listener_error(channel), KeyError)
    assert "The tuner command channel stopped on KeyError: 'no such model'" in caplog.text

    engine = object.__new__(TrainingServiceExecutionEngine)
    ExecutionEngine.__init__(engine)
    engine.nodejs_binding = SimpleNamespace(get_status=lambda: 'RUNNING')
    engine._channel, engine._stopped, engine._workers = channel, False, 0
    # What a strategy waiting for a free worker calls each second: it now ends the wait.
    with pytest.raises(RuntimeError, match="The experiment is stopped: NNI's tuner command channel failed on "
                                           "KeyError: 'no such model'"):
        engine.budget_available()
    with compat.unpatched('listener_failure_stops_strategy'):
        assert engine.budget_available()   # NNI: the strategy keeps waiting for a worker that never comes


@pytest.mark.slow
def test_search_whose_data_file_is_removed_ends(tmp_path):
    """A multi-trial search through the NNI manager whose .npz file is removed after the search
    loaded it: every trial fails to load the data. It used to wait forever; it must end with one
    error line naming the file."""
    path = _npz(tmp_path / "d.npz")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import nni_plugins.datasets as datasets
        from nni_plugins.cli import main

        def build_then_remove(*args, _build=datasets.build_datasets, **kwargs):
            splits = _build(*args, **kwargs)
            Path({str(path)!r}).unlink()
            return splits

        datasets.build_datasets = build_then_remove
        sys.exit(main(["search", "--strategy", "random", "--dataset", "npz", "--data-path", {str(path)!r},
                       "--trials", "2", "--epochs", "1", "--output", {str(tmp_path / 'out')!r}]))
    """)
    env = dict(os.environ, HOME=str(tmp_path / "home"), NNI_CONFIG_DIR=str(tmp_path / "nni-config"),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert str(path) in errors[0], errors
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "best_architecture.json").exists()
