"""Faults of the nnictl path, injected into NNI's own dispatcher (``MsgDispatcher``) without an NNI
manager: a final metric handled after its trial's end, a trial that ran another trial's
parameters, a tuner that cannot start. Each test shows NNI's behaviour with the fix undone where
the fix is a patch of NNI (``compat.unpatched``). The same faults end to end: tests/test_nnictl.py."""
from __future__ import annotations

import logging
import re
import threading
import time

import nni
import pytest
from nni.runtime import msg_dispatcher
from nni.runtime.tuner_command_channel import CommandType
from nni.tuner import Tuner

import nni_compat as compat
from nni_compat.dispatcher import mispairing_message
from nni_plugins.tuners import GOALTuner
from tests.test_tuners import FAST_GOAL, NB201


class _Dispatcher(msg_dispatcher.MsgDispatcher):
    """NNI's dispatcher with no manager behind it (NNI connects no channel for a ``ws://_unittest_``
    URL): commands go in through ``enqueue_command`` or the handlers, and what it sends is recorded."""

    def __init__(self, tuner: Tuner):
        super().__init__("ws://_unittest_", tuner)
        self.sent: list[tuple] = []

    def send(self, command, data):
        self.sent.append((command, data))

    def new_trials(self) -> list[str]:
        return [data for command, data in self.sent if command == CommandType.NewTrialJob]

    def stop_workers(self) -> None:
        self.stopping = True
        for queue in (self.default_command_queue, self.assessor_command_queue):
            queue.put((CommandType.Ping, None))
        for worker in (self.default_worker, self.assessor_worker):
            if worker.is_alive():
                worker.join(timeout=10)


@pytest.fixture(autouse=True)
def fresh_dispatcher_state(monkeypatch):
    """NNI's dispatcher keeps its parameter ids and parameters in module globals."""
    monkeypatch.setattr(msg_dispatcher, "_next_parameter_id", 0)
    monkeypatch.setattr(msg_dispatcher, "_trial_params", {})
    monkeypatch.setattr(msg_dispatcher, "_ended_trials", set())


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _metric_behind_a_blocked_request(monkeypatch) -> list[float]:
    """GOAL through NNI's dispatcher: trials 0 and 1 run, the request for a third trial blocks in
    ``generate_parameters`` (as behind a GOAL refit), and meanwhile the manager sends trial 0's
    final metric, then its end. Returns the metrics the strategy learnt."""
    monkeypatch.setattr(msg_dispatcher, "_next_parameter_id", 0)
    tuner = GOALTuner(space="nasbench201", **FAST_GOAL)
    dispatcher = _Dispatcher(tuner)
    refit, ended, reported = threading.Event(), threading.Event(), threading.Event()
    generate, end, result = tuner.generate_parameters, tuner.trial_end, tuner.receive_trial_result

    def blocked_generate(parameter_id, **kwargs):
        if parameter_id == 2:
            refit.wait(timeout=60)
        return generate(parameter_id, **kwargs)

    monkeypatch.setattr(tuner, "generate_parameters", blocked_generate)
    monkeypatch.setattr(tuner, "trial_end", lambda *a, **kw: (end(*a, **kw), ended.set()))
    monkeypatch.setattr(tuner, "receive_trial_result", lambda *a, **kw: (result(*a, **kw), reported.set()))
    dispatcher.default_worker.start()
    dispatcher.assessor_worker.start()
    try:
        dispatcher.enqueue_command(CommandType.Initialize, NB201)
        dispatcher.enqueue_command(CommandType.RequestTrialJobs, 2)
        _wait_for(lambda: len(dispatcher.new_trials()) == 2)
        dispatcher.enqueue_command(CommandType.RequestTrialJobs, 1)
        record = dispatcher.new_trials()[0]          # trial 0's parameters, as the manager stores them
        dispatcher.enqueue_command(CommandType.ReportMetricData, {
            "parameter_id": 0, "trial_job_id": "trial0", "type": "FINAL", "sequence": 0, "value": nni.dump(0.9)})
        dispatcher.enqueue_command(CommandType.TrialEnd, {
            "trial_job_id": "trial0", "event": "SUCCEEDED", "hyper_params": record})
        assert ended.wait(timeout=60)
        refit.set()
        assert reported.wait(timeout=60)
        _wait_for(lambda: len(dispatcher.new_trials()) == 3)
        return [metric for _, metric in tuner.strategy.evaluated]
    finally:
        refit.set()
        dispatcher.stop_workers()
        tuner._on_exit()


