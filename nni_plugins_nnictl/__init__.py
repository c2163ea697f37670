"""The tuner classes ``nnictl`` starts for ``tuner: {name: GOAL}`` / ``{name: NASGEM}``.

NNI's manager gives a tuner process 10 seconds to connect (``TunerCommandChannel.init`` in
``nni_node/core/tuner_command_channel.js``: "Tuner did not connect in 10 seconds"), and
``python -m nni`` (``nni/__main__.py``) imports and constructs the tuner before its
``MsgDispatcher`` connects. ``import nni_plugins.tuners`` took 6.5-8.5 s on a 2-core CPU machine
(four runs, other work on the machine), more with a cold disk cache or a busy CPU, so an
experiment could die before its first trial. Almost all of it is what the strategies need: NNI's
NAS packages, ``pytorch_lightning`` (4.9 s, torch 1.7 s of it) and ``nni`` (1.3 s) of 6.5 s
(``python -X importtime``); our own modules, :mod:`nni_compat` included, take under 0.1 s.
The classes here import only ``nni``, ``nni.tuner`` and the dispatcher module
``python -m nni`` has imported already (about 2 s): construction starts loading
:class:`nni_plugins.tuners.GOALTuner` / ``NASGEMTuner`` with the same class arguments in a
background thread and returns, the dispatcher connects, and every tuner call waits for the real
tuner and hands over to it. An error while loading (e.g. a wrong class argument) or in a call
(e.g. a search space the tuner rejects) is logged to ``dispatcher.log``, reported to NNI's manager,
which turns the experiment to ERROR at once with the message in ``nnimanager.log``, and ends the
dispatcher (:meth:`_LoadingTuner._end_experiment`): NNI's dispatcher would only log it and leave
the experiment waiting for ever.

The tuners cannot avoid that import, so this shim stays as long as the 10-second limit does.
``nni-plugins register`` registers these classes (``nni_plugins/data/nnictl_algorithms.yml``);
the class arguments are documented on the real tuners.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import nni
from nni.runtime.msg_dispatcher_base import MsgDispatcherBase
from nni.tuner import Tuner

__all__ = ["GOALTuner", "NASGEMTuner"]

_logger = logging.getLogger(__name__)


class _LoadingTuner(Tuner):
    """Hands every tuner call to ``nni_plugins.tuners.<_target>(**class_args)``, loaded in the background."""

    _target = ""

    def __init__(self, **class_args: Any) -> None:
        self._loaded = threading.Event()
        self._tuner: Tuner | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._load, args=(class_args,), daemon=True,
                         name=f"load-{self._target}").start()

    def _load(self, class_args: dict) -> None:
        try:
            from nni_plugins import tuners
            self._tuner = getattr(tuners, self._target)(**class_args)
        except BaseException as err:
            self._error = err
            _logger.exception("Cannot start nni_plugins.tuners.%s(**%r): %s", self._target, class_args, err)
        finally:
            self._loaded.set()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` of the real tuner. A tuner that could not be loaded, or an error other than
        ``NoMoreTrialError`` (the end of the search), ends the experiment (:meth:`_end_experiment`)."""
        self._loaded.wait()
        if self._error is not None:
            error = RuntimeError(f"nni_plugins.tuners.{self._target} could not be started: {self._error}")
            self._end_experiment(str(error))
            raise error from self._error
        try:
            return getattr(self._tuner, method)(*args, **kwargs)
        except nni.NoMoreTrialError:
            raise
        except BaseException as err:
            _logger.exception("%s.%s failed, ending the experiment: %s", self._target, method, err)
            self._end_experiment(f"{self._target}.{method} failed: {err}")
            raise

    @classmethod
    def _end_experiment(cls, message: str) -> None:
        """Report ``message`` to NNI's manager through the dispatcher that called the tuner, then end
        the dispatcher process (:meth:`_abort`). NNI's dispatcher only logs an exception raised by a
        tuner call (``MsgDispatcherBase.command_queue_worker``) and the experiment would stay RUNNING
        for ever; a dispatcher that just exits is noticed after the manager's 30 s reconnection wait
        (ERROR, "Dispatcher stream error, tuner may have crashed", the cause only in dispatcher.log).
        NNI's error command (``MsgDispatcherBase.report_error``) turns the experiment to ERROR at
        once and puts "Dispatcher error: <message>" in ``nnimanager.log``, which the web portal shows
        under the error's "Learn more"; the message also goes to the manager's stderr log
        (``nnictl log stderr``). The channel is then closed cleanly, so the manager reports no lost
        connection after it."""
        _logger.error("Ending the experiment: %s", message)
        print(f"Error: {message}", file=sys.stderr, flush=True)
        dispatcher = _calling_dispatcher()
        if dispatcher is not None:
            dispatcher.report_error(message)
            # the dispatcher's main thread, waiting on the channel, would log the close as a failure
            logging.getLogger("nni.runtime.command_channel.websocket.channel").disabled = True
            dispatcher._channel.disconnect()   # as NNI's MsgDispatcherBase.run() closes it
        cls._abort()

    @staticmethod
    def _abort() -> None:
        """End the dispatcher process, as a tuner that fails in its constructor does."""
        logging.shutdown()
        os._exit(1)

    def update_search_space(self, search_space: dict) -> None:
        self._call("update_search_space", search_space)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> dict:
        return self._call("generate_parameters", parameter_id, **kwargs)

    def receive_trial_result(self, parameter_id: int, parameters: dict, value: Any, **kwargs: Any) -> None:
        self._call("receive_trial_result", parameter_id, parameters, value, **kwargs)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        self._call("trial_end", parameter_id, success, **kwargs)

    def import_data(self, data: list[dict]) -> None:
        self._call("import_data", data)

    def import_running(self, parameters: list[dict]) -> None:
        self._call("import_running", parameters)

    def _on_exit(self) -> None:
        if self._loaded.is_set() and self._tuner is not None:
            self._tuner._on_exit()

    def _on_error(self) -> None:
        if self._loaded.is_set() and self._tuner is not None:
            self._tuner._on_error()


def _calling_dispatcher() -> MsgDispatcherBase | None:
    """The NNI dispatcher whose command handler is calling the tuner (``None`` outside one): NNI
    hands the tuner no reference to it, but every tuner call comes from one of its methods."""
    frame = sys._getframe(1)
    while frame is not None:
        caller = frame.f_locals.get("self")
        if isinstance(caller, MsgDispatcherBase):
            return caller
        frame = frame.f_back
    return None


class GOALTuner(_LoadingTuner):
    """:class:`nni_plugins.tuners.GOALTuner` (the GOAL strategy as an nnictl tuner), loaded in the background."""

    _target = "GOALTuner"


class NASGEMTuner(_LoadingTuner):
    """:class:`nni_plugins.tuners.NASGEMTuner` (the NASGEM strategy as an nnictl tuner), loaded in the background."""

    _target = "NASGEMTuner"
