"""The tuner command channel: the commands a resumed NNI manager sends, and messages the
decoders' comment stripper garbled."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .registry import patch

_logger = logging.getLogger(__name__)

_ANNOUNCED = '_nni_plugins_resumed_trials'    # channel attribute: AddCustomizedTrialJob contents
_CHANNEL = 'nni.runtime.tuner_command_channel.channel'


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
            # Hand the command already read to NNI's own decoder.
            self._receive = lambda: (command_type, content)
            try:
                return original(self)
            finally:
                del self._receive
        receive.__doc__ = original.__doc__
        return receive

    patch('tuner_channel_resume_commands', f'{_CHANNEL}:TunerCommandChannel.receive', make)


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
