"""End-to-end proofs of the NNI 3.0 fixes that need a running NNI manager (nni_compat).

Each experiment runs in a driver subprocess in its own sandbox (HOME, NNI_CONFIG_DIR, experiment
directory, free loopback port; see tests/nni_harness.py), on a 16-architecture space whose metric
is a deterministic function of the architecture the trial really ran, reported with it.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

import nni_compat as compat
from tests.nni_harness import Sandbox, arch_metric, free_port, pid_alive, rest_get, wait_dead

pytestmark = pytest.mark.slow

TRIALS = 6


def _wait_until(condition, timeout: float, what: str, sandbox: Sandbox):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except (OSError, ValueError):    # manager not up yet (refused, or the portal's HTML)
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f'timed out waiting for {what}; driver log:\n{sandbox.log()}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The same search twice, with NNI as it is and with our fixes: 6 trials, concurrency 3, and
    trial 0 starting 15 s late so that trials 1 and 2 ask for their parameters first (the hand-out
    race, made deterministic). With the fixes the evaluator also holds an untraced object; NNI as
    it is would lose TrialEnd and RequestTrialJobs messages with it and hang (shown without a
    manager in test_compat_unit.py::test_websocket_message_with_untraced_pickle_is_not_lost)."""
    results = {}
    sandboxes = []
    try:
        as_shipped = ','.join(n for n in compat.patch_names() if n != 'manager_start_patience')  # busy machines
        for name, extra in [('unpatched', ['--unpatch', as_shipped]), ('patched', ['--untraced'])]:
            sandbox = Sandbox(tmp_path_factory.mktemp(name))
            sandboxes.append(sandbox)
            results[name] = sandbox, sandbox.run_driver(
                '--port', str(free_port()), '--exp-id', name, '--trials', str(TRIALS), '--concurrency', '3',
                '--population', str(TRIALS), '--delay-first', '15', *extra, timeout=1200)
        yield results
    finally:
        for sandbox in sandboxes:
            sandbox.cleanup()


def _sample(rest_trial: dict) -> dict:
    import nni
    return dict(nni.load(rest_trial['hyperParameters'][0], ignore_comments=False)['parameters'].sample)


def _disagreements(result) -> list:
    """Trials whose REST view (sample, parameter id) differs from what they reported running."""
    bad = []
    for trial in result['trials']:
        final = trial['final']
        if final is None or final['value']['arch'] != trial['sample'] or \
                int(final['parameter_id']) != int(trial['parameter_id']):
            bad.append(trial)
    return bad


def test_concurrent_trials_metrics_belong_to_the_architecture_they_ran(runs):
    _, unpatched = runs['unpatched']
    assert _disagreements(unpatched), 'the late first trial should have been handed another parameter'

    _, result = runs['patched']
    assert result['status'] == 'DONE'
    trials = result['trials']
    assert len(trials) == TRIALS and all(t['status'] == 'SUCCEEDED' for t in trials)
    # REST API: each trial's recorded architecture is the one it ran, with that architecture's metric.
    assert _disagreements(result) == []
    assert all(t['final']['value']['default'] == arch_metric(t['sample']) for t in trials)
    # The strategy's own records.
    assert len(result['records']) == TRIALS
    assert all(metric == arch_metric(sample) for sample, metric in result['records'])
    assert sorted(map(str, (s for s, _ in result['records']))) == sorted(map(str, (t['sample'] for t in trials)))
    # export_top_models(): the truly best architectures among those evaluated.
    best = sorted((t['sample'] for t in trials), key=arch_metric, reverse=True)[:3]
    assert result['export'] == best


def test_untraced_evaluator_loses_no_trial_end(runs):
    _, patched = runs['patched']
    assert len(patched['training_ends']) == TRIALS
    assert all(status == 'trained' and metric == arch_metric(sample)
               for sample, status, metric in patched['training_ends'])


@pytest.mark.parametrize('name', ['unpatched', 'patched'])
def test_nnictl_view_opens_the_finished_experiment(runs, name):
    sandbox, result = runs[name]
    port = free_port()
    view = sandbox.nnictl('view', name, '--port', str(port))      # from a directory other than the code dir
    try:
        if name == 'unpatched':
            assert 'search_space' in view.stdout + view.stderr
            with pytest.raises(OSError):
                rest_get(port, '/check-status')
            return
        assert view.returncode == 0, view.stdout + view.stderr
        assert rest_get(port, '/check-status')['status'] == 'VIEWED'
        viewed = rest_get(port, '/trial-jobs')
        assert sorted(t['trialJobId'] for t in viewed) == sorted(t['id'] for t in result['trials'])
    finally:
        sandbox.nnictl('stop', name)
        sandbox.cleanup()