def test_final_metric_sent_before_trial_end_reaches_the_strategy(monkeypatch, caplog):
    with compat.unpatched("final_metric_before_trial_end"):
        assert _metric_behind_a_blocked_request(monkeypatch) == []     # NNI: trial 0 failed, its metric lost
    assert "arrived after its trial had ended" in caplog.text          # ... no longer without a word
    assert _metric_behind_a_blocked_request(monkeypatch) == [pytest.approx(0.9)]


class _Recording(Tuner):
    def __init__(self):
        self.calls: list[tuple] = []

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        self.calls.append(("result", parameter_id, value))

    def trial_end(self, parameter_id, success, **kwargs):
        self.calls.append(("end", parameter_id, success))


def test_trial_that_ran_another_trials_parameters_ends_the_experiment():
    """Trial ``job`` is recorded with parameter ``recorded`` but reports metrics under ``ran`` (what
    NNI's local training service does to a trial that does not import our packages)."""
    msg_dispatcher._trial_params.update({1: {"op": "conv"}, 2: {"op": "pool"}})
    tuner = _Recording()
    dispatcher = _Dispatcher(tuner)

    def trial(job: str, ran: int, recorded: int) -> None:
        for kind in ("PERIODICAL", "FINAL"):
            dispatcher.handle_report_metric_data({"parameter_id": ran, "trial_job_id": job, "type": kind,
                                                  "sequence": 0, "value": "0.5"})
        hyper_params = nni.dump({"parameter_id": recorded, "parameter_source": "algorithm",
                                 "parameters": msg_dispatcher._trial_params[recorded], "parameter_index": 0})
        dispatcher.handle_trial_end({"trial_job_id": job, "event": "SUCCEEDED", "hyper_params": hyper_params})

    trial("a", ran=1, recorded=1)
    assert tuner.calls == [("result", 1, 0.5), ("end", 1, True)] and dispatcher.sent == []
    with compat.unpatched("mispaired_trial_ends_experiment"):
        trial("b", ran=2, recorded=1)      # NNI: accepted without a word, the portal pairs 0.5 with "conv"
    assert tuner.calls[-2:] == [("result", 2, 0.5), ("end", 1, True)] and dispatcher.sent == []
    del tuner.calls[:]
    with pytest.raises(RuntimeError, match=r"Add 'import nni_plugins' to the trial script"):
        trial("c", ran=2, recorded=1)
    assert tuner.calls == [("result", 2, 0.5)]                 # the end is not handed to the tuner
    assert dispatcher.sent == [(CommandType.Error, mispairing_message("c", 2, 1))]


@pytest.mark.parametrize("class_args, search_space, message", [
    ({"n_inti": 3}, NB201,
     r"^nni_plugins\.tuners\.GOALTuner could not be started: GOAL tuner: unknown class argument\(s\) \['n_inti'\]"),
    ({"space": "nasbench201", **FAST_GOAL}, {"lr": {"_type": "uniform", "_value": [0, 1]}},
     r"^GOALTuner\.update_search_space failed: .*accept only 'choice'"),
])
def test_registered_tuner_reports_its_error_to_the_manager_and_ends(monkeypatch, class_args, search_space, message):
    """The class nnictl starts sends the cause through the dispatcher that called it (NNI's error
    command: the manager turns the experiment to ERROR at once), closes the channel and exits."""
    import nni_plugins_nnictl

    ends = []
    monkeypatch.setattr(nni_plugins_nnictl._LoadingTuner, "_abort", staticmethod(lambda: ends.append("exit")))
    proxy = nni_plugins_nnictl.GOALTuner(**class_args)
    dispatcher = _Dispatcher(proxy)
    monkeypatch.setattr(dispatcher._channel, "disconnect", lambda: ends.append("disconnect"))
    channel_logger = logging.getLogger("nni.runtime.command_channel.websocket.channel")
    monkeypatch.setattr(channel_logger, "disabled", False)     # silenced before the close; restored here
    with pytest.raises(Exception):
        dispatcher.handle_initialize(search_space)
    [(command, sent)] = dispatcher.sent
    assert command == CommandType.Error and re.match(message, sent), sent
    assert ends == ["disconnect", "exit"]
    proxy._on_exit()
