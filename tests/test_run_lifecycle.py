"""The run directory of ``nni-plugins search`` (docs/runs.md): one run per directory, its status and lock,
refusals before anything is written, SIGINT/SIGTERM, and ``--resume`` after an interrupt or a ``kill -9``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from nni_plugins.cli import main
from nni_plugins.rundir import RunDir, read_status
from tests.nni_harness import free_port, isolated, rest_get, wait_dead  # noqa: F401 (isolated: a fixture)

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO.parent / "shared" / "data" / "cifar10_subset.npz"


pytestmark = pytest.mark.usefixtures("isolated")


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run_json(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


QUICK = ["--strategy", "darts", "--epochs", "1", "--limit", "60"]


# ---- one run per directory -------------------------------------------------------------------------------------

def test_a_directory_holds_one_run(tmp_path, capsys):
    old = tmp_path / "old"  # the result files of an older version, without run.json
    old.mkdir()
    (old / "config.yml").write_text("strategy: darts\n")
    (old / "best_architecture.json").write_text('{"sample": {"a": 1}}')
    (old / "trials.json").write_text("[]")
    assert main(["search", *QUICK, "--output", str(old)]) == 2
    assert "already holds a run: config.yml, best_architecture.json, trials.json" in _error(capsys)
    assert (old / "config.yml").read_text() == "strategy: darts\n" and not (old / "run.json").exists()
    assert main(["search", "--resume", str(old)]) == 2
    assert "no run.json (a run of an older version)" in _error(capsys)

    assert main(["search", *QUICK, "--output", str(old), "--overwrite"]) == 0
    info = _run_json(old)
    assert info["status"] == "complete" and info["progress"] == {"epochs": 1, "epochs_done": 1}
    assert not (old / "trials.json").exists()  # the old run's files are gone
    assert yaml.safe_load((old / "config.yml").read_text())["strategy"] == "darts"
    assert json.loads((old / "best_architecture.json").read_text())["complete"] is True
    capsys.readouterr()

    assert main(["search", *QUICK, "--output", str(old)]) == 2
    message = _error(capsys)
    assert "already holds a run (complete)" in message and "--resume" not in message
    assert main(["search", "--resume", str(old)]) == 2
    assert "the run is complete" in _error(capsys)
    assert main(["search", "--resume", str(old), "--overwrite"]) == 2  # argparse: not allowed together
    capsys.readouterr()

    (old / "retrain").write_text("")  # a file where the retrain directory goes
    assert main(["retrain", str(old)]) == 2
    assert "cannot create the retrain directory" in _error(capsys)


def test_a_running_search_holds_its_directory(tmp_path, capsys):
    out = tmp_path / "run"
    run = RunDir(out).check()
    run.open(strategy="darts", kind="one-shot")
    assert main(["search", *QUICK, "--output", str(out), "--overwrite"]) == 2
    assert f"being searched by another process (pid {os.getpid()})" in _error(capsys)
    assert main(["export", str(out)]) == 2
    assert "still being searched" in _error(capsys)
    assert _run_json(out)["status"] == "running"
    run.close("interrupted", progress={"epochs_done": 0, "epochs": 8})
    assert read_status(out)["status"] == "interrupted"


def test_a_ddp_worker_leaves_the_directory_to_rank_0(tmp_path, monkeypatch):
    """Lightning's DDP launcher runs the search command again per extra device (``LOCAL_RANK=1``): that
    process must neither be refused by rank 0's lock nor write the run's files (``devices: 2`` on the CLI)."""
    out = tmp_path / "run"
    rank0 = RunDir(out).check()
    rank0.open(strategy="drnas", kind="one-shot")
    monkeypatch.setenv("LOCAL_RANK", "1")
    worker = RunDir(out).check()
    worker.open(strategy="drnas", kind="one-shot")
    worker.update(progress={"epochs_done": 5})
    worker.close("failed", error="not written")
    assert _run_json(out)["status"] == "running" and "progress" not in _run_json(out)
    rank0.close("complete")


def test_a_killed_search_reads_as_interrupted(tmp_path):
    """``running`` with no process holding the lock (killed with -9): interrupted, resumable."""
    out = tmp_path / "run"
    code = ("from nni_plugins.rundir import RunDir; import os; "
            f"RunDir({str(out)!r}).check().open(strategy='darts', kind='one-shot'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    assert _run_json(out)["status"] == "running"
    info = read_status(out)
    assert info["status"] == "interrupted" and info["stale"] and info["resume"].endswith(f"--resume {out}")


def test_export_and_retrain_refuse_a_failed_run_and_warn_for_an_interrupted_one(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best_architecture.json").write_text('{"sample": {"a": 1}}')
    (out / "run.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
    for argv in (["export", str(out)], ["retrain", str(out)]):
        assert main(argv) == 2
        assert "is a failed search (ValueError: boom)" in _error(capsys)
    (out / "run.json").write_text(json.dumps({"status": "interrupted",
                                              "progress": {"trials_finished": 3, "trials": 8}}))
    assert main(["export", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["sample"] == {"a": 1}
    assert captured.err.startswith("warning: ") and "trials_finished 3" in captured.err
    assert f"nni-plugins search --resume {out}" in captured.err
    (out / "best_architecture.json").write_text("[]")
    assert main(["export", str(out)]) == 2
    assert "holds no architecture" in _error(capsys)


# ---- refused before anything is written ------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, message", [
    ("strategy: darts\nseed: 1099511627776\n", "'seed' must be at most 2**32 - 1 (the range of numpy's seeds), got"),
    ("strategy: darts\ndata_path: 123\n", "'data_path' must be a path, got 123"),
    ("strategy: darts\ndownload: 'no'\n", "'download' must be true or false, got 'no'"),
    ("strategy: darts\nseed: 1\nlimit: 60\nseed: 2\n",
     "at line 4, column 1: duplicate key 'seed' (first given at line 2)"),
    ("strategy: darts\ntrials: 4\n", "'trials' applies to multi-trial strategies, but 'darts' is one-shot"),
    ("strategy: darts\nexperiment: {trial_concurrency: 2}\n", "'experiment' applies to multi-trial strategies"),
    ("strategy: random\nexperiment: {max_experiment_duration: abc}\n",
     "'experiment.max_experiment_duration': NNI refused 'abc': Bad unit"),
    ("strategy: random\nexperiment: {trial_code_directory: 5}\n",
     "'experiment.trial_code_directory': NNI refused 5: expected str, bytes or os.PathLike object, not int"),
    ("strategy: random\nexperiment: {max_experiment_duration: -5}\n",  # NNI's assertion names the setting
     "NNI refused the experiment settings: assert self.max_experiment_duration is None"),
    (f"strategy: drnas\nspace: nasbench101-hub\ndataset: npz\ndata_path: {CIFAR_NPZ}\n",
     "space 'nasbench101-hub' cannot be searched by the one-shot strategy 'drnas': Module 'features.0' "
     "(NasBench101Cell)"),
    ("strategy: gaea\nspace: wide-cell\n", "search it with a multi-trial strategy"),
    ("strategy: darts\noverwrite: 1\n", "'overwrite' must be true or false"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "run.yml"
    config.write_text(yaml_text + f"output: {tmp_path / 'out'}\n")
    assert main(["search", "--config", str(config)]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_output_is_required_and_epochs_go_with_trials(tmp_path, capsys):
    config = tmp_path / "run.yml"
    config.write_text("strategy: random\n")
    assert main(["search", "--config", str(config)]) == 2
    assert "'output' (the run directory) is required" in _error(capsys)
    assert not (tmp_path / "runs").exists()
    # --epochs and --trials together (a multi-trial run trains each trial for --epochs)
    assert main(["search", "--config", str(config), "--trials", "3", "--epochs", "1", "--seed", str(2 ** 32),
                 "--output", str(tmp_path / "out")]) == 2
    assert "'seed' must be at most 2**32 - 1" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_resume_takes_the_run_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    run = RunDir(out).check()
    run.open(strategy="darts", kind="one-shot")
    (out / "config.yml").write_text(f"strategy: darts\nepochs: 3\nlimit: 60\noutput: {out}\n")
    run.close("interrupted", progress={"epochs_done": 0, "epochs": 3})
    assert main(["search", "--resume", str(out), "--epochs", "5", "--strategy", "darts", "--limit", "70"]) == 2
    message = _error(capsys)
    assert "--epochs 5 (the run has 3)" in message and "--limit 70 (the run has 60)" in message
    assert "--strategy" not in message
    assert main(["search", "--resume", str(out), "--config", str(out / "config.yml")]) == 2
    assert "leave out --config" in _error(capsys)
    assert main(["search", "--resume", str(tmp_path / "none")]) == 2
    assert "holds no run" in _error(capsys)


# ---- signals and resume (real subprocess runs) -----------------------------------------------------------------

def _start(tmp_path: Path, *argv: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "nni_plugins", "search", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")


def _wait_for(check, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the search ended ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _progress(out: Path, key: str) -> int:
    try:
        return _run_json(out).get("progress", {}).get(key, 0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _stopped(proc: subprocess.Popen, signum: int, timeout: float = 30) -> tuple[float, str]:
    """Send ``signum``; (seconds until the process ended, its stderr)."""
    started = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=timeout)
    return time.time() - started, err


@pytest.mark.slow
def test_one_shot_interrupt_keeps_the_last_epoch_and_resumes_from_it(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, "--strategy", "drnas", "--epochs", "6", "--limit", "120", "--output", str(out))
    _wait_for(lambda: _progress(out, "epochs_done") >= 2, 240, "two epochs", proc)
    seconds, err = _stopped(proc, signal.SIGINT)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("error", "ERROR", "Trace"))]
    assert proc.returncode == 130 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: interrupted by SIGINT (") and f"--resume {out}" in lines[0]
    assert seconds < 15
    info = _run_json(out)
    done = info["progress"]["epochs_done"]
    assert info["status"] == "interrupted" and 2 <= done < 6
    assert f"{done} of 6 epochs done" in lines[0]
    best = json.loads((out / "best_architecture.json").read_text())
    assert best["complete"] is False and best["progress"]["epochs_done"] == done and best["sample"]

    proc = _start(tmp_path, "--resume", str(out))
    bar, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    info = _run_json(out)
    assert info["status"] == "complete" and info["resumed"] == 1
    assert info["progress"] == {"epochs": 6, "epochs_done": 6, "resumed_at_epoch": done}
    # Lightning's progress bar (stdout) of the resumed fit starts at the first epoch not done (0-based: ``done``)
    epochs = [int(line.split()[1].rstrip(":")) for line in bar.replace("\r", "\n").splitlines()
              if line.startswith("Epoch ")]
    assert epochs and min(epochs) == done and max(epochs) == 5
    assert json.loads((out / "best_architecture.json").read_text())["complete"] is True


def test_one_shot_sigterm_before_the_first_epoch(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, "--strategy", "gaea", "--epochs", "5", "--limit", "600", "--output", str(out))
    _wait_for(lambda: (out / "tensorboard").exists() and _run_json(out)["status"] == "running", 240,
              "the search to start", proc)
    seconds, err = _stopped(proc, signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert "error: interrupted by SIGTERM (0 of 5 epochs done; kept no result yet" in err
    assert _run_json(out)["status"] == "interrupted" and not (out / "best_architecture.json").exists()


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _start_random_search(tmp_path: Path, out: Path, port: int, budget: int, *extra: str) -> subprocess.Popen:
    """A multi-trial search of ``budget`` random trials (1 epoch on 100 digits images) on ``port``."""
    return _start(tmp_path, "--strategy", "random", "--trials", str(budget), "--epochs", "1", "--limit", "100",
                  "--port", str(port), "--output", str(out), *extra)


def _trial_jobs(port: int) -> list[dict]:
    """The NNI manager's trial jobs; none while it is starting."""
    try:
        return rest_get(port, "/trial-jobs")
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_multi_trial_sigint_keeps_finished_trials_stops_every_process_and_resumes(tmp_path):
    out, port, budget = tmp_path / "run", free_port(), 4
    proc = _start_random_search(tmp_path, out, port, budget)

    def one_done_one_running():
        states = [t["status"] for t in _trial_jobs(port)]
        return states.count("SUCCEEDED") >= 1 and "RUNNING" in states
    _wait_for(one_done_one_running, 300, "a finished and a running trial", proc)
    processes = _descendants(proc.pid)  # the NNI manager and the trials
    assert any("main.js" in " ".join(p.cmdline()) for p in processes)
    seconds, err = _stopped(proc, signal.SIGINT, timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error")] == [err.strip().splitlines()[-1]]
    assert "error: interrupted by SIGINT (" in err and "Traceback" not in err and "RuntimeError" not in err
    assert seconds < 30
    assert all(wait_dead(p.pid, 30) for p in processes), [p.cmdline() for p in processes if p.is_running()]
    info = _run_json(out)
    finished = info["progress"]["trials_finished"]
    assert info["status"] == "interrupted" and 1 <= finished < budget
    trials = json.loads((out / "trials.json").read_text())
    best = json.loads((out / "best_architecture.json").read_text())
    assert len(trials) == finished and best["complete"] is False and best["sample"] == trials[0]["sample"]

    # resumed after a clean stop (nni_compat's viewable profile used to break this: docs/nni-compat.md)
    proc = _start(tmp_path, "--resume", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "ERROR" not in err, err[-3000:]
    samples = {json.dumps(t["sample"], sort_keys=True) for t in json.loads((out / "trials.json").read_text())}
    assert len(samples) == budget and {json.dumps(t["sample"], sort_keys=True) for t in trials} <= samples
    assert _run_json(out)["status"] == "complete"


@pytest.mark.slow
def test_multi_trial_resume_after_kill_9_loses_and_repeats_no_trial(tmp_path):
    out, port, budget = tmp_path / "run", free_port(), 4
    proc = _start_random_search(tmp_path, out, port, budget, "--config", str(_concurrency(tmp_path)))

    def finished():
        return [t for t in _trial_jobs(port) if t["status"] == "SUCCEEDED"]
    # run.json records each trial as it ends, so a killed run still says how far it got
    before = _wait_for(lambda: _progress(out, "trials_finished") >= 2 and len(finished()) >= 2 and finished(), 300,
                       "two finished trials", proc)
    manager = _run_json(out)["manager_pid"]
    os.kill(proc.pid, signal.SIGKILL)
    os.kill(manager, signal.SIGKILL)
    proc.wait()
    assert wait_dead(manager, 30)
    killed = read_status(out)
    assert killed["status"] == "interrupted"  # running, but nobody holds the lock
    assert killed["progress"]["trials_finished"] >= 2 and killed["progress"]["trials"] == budget
    assert 0 <= killed["progress"]["best_metric"] <= 1

    proc = _start(tmp_path, "--resume", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "ERROR" not in err and "Traceback" not in err, err[-3000:]
    trials = json.loads((out / "trials.json").read_text())
    samples = [json.dumps(t["sample"], sort_keys=True) for t in trials]
    assert len(samples) == budget and len(set(samples)) == budget  # the budget, no architecture twice
    kept = {json.dumps(_sample(t), sort_keys=True) for t in before}
    assert kept <= set(samples)  # nothing finished before the kill is lost
    info = _run_json(out)
    assert info["status"] == "complete" and info["resumed"] == 1
    assert info["progress"]["trials"] == info["progress"]["trials_finished"] == budget
    assert info["progress"]["trials_failed"] == 0
    assert info["progress"]["best_metric"] == max(t["metric"] for t in trials)


def _sample(rest_trial: dict) -> dict:
    import nni
    return dict(nni.load(rest_trial["hyperParameters"][0], ignore_comments=False)["parameters"].sample)


def _concurrency(tmp_path: Path) -> Path:
    config = tmp_path / "concurrency.yml"
    config.write_text("experiment: {trial_concurrency: 2}\n")
    return config


@pytest.mark.slow
def test_all_trials_failing_is_a_handled_failure(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.yml"
    config.write_text(f"strategy: random\ntrials: 2\nepochs: 1\nlimit: 100\noutput: {out}\n"
                      "experiment: {max_trial_duration: 1s}\n")
    proc = _start(tmp_path, "--config", str(config))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(("error", "ERROR"))]
    assert len(lines) == 1 and lines[0].startswith("error: none of the trials succeeded; see the trials' logs under")
    info = _run_json(out)
    assert info["status"] == "failed" and "SearchFailed" in info["error"]
    assert not (out / "best_architecture.json").exists()


def test_architecture_parameters_come_in_the_order_of_the_supernet():
    """``oneshot_arch_parameters_order`` (nni_compat): NNI's ``list(set(...))`` ordered them by object id, so a
    one-shot search resumed in a new process restored the architecture optimiser's state onto the wrong
    parameters (the resume test above failed with "The size of tensor a (2) must match ... (4)")."""
    from strategies import DrNAS
    from tests.oneshot_helpers import TinySpace, oneshot_module

    _, module = oneshot_module(DrNAS(), TinySpace())
    in_order = {}
    for m in module.supernet_modules():
        if hasattr(m, "arch_parameters"):
            in_order.update((id(p), p) for p in m.arch_parameters())
    assert [p.shape[-1] for p in in_order.values()] == [3, 2]  # 'op' (shared by two layers), then 'last'
    assert [id(p) for p in module.arch_parameters()] == list(in_order)
