"""The tuner command channel: the commands a resumed NNI manager sends, and messages the
decoders' comment stripper garbled."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .registry import patch

_logger = logging.getLogger(__name__)

_ANNOUNCED = '_nni_plugins_resumed_trials'    # channel attribute: AddCustomizedTrialJob contents
_FAILED = '_nni_plugins_listener_error'       # channel attribute: the error that stopped its listener
_CHANNEL = 'nni.runtime.tuner_command_channel.channel'
_ENGINE = 'nni.nas.execution.training_service:TrainingServiceExecutionEngine'


@dataclass
class IgnoredCommand:
    """A tuner command a NAS strategy has no use for (no callback is registered for it)."""
    command_type: Any
    content: str


def fix_tuner_channel_resume_commands() -> None:
    """On resume the NNI manager replays finished trials to the tuner as ``ImportData`` and
    ``AddCustomizedTrialJob`` commands. ``TunerCommandChannel.receive``
    (``nni/runtime/tuner_command_channel/channel.py:204``) raises ``ValueError`` on them, which kills
    the listener thread, and the strategy waits forever. NAS strategies restore their history from
    their own checkpoint, so both commands are received and ignored (logged at debug level)."""
    def make(original):
        def receive(self):
            from nni.runtime.tuner_command_channel.command_type import CommandType
            command_type, content = self._receive()
            if command_type in (CommandType.ImportData, CommandType.AddCustomizedTrialJob):
                _logger.debug('Ignoring %s sent by the NNI manager (NAS strategies resume from their '
                              'own checkpoint).', command_type)
                if command_type == CommandType.AddCustomizedTrialJob:
                    # The trials the manager re-runs; the engine rebinds them (resumed_trials_rejoin_strategy).
                    self.__dict__.setdefault(_ANNOUNCED, []).append(content)
                return IgnoredCommand(command_type, content)
            return _decode(original, self, command_type, content)
        receive.__doc__ = original.__doc__
        return receive

    patch('tuner_channel_resume_commands', f'{_CHANNEL}:TunerCommandChannel.receive', make)


def _decode(receive: Any, channel: Any, command_type: Any, content: str) -> Any:
    """``receive(channel)`` (NNI's decoder, or a fix below this one) on a command already read."""
    own = channel.__dict__.get('_receive')
    channel._receive = lambda: (command_type, content)
    try:
        return receive(channel)
    finally:
        if own is None:
            del channel._receive
        else:
            channel._receive = own


def parameter_id(hyper_params: str) -> int:
    """The ``parameter_id`` of a trial's ``hyper_params`` (the JSON NNI sent it), read as plain JSON:
    the trial's model and evaluator, also in it, are not rebuilt."""
    return json.loads(hyper_params)['parameter_id']


def fix_trial_end_reads_parameter_id() -> None:
    """``TunerCommandChannel.receive`` (``nni/runtime/tuner_command_channel/channel.py:197``) decodes a
    ``TrialEnd`` with ``load(data['hyper_params'])['parameter_id']``: ``nni.load`` rebuilds the whole
    trial parameter, i.e. the model and the evaluator with its traced arguments, to read one integer.
    When rebuilding fails in the experiment's process, e.g. a data set whose file was removed after
    the search started (so that every trial fails), the listener thread died and the strategy waited
    forever for trial ends. Only the parameter id is now read, as plain JSON (:func:`parameter_id`)."""
    def make(original):
        def receive(self):
            from nni.runtime.tuner_command_channel.command_type import CommandType, TrialEnd
            command_type, content = self._receive()
            if command_type != CommandType.TrialEnd:
                return _decode(original, self, command_type, content)
            data = json.loads(content)
            return TrialEnd(trial_job_id=data['trial_job_id'], parameter_ids=[parameter_id(data['hyper_params'])],
                            event=data['event'])
        receive.__doc__ = original.__doc__
        return receive

    patch('trial_end_reads_parameter_id', f'{_CHANNEL}:TunerCommandChannel.receive', make)


def listener_error(channel: Any) -> BaseException | None:
    """The error that stopped ``channel``'s listener thread, ``None`` while it runs (or stopped normally)."""
    return channel.__dict__.get(_FAILED) if channel is not None else None


def fix_listener_failure_stops_strategy() -> None:
    """``TunerCommandChannel.listen`` (``nni/runtime/tuner_command_channel/channel.py:63``) runs in its own
    thread in the experiment's process, decoding the manager's commands and running the engine's
    callbacks (and through them the strategy's). Any exception there ended the thread with a
    traceback on stderr and nothing else: no trial end or free worker reached the strategy again,
    and the search waited forever. Now the error is logged and kept on the channel
    (:func:`listener_error`), and the engine's next check that it is running
    (``TrainingServiceExecutionEngine._check_running``, called by ``budget_available``,
    ``submit_models``, ``list_models`` and ``wait_models``, i.e. within a second by a strategy that
    waits for a worker) raises ``RuntimeError`` naming it, so the strategy and the experiment stop."""
    def make_listen(original):
        def listen(self, stop_event):
            try:
                original(self, stop_event)
            except Exception as error:  # noqa: BLE001 - kept for the engine, which stops the strategy
                self.__dict__[_FAILED] = error
                _logger.error('The tuner command channel stopped on %s: %s; no trial result reaches the strategy '
                              'any more, so the experiment is stopped.', type(error).__name__, error)
        listen.__doc__ = original.__doc__
        return listen

    def make_check(original):
        def _check_running(self):
            error = listener_error(getattr(self, '_channel', None))
            if error is not None:
                raise RuntimeError(f'The experiment is stopped: NNI\'s tuner command channel failed on '
                                   f'{type(error).__name__}: {error}') from error
            original(self)
        return _check_running

    patch('listener_failure_stops_strategy', f'{_CHANNEL}:TunerCommandChannel.listen', make_listen)
    patch('listener_failure_stops_strategy', f'{_ENGINE}._check_running', make_check)


def take_announced_trials(channel: Any) -> list[str]:
    """The ``AddCustomizedTrialJob`` contents ``channel`` received since the last call: the trials a
    resumed NNI manager re-runs (see ``resumed_trials_rejoin_strategy``)."""
    return channel.__dict__.pop(_ANNOUNCED, []) if channel is not None else []


def load_keeping_comments(*args, **kwargs):
    """``nni.load`` with ``ignore_comments=False``: NNI never sends JSON with comments."""
    import nni
    kwargs.setdefault('ignore_comments', False)
    return nni.load(*args, **kwargs)


class _NniKeepingComments:
    """Stands in for the ``nni`` module inside the websocket connection module: everything is
    NNI's, except that ``load`` keeps "comments"."""

    load = staticmethod(load_keeping_comments)

    def __getattr__(self, name: str) -> Any:
        import nni
        return getattr(nni, name)


def fix_websocket_keep_comments() -> None:
    """``WsConnection.receive`` (``nni/runtime/command_channel/websocket/connection.py:116``) decodes
    every message with ``nni.load(msg)``, whose default ``ignore_comments=True``
    (``nni/common/serializer.py:428``) runs json_tricks' comment stripper. The stripper takes ``//``
    inside a doubly escaped string (base64 pickles of untraced evaluator arguments contain it) for a
    comment, the JSON no longer parses, the channel closes (code 4001) and reconnects, and the
    message, e.g. a ``TrialEnd``, is lost. Both decoders on the tuner channel (the websocket one and
    ``TunerCommandChannel.receive``'s ``load``) now pass ``ignore_comments=False``."""
    patch('websocket_keep_comments', 'nni.runtime.command_channel.websocket.connection:nni',
          lambda original: _NniKeepingComments())
    patch('websocket_keep_comments', f'{_CHANNEL}:load', lambda original: load_keeping_comments)
