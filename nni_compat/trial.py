"""The trial side: which architecture a trial runs when trials run concurrently (with the entry
point NAS experiments launch their trials through), and the directory the web portal's TensorBoard
button opens."""
from __future__ import annotations

import json
import logging
import os
import runpy
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .channel import load_keeping_comments
from .registry import patch

_logger = logging.getLogger(__name__)

TRIAL_ENTRY = 'import nni_compat as c; c.trial_main()'


def trial_main() -> None:
    """Entry of trials launched by a patched :class:`~nni.nas.experiment.NasExperiment` on the local
    training service: ``python -c "<TRIAL_ENTRY>" -m nni.nas.execution.training_service trial``.

    Importing :mod:`nni_compat` applied the fixes (among them ``trial_runs_own_parameter``); the
    NNI trial module then runs exactly as NNI launches it."""
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != '-m':
        raise SystemExit('usage: python -c "%s" -m <module> [args...]' % TRIAL_ENTRY)
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name='__main__', alter_sys=True)


def _manager_rest_root() -> str | None:
    """REST root of the NNI manager, seen from a trial of the local training service: the trial's
    command channel is served by the manager itself at ``<root>/env/<env id>/<trial id>``."""
    url = os.environ.get('NNI_TRIAL_COMMAND_CHANNEL', '')
    if os.environ.get('NNI_PLATFORM') != 'local' or not url.startswith('http://') or '/env/' not in url:
        return None
    return url.rsplit('/env/', 1)[0].rstrip('/')


def _fetch_own_parameter(timeout: float = 30.0) -> dict | None:
    """The parameter the NNI manager recorded for this trial (``GET /trial-jobs/<id>``), i.e. what
    the web portal and ``list_trial_jobs()`` show for it."""
    root = _manager_rest_root()
    trial_id = os.environ.get('NNI_TRIAL_JOB_ID')
    if root is None or not trial_id:
        return None
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f'{root}/api/v1/nni/trial-jobs/{trial_id}', timeout=10) as resp:
                detail = json.loads(resp.read())
            hyper_parameters = detail.get('hyperParameters') or []
            if hyper_parameters:
                return load_keeping_comments(hyper_parameters[0])
        except Exception as error:  # the manager may not have stored the trial yet
            _logger.debug('Trial %s: parameter not available from the NNI manager yet: %r', trial_id, error)
        if time.time() > deadline:
            _logger.warning('Trial %s: could not read its own parameter from the NNI manager; running the '
                            'one handed out by the training service.', trial_id)
            return None
        time.sleep(0.5)


def fix_trial_runs_own_parameter() -> None:
    """With ``trial_concurrency > 1`` the local (v3) training service hands the queued parameters
    to whichever trial *asks first* (``nni_node/training_service/v3/compat.js:79,193-199``), not to
    the trial each was submitted for, while the manager's database (web portal, REST API,
    ``TrainingServiceExecutionEngine.list_models``) and ``TrialEnd`` events keep the submitted
    pairing. Result: metrics attached to the wrong architecture and a wrong
    ``export_top_models()``.

    Fix, Python side only: a NAS experiment on the local training service launches its trials
    through :func:`trial_main` (``NasExperimentConfig._canonicalize`` builds the trial command with
    :data:`TRIAL_ENTRY`), and in the trial ``TrialCommandChannelV3.receive_parameter`` still
    takes one parameter from the queue (so the queue stays balanced) but returns the trial's *own*
    parameter, read from the manager's REST API. Every trial then runs the architecture the manager
    recorded for it, and metrics, ``TrialEnd`` and database agree."""
    def make_receive(original):
        def receive_parameter(self):
            received = original(self)
            own = _fetch_own_parameter()
            if own is None:
                return received
            if received is not None and received.get('parameter_id') != own.get('parameter_id'):
                _logger.info('Training service handed parameter %s to this trial; running its own '
                             'parameter %s instead.', received.get('parameter_id'), own.get('parameter_id'))
            return own
        receive_parameter.__doc__ = original.__doc__
        return receive_parameter

    def make_canonicalize(original):
        def _canonicalize(self, parents):
            params = dict(self._trial_command_params or {})
            if 'python' not in params and _is_local(self.training_service):
                params['python'] = f'{shlex.quote(sys.executable)} -c {shlex.quote(TRIAL_ENTRY)}'
                self._trial_command_params = params
            return original(self, parents)
        return _canonicalize

    patch('trial_runs_own_parameter', 'nni.runtime.trial_command_channel.v3:TrialCommandChannelV3.receive_parameter',
          make_receive)
    patch('trial_runs_own_parameter', 'nni.nas.experiment.config.experiment:NasExperimentConfig._canonicalize',
          make_canonicalize)


def _is_local(training_service: Any) -> bool:
    """Local training service, or none set yet (which canonicalises to local)."""
    from nni.experiment.config import utils as config_utils
    if config_utils.is_missing(training_service):
        return True
    return getattr(training_service, 'platform', None) == 'local'


def fix_tensorboard_button_dir() -> None:
    """The web portal's TensorBoard button (``POST /api/v1/nni/tensorboard``, handled by
    ``nni_node/extensions/nniTensorboardManager.js:44-46``) opens
    ``getTrialOutputLocalPath(trial)/tensorboard``, which the local v3 training service answers
    with ``<experiment>/trials/<trial>/output`` (``V3asV1.getTrialOutputLocalPath``,
    ``nni_node/training_service/v3/compat.js:170``), while the trial itself runs with
    ``NNI_OUTPUT_DIR=<experiment>/environments/<env>/trials/<trial>``
    (``common/trial_keeper/process.js:91``): the button shows an empty directory.

    Fix, Python side only: a trial of the local training service that imports any of our packages
    links ``<experiment>/trials/<trial>/output`` to its ``NNI_OUTPUT_DIR`` (creating
    ``NNI_OUTPUT_DIR/tensorboard``), so the directory NNI's manager opens is the one the trial
    writes to. Nothing happens outside such a trial, when the layout is not NNI 3.0's, or when the
    path already exists. Remote machines are not covered: NNI copies only ``trial.log`` back."""
    output = os.environ.get('NNI_OUTPUT_DIR')
    trial_id = os.environ.get('NNI_TRIAL_JOB_ID')
    if os.environ.get('NNI_PLATFORM') != 'local' or not output or not trial_id:
        return
    trial_dir = Path(output).resolve()
    if trial_dir.name != trial_id or trial_dir.parent.name != 'trials' or trial_dir.parents[2].name != 'environments':
        return
    link = trial_dir.parents[3] / 'trials' / trial_id / 'output'
    try:
        (trial_dir / 'tensorboard').mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(trial_dir, target_is_directory=True)
    except OSError as error:  # e.g. a read-only experiment directory: the portal just shows nothing
        _logger.debug('Could not link %s to %s for the TensorBoard button: %r', link, trial_dir, error)
