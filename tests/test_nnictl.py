"""The nnictl path for real: ``nni-plugins register``, ``nnictl create`` of the examples under
examples/nnictl on a free loopback port, poll until DONE, check the results through
``nnictl experiment export`` and the REST API, stop, ``nni-plugins unregister``.

Every command runs with HOME and NNI_CONFIG_DIR in a temporary sandbox (experiment directories,
``.experiment`` manifest, algorithm registry); the NNI manager is stopped with ``nnictl stop`` and,
if still alive, killed by its PID.
"""
from __future__ import annotations

import csv
import gzip
import json
import re
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from search_spaces.nasbench201 import NB201_EDGES, NB201_OPS, sample_to_arch_str
from tests.nni_harness import free_port, pid_alive

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "nnictl"
BIN = Path(sys.executable).parent


class NnictlSandbox:
    """HOME / NNI_CONFIG_DIR in ``root``; runs nnictl and nni-plugins there."""

    def __init__(self, root: Path):
        self.root = root
        (root / "home").mkdir()
        (root / "config").mkdir()
        self.env = dict(os.environ, HOME=str(root / "home"), NNI_CONFIG_DIR=str(root / "config"),
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
        self.managers: dict[int, str] = {}      # NNI manager pid -> experiment id, for every start

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def nnictl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "nnictl"), *args, **kwargs)

    def algo_names(self) -> set[str]:
        out = self.nnictl("algo", "list").stdout
        return {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("|") and "user" in line}

    def create(self, config: Path, port: int) -> str:
        try:
            out = self.nnictl("create", "--config", str(config), "--port", str(port), timeout=180).stdout
        finally:
            self._record_managers()
        for token in out.split():
            token = token.strip().replace("\x1b[36m", "").replace("\x1b[0m", "")
            if token in self.manifest():
                return token
        raise AssertionError(f"no experiment id in nnictl output:\n{out}")

    def resume(self, exp_id: str, port: int) -> None:
        try:
            self.nnictl("resume", exp_id, "--port", str(port), timeout=180)
        finally:
            self._record_managers()

    def _record_managers(self) -> None:
        """Every live manager pid the manifest names (a resume writes the new manager's over the old one)."""
        for exp_id, info in self.manifest().items():
            if info.get("pid") and pid_alive(info["pid"]):
                self.managers[info["pid"]] = exp_id

    def manifest(self) -> dict:
        path = self.root / "home" / "nni-experiments" / ".experiment"
        return json.loads(path.read_text()) if path.exists() else {}

    def experiment_dir(self, exp_id: str) -> Path:
        return self.root / "home" / "nni-experiments" / exp_id

    def import_data(self, exp_id: str, path: Path, timeout: float = 120) -> None:
        """nnictl experiment import, again until NNI takes it. Until the tuner has connected, NNI's
        manager refuses the records ("tuner has not been setup") and nnictl prints "Import data
        failed!" with exit status 0; right after ``nnictl create`` the tuner may still be starting."""
        deadline = time.time() + timeout
        while True:
            out = self.nnictl("experiment", "import", exp_id, "--filename", str(path)).stdout
            if "Import data failed" not in out:
                assert "ERROR" not in out, out
                return
            if time.time() > deadline:
                raise AssertionError(f"nnictl experiment import kept failing for {timeout} s:\n{out}")
            time.sleep(1)

    def wait_done(self, port: int, exp_id: str, timeout: float) -> None:
        deadline = time.time() + timeout
        status = None
        while time.time() < deadline:
            status = rest(port, "check-status")
            if status["status"] in ("DONE", "ERROR", "STOPPED"):
                break
            time.sleep(2)
        if status is None or status["status"] != "DONE":
            logs = self.experiment_dir(exp_id) / "log"
            tails = {p.name: p.read_text()[-1500:] for p in logs.glob("*.log")} if logs.exists() else {}
            raise AssertionError(f"experiment {exp_id} ended as {status}, not DONE; logs: {json.dumps(tails, indent=1)}")

    def stop(self, exp_id: str, check: bool = False) -> None:
        """nnictl stop, then kill whatever manager of the experiment is still alive. nnictl stop
        sends SIGTERM and only warns if the manager outlives its 60 s wait, and a resume replaces the
        manager pid in the manifest, so both managers are tracked here (two managers of the resume
        test, the first and the resumed one, were once found alive after a test run)."""
        self.nnictl("stop", exp_id, check=check, timeout=120)
        for pid in [pid for pid, exp in self.managers.items() if exp == exp_id]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            del self.managers[pid]

    def stop_all(self) -> None:
        for exp_id in sorted(set(self.managers.values())):
            self.stop(exp_id)


