"""GOAL or NASGEM under nnictl with many trials at once: does any trial slot wait for the strategy,
and does every final metric reach it?

Runs one NNI experiment on a loopback port, in a temporary HOME / NNI_CONFIG_DIR (nothing is
written to your NNI setup): ``nni-plugins register``, ``nnictl create`` of a NAS-Bench-201 search
(``trialConcurrency`` workers, trials of examples/nnictl/trial_nb201_timed.py that "train" for
``--trial-seconds`` and report the table's accuracy), until the experiment is DONE; then
``nnictl stop``. It prints

- how long each trial slot waited for its parameters, from the tuner's own timing in
  ``dispatcher.log`` (``slot waited``: from NNI's request, several free slots being asked one after
  another, to the answer; ``call``: one ``generate_parameters`` call), as p50 / p95 / max;
- how many trials reported a final metric (NNI's REST API) and how many of those metrics the
  strategy learnt from (its ``[n] metric`` lines), with any metric the tuner had to drop.

Exit status 0 when no slot waited more than ``--max-wait-ms`` and every final metric reached the
strategy; 1 otherwise; 2 (one ``error:`` line) when the experiment could not run::

    python examples/nnictl_concurrency.py --tuner GOAL --concurrency 8 --trials 48 --trial-seconds 1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent / "nnictl"
BIN = Path(sys.executable).parent
HANDED_OUT = re.compile(r"tuner: parameters of id \S+ handed out in ([\d.]+) ms \(slot waited ([\d.]+) ms\)")
LEARNT = re.compile(r"(GOAL|NASGEM): \[\d+\] metric ")
#: ``nnictl create`` gives NNI's manager 3 s to answer; on a loaded machine it may take longer.
CREATE_ATTEMPTS = 3
LOST = ("arrived after its trial had ended", "succeeded without a final metric", "recorded as failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rest(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=30) as resp:
        return json.loads(resp.read())


class Experiment:
    """One nnictl experiment in a sandbox (HOME and NNI_CONFIG_DIR under ``root``)."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("home", "config"):
            (root / name).mkdir()
        shutil.copytree(EXAMPLES, root / "code")
        self.env = dict(os.environ, HOME=str(root / "home"), NNI_CONFIG_DIR=str(root / "config"),
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
        self.exp_id: str | None = None
        self.manager_pid: int | None = None

    def run(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run(list(args), env=self.env, cwd=self.root, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"{Path(args[0]).name} {args[1]} failed with status {proc.returncode}: {lines[-1]}")
        return proc.stdout

    def manifest(self) -> dict:
        path = self.root / "home" / "nni-experiments" / ".experiment"
        return json.loads(path.read_text()) if path.exists() else {}

    def create(self, config: Path, port: int) -> None:
        try:
            self.run(str(BIN / "nnictl"), "create", "--config", str(config), "--port", str(port))
        finally:   # what started, even if nnictl failed, is stopped by stop()
            for self.exp_id, info in self.manifest().items():
                self.manager_pid = info.get("pid")

    def log(self, name: str) -> str:
        path = self.root / "home" / "nni-experiments" / str(self.exp_id) / "log" / name
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        """Stop the experiment (if any) and kill its manager if it outlived ``nnictl stop``."""
        if self.exp_id is not None:
            subprocess.run([str(BIN / "nnictl"), "stop", self.exp_id], env=self.env, cwd=self.root,
                           capture_output=True, timeout=120)
        if self.manager_pid is not None:
            try:
                os.kill(self.manager_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.exp_id = self.manager_pid = None


def write_config(root: Path, tuner: str, concurrency: int, trials: int, seconds: float, seed: int) -> Path:
    config = root / "code" / "concurrency.yml"
    config.write_text(f"""experimentName: {tuner.lower()}-concurrency
searchSpaceFile: nb201_space.json
trialCommand: python trial_nb201_timed.py {seconds}
trialCodeDirectory: .
trialConcurrency: {concurrency}
maxTrialNumber: {trials}
tuner:
  name: {tuner}
  classArgs:
    space: nasbench201
    seed: {seed}
trainingService:
  platform: local
""")
    return config


def percentiles(ms: list[float]) -> str:
    return "/".join(f"{np.percentile(ms, q):.1f}" for q in (50, 95, 100)) if ms else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuner", default="GOAL", choices=["GOAL", "NASGEM"])
    parser.add_argument("--concurrency", type=int, default=8, help="trialConcurrency")
    parser.add_argument("--trials", type=int, default=48, help="maxTrialNumber")
    parser.add_argument("--trial-seconds", type=float, default=1.0, help="each trial's training time")
    parser.add_argument("--seed", type=int, default=0, help="the strategy's seed")
    parser.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the experiment is given up")
    parser.add_argument("--max-wait-ms", type=float, default=100.0, help="longest acceptable slot wait")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.trials < 1 or args.trial_seconds < 0:
        print("error: --concurrency and --trials must be >= 1 and --trial-seconds >= 0", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="nnictl-concurrency-"))
    experiment = Experiment(root)
    try:
        experiment.run(str(BIN / "nni-plugins"), "register")
        config = write_config(root, args.tuner, args.concurrency, args.trials, args.trial_seconds, args.seed)
        for attempt in range(CREATE_ATTEMPTS):
            port = args.port or free_port()
            started = time.time()
            try:
                experiment.create(config, port)
                break
            except RuntimeError as err:      # NNI's manager not listening within nnictl's 3 s
                experiment.stop()
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                print(f"warning: {err}; trying again", file=sys.stderr)
        while (status := rest(port, "check-status")["status"]) not in ("DONE", "ERROR", "STOPPED"):
            if time.time() - started > args.timeout:
                raise RuntimeError(f"the experiment was still {status} after {args.timeout:.0f} s")
            time.sleep(2)
        if status != "DONE":
            raise RuntimeError(f"the experiment ended as {status}: {experiment.log('dispatcher.log')[-1500:]}")
        elapsed = time.time() - started
        jobs = rest(port, "trial-jobs")
        reported = sum(1 for job in jobs if job.get("finalMetricData"))
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        dispatcher = experiment.log("dispatcher.log")
        experiment.stop()
        shutil.rmtree(root, ignore_errors=True)
    calls, slots = [], []
    for match in HANDED_OUT.finditer(dispatcher):
        calls.append(float(match.group(1)))
        slots.append(float(match.group(2)))
    learnt = len(LEARNT.findall(dispatcher))
    lost = {text: dispatcher.count(text) for text in LOST if text in dispatcher}
    print(f"{args.tuner} under nnictl: trialConcurrency {args.concurrency}, {len(jobs)} trials of "
          f"{args.trial_seconds:g} s training, DONE in {elapsed:.0f} s")
    print(f"parameter requests answered: {len(calls)}")
    print(f"slot wait ms p50/p95/max: {percentiles(slots)}   (one call: {percentiles(calls)})")
    print(f"final metrics: {reported} reported by trials, {learnt} reached the strategy"
          + (f"; lost: {lost}" if lost else ""))
    ok = bool(slots) and max(slots) <= args.max_wait_ms and learnt == reported == len(jobs) and not lost
    print("OK" if ok else f"FAILED: a slot waited more than {args.max_wait_ms:g} ms or a metric was lost")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
