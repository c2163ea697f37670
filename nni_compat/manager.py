"""The NNI manager and the processes around it: its start and its end under a Python driver, and
the stored profile ``nnictl view`` reloads."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from .registry import patch

_logger = logging.getLogger(__name__)


def viewable_profile(params: dict) -> dict:
    """The stored experiment profile made acceptable to ``NasExperimentConfig`` when ``nnictl view``
    reloads it: an empty legacy search space, and the trial code directory relative (``.``), because
    ``_canonicalize`` (``nni/nas/experiment/config/experiment.py:167-172``) rejects both a
    customised search space and a code directory other than the current directory. The search space
    stays (empty): a resumed manager sends it to the strategy's channel, which refused a missing one
    (``Initialize command data must be a dict``), so a stopped experiment could not be resumed."""
    params = dict(params)
    params['searchSpace'] = {}
    params['trialCodeDirectory'] = '.'
    if isinstance(params.get('trainingService'), dict):
        params['trainingService'] = dict(params['trainingService'], trialCodeDirectory='.')
    return params


def make_profile_viewable(database: Path, experiment_id: str) -> bool:
    """Append a revision of the experiment profile, made by :func:`viewable_profile`, to the NNI
    manager's database (the newest revision is what ``nnictl view`` loads)."""
    if not database.exists():
        return False
    with contextlib.closing(sqlite3.connect(str(database))) as conn, conn:
        row = conn.execute('SELECT params, revision FROM ExperimentProfile WHERE id=? ORDER BY revision DESC',
                           (experiment_id,)).fetchone()
        if row is None:
            return False
        params = json.loads(row[0])
        if params.get('experimentType') != 'nas':
            return False
        fixed = viewable_profile(params)
        if fixed == params:
            return True
        columns = [info[1] for info in conn.execute('PRAGMA table_info(ExperimentProfile)')]
        old = conn.execute(f'SELECT {", ".join(columns)} FROM ExperimentProfile WHERE id=? AND revision=?',
                           (experiment_id, row[1])).fetchone()
        values = dict(zip(columns, old), params=json.dumps(fixed), revision=row[1] + 1)
        conn.execute(f'INSERT INTO ExperimentProfile ({", ".join(columns)}) VALUES ({", ".join("?" * len(columns))})',
                     [values[c] for c in columns])
    return True


def fix_nnictl_view_profile() -> None:
    """``nnictl view <id>`` of a NAS experiment raises ``ValueError: search_space field can not be
    customized``: it reloads the newest stored profile, which holds the legacy search space that
    ``NasExperiment._send_space_to_nni_manager`` pushed for the web portal, and an absolute trial
    code directory that must equal nnictl's cwd. ``nnictl`` runs in its own process without our
    packages, so the fix is in the stored profile: once the NNI manager of a NAS experiment has
    stopped (``NasExperiment._stop_nni_manager``), a viewable revision is appended to its database."""
    def make(original):
        def _stop_nni_manager(self) -> None:
            had_manager = self._proc is not None
            original(self)
            if had_manager:
                try:
                    root = Path(self.config.canonical_copy().experiment_working_directory)
                    make_profile_viewable(root / self.id / 'db' / 'nni.sqlite', self.id)
                except Exception:
                    _logger.exception('Could not make experiment %s viewable by nnictl view.', self.id)
        return _stop_nni_manager

    patch('nnictl_view_profile', 'nni.nas.experiment.experiment:NasExperiment._stop_nni_manager', make)


_WATCHDOG = r'''
import os, signal, sys, time
driver, manager, experiment_id = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)

def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except OSError:
        return False

def driver_alive():
    return os.getppid() == driver and alive(driver)

while alive(manager) and driver_alive():
    time.sleep(1)
if driver_alive():
    sys.exit(0)  # the manager stopped normally; the driver records that
if alive(manager):
    os.kill(manager, signal.SIGTERM)
    for _ in range(50):
        if not alive(manager):
            break
        time.sleep(0.2)
    else:
        os.kill(manager, signal.SIGKILL)
from nni.tools.nnictl.config_utils import Experiments
experiments = Experiments()
if experiment_id in experiments.get_all_experiments():
    experiments.update_experiment(experiment_id, 'status', 'STOPPED')
    experiments.update_experiment(experiment_id, 'endTime', int(time.time() * 1000))
'''


def fix_manager_dies_with_driver() -> None:
    """``nni.experiment.launcher._start_rest_server`` starts ``node main.js`` in its own process
    group, and NNI relies on ``atexit`` to stop it, so a driver killed by SIGKILL or SIGTERM (a job
    time limit, the OOM killer) leaves the NNI manager running, holding its port and trials, and
    the ``.experiment`` manifest listing the experiment as running. For managers started in
    background or foreground mode (not ``detach``, which is meant to outlive the driver) a small
    watchdog process, started right after the manager, now follows the driver: when the driver is
    gone it stops the manager (SIGTERM, then SIGKILL) and marks the manifest entry ``STOPPED``."""
    def make(original):
        def _start_rest_server(nni_manager_args, run_mode):
            proc = original(nni_manager_args, run_mode)
            if getattr(run_mode, 'value', run_mode) != 'detach' and sys.platform.startswith('linux'):
                subprocess.Popen([sys.executable, '-c', _WATCHDOG, str(os.getpid()), str(proc.pid),
                                  nni_manager_args.experiment_id],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            return proc
        _start_rest_server.__doc__ = original.__doc__
        return _start_rest_server

    patch('manager_dies_with_driver', 'nni.experiment.launcher:_start_rest_server', make)


def fix_manager_start_patience() -> None:
    """``nni.experiment.launcher._check_rest_server`` gives the freshly started NNI manager 3
    one-second tries to answer ``/check-status``. On a busy machine node takes longer; the check
    then reads the web portal's HTML instead of JSON and ``NasExperiment.run()`` fails with
    "Create experiment failed: Expecting value". The manager now gets up to 60 tries."""
    def make(original):
        def _check_rest_server(port, retry=3, url_prefix=None):
            return original(port, max(retry, 60), url_prefix)
        return _check_rest_server

    patch('manager_start_patience', 'nni.experiment.launcher:_check_rest_server', make)

