"""Harness for tests that start real NNI experiments.

Every experiment runs in a *driver subprocess* (``python -m tests.nni_driver``) whose ``HOME`` and
``NNI_CONFIG_DIR`` point into a temporary sandbox, so the ``~/nni-experiments/.experiment``
manifest, the algorithm registry and the experiment directories never touch the real home.
The NNI manager listens on a free loopback port; every process a test starts is stopped by PID.

The search space is tiny (two 4-way ``LayerChoice``s, 16 architectures) and the metric is a
deterministic function of the architecture the trial *really ran*, which the trial reports next
to the metric, so any mix-up between trials and architectures is visible.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
import pytest
import torch
from torch import nn

import nni
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.runtime.tuner_command_channel.channel import TunerCommandChannel

REPO = Path(__file__).resolve().parents[1]
N_OPS = 4


class Op(nn.Module):
    """A candidate operation that remembers its index, so a frozen model tells which arch it is."""

    def __init__(self, code: int):
        super().__init__()
        self.code = code

    def forward(self, x):
        return x * (self.code + 1)


class TinySpace(ModelSpace):
    """Two 4-way choices: 16 architectures, sample ``{'a': i, 'b': j}``."""

    def __init__(self):
        super().__init__()
        self.a = LayerChoice([Op(i) for i in range(N_OPS)], label='a')
        self.b = LayerChoice([Op(i) for i in range(N_OPS)], label='b')

    def forward(self, x):
        return self.b(self.a(x))


def arch_metric(arch: dict) -> float:
    """Deterministic, injective metric of an architecture ``{'a': i, 'b': j}``."""
    return round((arch['a'] * N_OPS + arch['b'] + 1) / (N_OPS * N_OPS), 6)


def evaluate_model(model, sleep: float = 0.0):
    """Trial body: read the architecture the trial really runs from the frozen model, report the
    metric of that architecture together with the architecture itself."""
    arch = {'a': int(model.a.code), 'b': int(model.b.code)}
    model(torch.ones(1))
    if sleep:
        time.sleep(sleep)
    nni.report_final_result({'default': arch_metric(arch), 'arch': arch})


def train_digits(model, lr: float = 0.01, steps: int = 60):
    """Trial body: ``steps`` Adam steps on scikit-learn's digits from seeded weights, report held-out accuracy."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    for module in model.modules():                  # the weights NNI built are unseeded: redraw them
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(data.target)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, 1400, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    nni.report_final_result(acc)


class UntracedBox:
    """A non-traced evaluator argument: ``nni.dump`` pickles it to base64, which is where ``//``
    sequences come from (NNI's comment stripper then mangles the message)."""

    def __init__(self, payload: bytes):
        self.payload = payload


def evaluate_with_untraced(model, box: UntracedBox, sleep: float = 0.0):
    evaluate_model(model, sleep)


def isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """NNI writes its experiment manifest under $HOME and its registry under NNI_CONFIG_DIR; keep them
    (and the cwd) under ``root``."""
    mp.setenv("HOME", str(root / "home"))
    mp.setenv("NNI_CONFIG_DIR", str(root / "nni-config"))
    mp.chdir(root)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """:func:`isolate` in ``tmp_path``, with one torch thread (tiny models on a shared machine)."""
    isolate(monkeypatch, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScriptedChannel(TunerCommandChannel):
    """A tuner channel whose incoming commands come from a list instead of a websocket."""

    def __init__(self, commands):
        super().__init__('ws://127.0.0.1:1/tuner')   # not connected
        self._script = list(commands)

    def _receive(self):
        return self._script.pop(0)


def multi_trial_search(tmp_path: Path) -> Path:
    """Run ``nni-plugins search`` as a user would (a subprocess): NNI's RegularizedEvolution, 3 trials
    of 1 epoch on 200 digits images, one at a time on the local training service. Returns the run
    directory; asserts the search exited 0."""
    out = tmp_path / "mt"
    config = tmp_path / "mt.yml"
    config.write_text(
        "strategy: rea\nstrategy_args: {population_size: 2, sample_size: 1}\ntrials: 3\nepochs: 1\nlimit: 200\n"
        f"output: {out}\n"
        "experiment:\n  trial_concurrency: 1\n  training_service: {platform: local, use_active_gpu: false}\n")
    proc = subprocess.run([sys.executable, "-m", "nni_plugins", "search", "--config", str(config)],
                          cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return False


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    return not pid_alive(pid)


class Sandbox:
    """Isolated HOME / NNI_CONFIG_DIR / experiment dir for driver subprocesses."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.home = self.root / 'home'
        self.config_dir = self.root / 'nni_config'
        self.workdir = self.root / 'experiments'
        for d in (self.home, self.config_dir, self.workdir):
            d.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(HOME=str(self.home), NNI_CONFIG_DIR=str(self.config_dir),
                   PYTHONPATH=str(REPO) + os.pathsep + env.get('PYTHONPATH', ''),
                   PYTHONUNBUFFERED='1')
        return env

    def start_driver(self, *args: str, log_name: str = 'driver.log') -> subprocess.Popen:
        log = open(self.root / log_name, 'ab')
        proc = subprocess.Popen([sys.executable, '-m', 'tests.nni_driver', '--workdir', str(self.workdir), *args],
                                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def run_driver(self, *args: str, timeout: float = 300, log_name: str = 'driver.log') -> dict:
        """Run a driver to completion and return the JSON it wrote."""
        out = self.root / (log_name + '.json')
        proc = self.start_driver('--out', str(out), *args, log_name=log_name)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f'driver timed out; log:\n{self.log(log_name)}')
        if proc.returncode != 0 or not out.exists():
            raise AssertionError(f'driver failed (rc={proc.returncode}); log:\n{self.log(log_name)}')
        return json.loads(out.read_text())

    def log(self, name: str = 'driver.log') -> str:
        path = self.root / name
        return path.read_text(errors='replace')[-6000:] if path.exists() else ''

    def manifest(self) -> dict:
        path = self.home / 'nni-experiments' / '.experiment'
        return json.loads(path.read_text()) if path.exists() else {}

    def nnictl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'nni.tools.nnictl.nnictl', *args], cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def cleanup(self) -> None:
        """Stop every driver we started and every NNI manager recorded in this sandbox's manifest
        (by PID; the manifest is private to the sandbox)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pids = {entry.get('pid') for entry in self.manifest().values()} | set(self.manager_pids())
        for pid in pids:
            if isinstance(pid, int) and pid_alive(pid) and _is_nni_manager(pid):
                os.kill(pid, signal.SIGKILL)
                wait_dead(pid, 10)

    def manager_pids(self) -> list[int]:
        """PIDs of NNI managers serving this sandbox's experiment directory (also those a killed
        driver started but never recorded in the manifest)."""
        marker = f'--experiments-directory\0{self.workdir}\0'.encode()
        pids = []
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open(f'/proc/{entry}/cmdline', 'rb') as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if b'main.js' in cmdline and marker in cmdline:
                    pids.append(int(entry))
        return pids


def _is_nni_manager(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return b'main.js' in f.read()
    except OSError:
        return False


def rest_get(port: int, path: str):
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/v1/nni{path}', timeout=10) as resp:
        return json.loads(resp.read())