@pytest.mark.parametrize('unpatch', ['manager_dies_with_driver', ''])
def test_dead_driver_leaves_no_manager_running(tmp_path, unpatch):
    sandbox = Sandbox(tmp_path)
    port = free_port()
    try:
        driver = sandbox.start_driver('--port', str(port), '--exp-id', 'orphan', '--trials', '2', '--concurrency', '1',
                                      '--sleep', '300', '--unpatch', unpatch)
        _wait_until(lambda: any(t['status'] == 'RUNNING' for t in rest_get(port, '/trial-jobs')), 400,
                    'a running trial', sandbox)
        manager = sandbox.manifest()['orphan']['pid']
        driver.kill()
        driver.wait()
        if unpatch:
            time.sleep(10)
            assert pid_alive(manager), 'without the fix the NNI manager outlives its driver'
            assert sandbox.manifest()['orphan']['status'] != 'STOPPED'
        else:
            assert wait_dead(manager, 60), 'the NNI manager should stop when its driver dies'
            _wait_until(lambda: sandbox.manifest()['orphan']['status'] == 'STOPPED', 60, 'manifest update', sandbox)
    finally:
        sandbox.cleanup()


def _resume_strategies():
    names = ['evolution']
    try:
        import strategies
    except ImportError:
        return names
    return names + [name for name in ('GOAL', 'NASGEM') if hasattr(strategies, name)]


@pytest.mark.parametrize('strategy', _resume_strategies())
def test_resume_after_sigkill_finishes_budget_without_repeating_or_losing_trials(tmp_path, strategy):
    budget = 8
    sandbox = Sandbox(tmp_path)
    args = ['--exp-id', 'resumed', '--strategy', strategy, '--trials', str(budget), '--concurrency', '2',
            '--population', '4', '--sleep', '2']
    port = free_port()
    try:
        driver = sandbox.start_driver('--port', str(port), *args, log_name='first.log')

        def finished_and_running():
            trials = rest_get(port, '/trial-jobs')
            done = [t for t in trials if t['status'] == 'SUCCEEDED']
            running = {t['trialJobId'] for t in trials if t['status'] in ('WAITING', 'RUNNING')}
            return (done, running) if len(done) >= 3 and running else None
        # Killed with trials in flight: the resumed manager re-runs those behind the strategy.
        done, in_flight = _wait_until(finished_and_running, 900, 'three finished trials and one running', sandbox)
        manager = sandbox.manifest()['resumed']['pid']
        os.kill(driver.pid, signal.SIGKILL)
        os.kill(manager, signal.SIGKILL)
        driver.wait()
        assert wait_dead(manager, 30)
        before = {t['trialJobId']: _sample(t) for t in done}

        result = sandbox.run_driver('--port', str(free_port()), '--resume', *args, timeout=1200, log_name='resume.log')
    finally:
        sandbox.cleanup()

    finished_before = set(before)
    after = {t['id']: t for t in result['trials']}
    succeeded = [t for t in result['trials'] if t['status'] == 'SUCCEEDED']
    # Nothing lost: every trial finished before the kill is still there, with its architecture and metric.
    assert finished_before <= set(after)
    assert all(after[tid]['status'] == 'SUCCEEDED' and after[tid]['sample'] == before[tid]
               for tid in finished_before)
    # The trials in flight at the kill were re-run by the resumed manager (same id) to the end.
    assert in_flight and in_flight <= set(after) and all(after[tid]['status'] == 'SUCCEEDED' for tid in in_flight)
    # Nothing repeated: no architecture was trained to the end twice.
    samples = [str(t['sample']) for t in succeeded]
    assert len(samples) == len(set(samples))
    # The budget is finished, every metric belongs to its architecture.
    assert result['status'] == 'DONE' and len(after) == budget
    assert _disagreements({'trials': succeeded}) == [], result['trials']
    # The strategy's records after resume go on from those before the kill.
    if result['records'] is not None:
        assert all(metric == arch_metric(sample) for sample, metric in result['records'])
        recorded = {str(s) for s, _ in result['records']}
        assert recorded <= set(samples)