def rest(port: int, path: str, data: dict | None = None, method: str | None = None):
    url = f"http://127.0.0.1:{port}/api/v1/nni/{path}"
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture()
def sandbox(tmp_path):
    box = NnictlSandbox(tmp_path)
    # the examples are copied so that nothing is written into the repository
    shutil.copytree(EXAMPLES, tmp_path / "nnictl")
    try:
        yield box
    finally:
        box.stop_all()


def _nb201_table() -> dict[str, float]:
    with gzip.open(REPO / "nni_plugins" / "data" / "nb201_cifar10.csv.gz", "rt", newline="") as f:
        return {row["arch"]: float(row["cifar10_test_acc"]) for row in csv.DictReader(f)}


def _export(box: NnictlSandbox, exp_id: str) -> list[dict]:
    path = box.root / f"{exp_id}.json"
    box.nnictl("experiment", "export", exp_id, "--type", "json", "--filename", str(path))
    return json.loads(path.read_text())


def test_register_is_idempotent_and_unregister_removes(sandbox):
    for _ in range(2):
        sandbox.run(str(BIN / "nni-plugins"), "register")
        assert {"GOAL", "NASGEM"} <= sandbox.algo_names()
    shown = json.loads(sandbox.nnictl("algo", "show", "GOAL").stdout)
    assert shown["className"] == "nni_plugins_nnictl.GOALTuner" and shown["source"] == "user"
    for _ in range(2):
        sandbox.run(str(BIN / "nni-plugins"), "unregister")
        assert not {"GOAL", "NASGEM"} & sandbox.algo_names()


def _log_time(log: str, text: str) -> datetime:
    """Time stamp of the first line of an NNI log that holds ``text``."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")


@pytest.mark.slow
def test_wrong_tuner_input_ends_the_experiment_with_the_cause_logged(sandbox):
    """The registered tuner loads the real one after connecting (NNI gives a tuner 10 s to connect).
    A wrong class argument ends the experiment as ERROR as soon as the tuner has loaded, through NNI's
    error command (not after the manager's 30 s wait for a lost dispatcher), with the cause where the
    user looks: nnimanager.log (the web portal's "Learn more"), ``nnictl log stderr`` and
    dispatcher.log. (A failing tuner call takes the same way out:
    test_registered_tuner_reports_its_error_to_the_manager_and_ends.)"""
    sandbox.run(str(BIN / "nni-plugins"), "register")
    config = sandbox.root / "nnictl" / "goal_nb201.yml"
    config.write_text(config.read_text().replace("n_init: 4", "n_init: 4\n    n_inti: 3"))
    cause = "nni_plugins.tuners.GOALTuner could not be started: GOAL tuner: unknown class argument(s) ['n_inti']"
    port = free_port()
    started = time.time()
    exp_id = sandbox.create(config, port)
    deadline = started + 120
    while (status := rest(port, "check-status"))["status"] == "RUNNING":
        assert time.time() < deadline, "the experiment kept running with a tuner that could not start"
        time.sleep(0.5)
    elapsed = time.time() - started
    assert status["status"] == "ERROR", status
    logs = sandbox.experiment_dir(exp_id) / "log"
    dispatcher, manager = (logs / "dispatcher.log").read_text(), (logs / "nnimanager.log").read_text()
    assert cause in dispatcher, dispatcher[-2000:]
    assert f"Dispatcher error: {cause}" in manager, manager[-2000:]
    assert f"Error: {cause}" in sandbox.nnictl("log", "stderr", exp_id).stdout
    reported = _log_time(manager, "Change NNIManager status from: RUNNING to: ERROR")
    assert (reported - _log_time(dispatcher, "Ending the experiment")).total_seconds() <= 2, \
        f"ERROR {elapsed:.0f} s after nnictl create, long after the tuner failed"
    assert rest(port, "trial-jobs") == []


@pytest.mark.slow
@pytest.mark.parametrize("imports_our_package", [False, True])
def test_trial_script_without_our_import_is_refused_with_what_to_add(sandbox, imports_our_package):
    """Trial 0 starts 15 s late, so trial 1 asks first and NNI hands it trial 0's parameters. A
    trial script that does not import our packages runs them: the dispatcher ends the experiment
    at that trial's end, saying what to add. With ``import nni_plugins`` every trial runs its own
    parameters, and the experiment ends DONE with every record paired right."""
    sandbox.run(str(BIN / "nni-plugins"), "register")
    workdir = sandbox.root / "nnictl"
    (workdir / "trial_plain.py").write_text(
        "import nni\n" + ("import nni_plugins\n" if imports_our_package else "") +
        "params = nni.get_next_parameter()\n"
        "nni.report_final_result({'default': 1.0, 'ran': params})\n")
    config = workdir / "goal_nb201.yml"
    config.write_text(config.read_text()
                      .replace("trialCommand: python trial_nb201.py",
                               "trialCommand: '[ \"$NNI_TRIAL_SEQ_ID\" = 0 ] && sleep 15; python trial_plain.py'")
                      .replace("maxTrialNumber: 10", "maxTrialNumber: 4"))
    port = free_port()
    exp_id = sandbox.create(config, port)
    if imports_our_package:
        sandbox.wait_done(port, exp_id, timeout=420)
        records = _export(sandbox, exp_id)
        assert len(records) == 4
        for record in records:
            value = json.loads(record["value"]) if isinstance(record["value"], str) else record["value"]
            assert value["ran"] == record["parameter"]
    else:
        deadline = time.time() + 300
        while (status := rest(port, "check-status"))["status"] == "RUNNING":
            assert time.time() < deadline, "the experiment kept running with mispaired trials"
            time.sleep(1)
        assert status["status"] == "ERROR", status
        manager = (sandbox.experiment_dir(exp_id) / "log" / "nnimanager.log").read_text()
        assert re.search(r"Dispatcher error: Trial \w+ ran the parameters of parameter id 0, but NNI recorded "
                         r"parameter id 1 for it", manager), manager[-2000:]
        assert "Add 'import nni_plugins' to the trial script" in manager
    sandbox.stop_all()


@pytest.mark.slow
def test_goal_nb201_example_reaches_done(sandbox):
    """examples/nnictl/goal_nb201.yml: 10 trials, each reporting the table's accuracy of the cell it
    ran, which is the cell NNI recorded for it (export pairs parameters and metrics correctly)."""
    sandbox.run(str(BIN / "nni-plugins"), "register")
    port = free_port()
    exp_id = sandbox.create(sandbox.root / "nnictl" / "goal_nb201.yml", port)
    sandbox.wait_done(port, exp_id, timeout=420)
    records = _export(sandbox, exp_id)
    table = _nb201_table()
    assert len(records) == 10
    archs = set()
    for record in records:
        params, value = record["parameter"], record["value"]
        value = json.loads(value) if isinstance(value, str) else value
        arch = sample_to_arch_str(params)
        assert value["default"] == pytest.approx(table[arch]) and value["arch"] == arch
        archs.add(arch)
    assert len(archs) == 10, "GOAL proposed an architecture twice"
    dispatcher = (sandbox.experiment_dir(exp_id) / "log" / "dispatcher.log").read_text()
    assert "without a final metric" not in dispatcher and "arrived after its trial had ended" not in dispatcher
    sandbox.stop_all()
    sandbox.run(str(BIN / "nni-plugins"), "unregister")
    assert not {"GOAL", "NASGEM"} & sandbox.algo_names()


@pytest.mark.slow
def test_goal_resumed_with_nnictl_goes_on_from_its_finished_trials(sandbox):
    """nnictl stop after a few trials, then nnictl resume: NNI's manager hands the finished trials to
    the new tuner (import_data), GOAL goes on from them, and no cell is trained twice. (A fresh GOAL
    with the same seed would otherwise propose its first cells again.)"""
    sandbox.run(str(BIN / "nni-plugins"), "register")
    config = sandbox.root / "nnictl" / "goal_nb201.yml"
    config.write_text(config.read_text().replace("trialConcurrency: 2", "trialConcurrency: 1"))
    port = free_port()
    exp_id = sandbox.create(config, port)
    deadline = time.time() + 300
    while len(before := [t for t in rest(port, "trial-jobs") if t["status"] == "SUCCEEDED"]) < 3:
        assert time.time() < deadline, "no three finished trials within 300 s"
        time.sleep(0.5)
    sandbox.stop(exp_id, check=True)     # the trial running now may still finish first
    before = {sample_to_arch_str(json.loads(t["hyperParameters"][0])["parameters"]) for t in before}
    port = free_port()
    sandbox.resume(exp_id, port)
    sandbox.wait_done(port, exp_id, timeout=420)
    archs = [sample_to_arch_str(r["parameter"]) for r in _export(sandbox, exp_id)]
    trials = rest(port, "trial-jobs")
    dispatcher = (sandbox.experiment_dir(exp_id) / "log" / "dispatcher.log").read_text()
    listing = [(t["sequenceId"], t["status"], sample_to_arch_str(json.loads(t["hyperParameters"][0])["parameters"])) for t in trials]
    assert len(trials) == 10 and len(archs) >= 9, listing     # one may have been cancelled by the stop
    assert before <= set(archs)
    assert len(archs) == len(set(archs)), f"a cell was trained again after the resume: {listing}\n{dispatcher}"
    imported = re.search(r"imported (\d+) finished trials, (\d+) of them new to the strategy", dispatcher)
    assert imported, dispatcher[-2000:]
    assert len(before) <= int(imported[1]) == int(imported[2]) <= len(before) + 1
    sandbox.stop_all()


@pytest.mark.slow
def test_goal_takes_results_imported_with_nnictl_experiment_import(sandbox):
    """nnictl experiment import into a running GOAL experiment: the records reach the tuner (NNI's
    import_data), join the strategy's history, and none of their cells is trained as a trial."""
    sandbox.run(str(BIN / "nni-plugins"), "register")
    config = sandbox.root / "nnictl" / "goal_nb201.yml"
    config.write_text(config.read_text().replace("trialConcurrency: 2", "trialConcurrency: 1")
                      .replace("maxTrialNumber: 10", "maxTrialNumber: 5"))
    table = _nb201_table()
    rng = random.Random(7)
    records = []
    while len(records) < 5:
        params = {edge: rng.choice(NB201_OPS) for edge in NB201_EDGES}
        if sample_to_arch_str(params) not in {sample_to_arch_str(r["parameter"]) for r in records}:
            records.append({"parameter": params, "value": table[sample_to_arch_str(params)]})
    data = sandbox.root / "results.json"
    data.write_text(json.dumps(records))
    port = free_port()
    exp_id = sandbox.create(config, port)
    sandbox.import_data(exp_id, data)
    sandbox.wait_done(port, exp_id, timeout=420)
    dispatcher = (sandbox.experiment_dir(exp_id) / "log" / "dispatcher.log").read_text()
    imported = re.search(r"imported (\d+) finished trials, (\d+) of them new to the strategy", dispatcher)
    assert imported and imported.groups() == ("5", "5"), dispatcher[-2000:]
    trials = rest(port, "trial-jobs")
    ran = {sample_to_arch_str(json.loads(t["hyperParameters"][0])["parameters"]) for t in trials}
    assert len(trials) == 5 and all(t["status"] == "SUCCEEDED" for t in trials)
    assert not ran & {sample_to_arch_str(r["parameter"]) for r in records}, "a cell imported with nnictl was trained"
    sandbox.stop_all()


@pytest.mark.slow
def test_nasgem_digits_example_trains_and_logs(sandbox):
    """examples/nnictl/nasgem_digits.yml: 6 trials that train a CNN on digits, with 5 intermediate
    and one final accuracy each; the TensorBoard directory the web portal opens holds the trial's
    event files (compat link), and the tuner's own search log is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sandbox.run(str(BIN / "nni-plugins"), "register")
    port = free_port()
    exp_id = sandbox.create(sandbox.root / "nnictl" / "nasgem_digits.yml", port)
    sandbox.wait_done(port, exp_id, timeout=540)
    records = _export(sandbox, exp_id)
    assert len(records) == 6
    configs = {json.dumps(r["parameter"], sort_keys=True) for r in records}
    assert len(configs) == 6
    for record in records:
        assert record["parameter"]["block"]["_name"] in ("conv", "pool", "identity")
        assert 0.0 <= float(record["value"]) <= 1.0
    best = max(float(r["value"]) for r in records)
    assert best > 0.3, "no trained network beat chance (0.1) on digits by a wide margin"
    trials = rest(port, "trial-jobs")
    assert len(trials) == 6 and all(t["status"] == "SUCCEEDED" for t in trials)
    exp_dir = sandbox.experiment_dir(exp_id)
    for trial in trials:
        metrics = rest(port, f"metric-data/{trial['trialJobId']}")
        assert sum(m["type"] == "PERIODICAL" for m in metrics) == 5
        assert sum(m["type"] == "FINAL" for m in metrics) == 1
        # what the TensorBoard button opens (V3asV1.getTrialOutputLocalPath + /tensorboard)
        opened = exp_dir / "trials" / trial["trialJobId"] / "output" / "tensorboard"
        acc = EventAccumulator(str(opened))
        acc.Reload()
        assert [e.step for e in acc.Scalars("val_acc")] == [0, 1, 2, 3, 4]
    # the web portal's button: the manager starts TensorBoard on that directory (stopped right away)
    task = rest(port, "tensorboard", {"trials": trials[0]["trialJobId"]})
    try:
        assert task["trialLogDirectoryList"] == [str(exp_dir / "trials" / trials[0]["trialJobId"] / "output" / "tensorboard")]
    finally:
        rest(port, f"tensorboard/{task['id']}", method="DELETE")
    search = EventAccumulator(str(exp_dir / "tensorboard" / "tuner"))
    search.Reload()
    # one point per query of the strategy: the 6 trials, plus any sample that differed from an
    # evaluated one only in an inactive sub-choice (answered with that trial's metric, no new trial)
    logged = [e.value for e in search.Scalars("trial/metric")]
    values = [float(r["value"]) for r in records]
    assert len(logged) >= 6 and all(any(v == pytest.approx(t) for t in values) for v in logged)
    assert search.Scalars("search/best_so_far")[-1].value == pytest.approx(best)
    sandbox.stop_all()
    sandbox.run(str(BIN / "nni-plugins"), "unregister")
