"""GOAL as a multi-trial ``NasExperiment`` on NNI's ``remote`` training service, against an SSH
server on 127.0.0.1 started here (Debian's openssh-server: ``apt-get install openssh-server``),
with a generated host key and client key on a free port; trials run in separate processes launched
by NNI's remote trial keeper over SSH.

NNI's remote worker runs ``python -m pip install nni --upgrade`` on every machine
(``nni_node/training_service/remote_v3/worker.js:55``). The machine's ``python_path`` points at a
directory whose ``python`` skips exactly that command (an offline cluster must not fail on it) and
gives the "remote" user its own HOME; docs/remote.md shows the same setup for real machines.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh-keygen")),
                       reason="OpenSSH server not installed (CI installs Debian's openssh-server)"),
]

# The trial code (uploaded by NNI to the "remote" machine): a 16-architecture space and an
# evaluator whose metric is a known function of the architecture the trial really built, reported
# together with that architecture and the trial process's pid.
TRIAL_MODULE = '''
import os

import nni
import torch
from torch import nn

from nni.nas.nn.pytorch import LayerChoice, ModelSpace


class Scale(nn.Module):
    def __init__(self, code):
        super().__init__()
        self.code = code

    def forward(self, x):
        return x * (self.code + 1)


class TinySpace(ModelSpace):
    def __init__(self):
        super().__init__()
        self.a = LayerChoice([Scale(i) for i in range(4)], label="a")
        self.b = LayerChoice([Scale(i) for i in range(4)], label="b")

    def forward(self, x):
        return self.b(self.a(x))


def evaluate(model):
    out = model(torch.ones(1)).item()          # (a + 1) * (b + 1)
    arch = {"a": model.a.code, "b": model.b.code}
    nni.report_final_result({"default": out / 16.0, "arch": arch, "pid": os.getpid(),
                             "remote": os.environ.get("NNI_PLATFORM")})
'''

DRIVER = '''
import json, sys
import nni_plugins  # noqa: F401  (NNI fixes)
from nni.experiment.config import RemoteConfig, RemoteMachineConfig
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.experiment import NasExperiment
from strategies import GOAL
from remote_trial import TinySpace, evaluate

cfg = json.loads(sys.argv[1])
strategy = GOAL(n_init=2, batch_size=2, epochs=5, ensemble=1, hidden=8, ascent_steps=3, seed=0)
exp = NasExperiment(TinySpace(), FunctionalEvaluator(evaluate), strategy)
exp.config.trial_concurrency = 2
exp.config.max_trial_number = cfg["trials"]
exp.config.experiment_working_directory = cfg["workdir"]
exp.config.nni_manager_ip = "127.0.0.1"
exp.config.training_service = RemoteConfig(machine_list=[RemoteMachineConfig(
    host="127.0.0.1", port=cfg["ssh_port"], user=cfg["user"], ssh_key_file=cfg["key"], python_path=cfg["python_path"])])
try:
    exp.run(port=cfg["port"])
    print("RESULT " + json.dumps({
        "status": exp.get_status(),
        "trials": [t.status for t in exp.list_trial_jobs()],
        "metrics": [d.value for d in exp.export_data()],
        "history": [[s, m] for s, m in strategy.evaluated],
        "failed": strategy._failed,
    }))
finally:
    exp.stop()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"sshd did not listen on 127.0.0.1:{port}")


@pytest.fixture()
def ssh_server(tmp_path):
    """sshd on 127.0.0.1:<free port>, public-key login for the current user with a fresh key."""
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / name)], check=True)
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "client_key.pub").read_text())
    for path in ssh_dir.iterdir():
        path.chmod(0o600)
    port = _free_port()
    (ssh_dir / "sshd_config").write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {ssh_dir / 'host_key'}
        AuthorizedKeysFile {ssh_dir / 'authorized_keys'}
        PidFile {ssh_dir / 'sshd.pid'}
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        PermitRootLogin prohibit-password
        Subsystem sftp internal-sftp
        """))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(ssh_dir / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        yield {"port": port, "key": str(ssh_dir / "client_key"), "user": getpass.getuser()}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _python_shim(directory: Path, remote_home: Path) -> Path:
    """``python_path`` directory: ``python`` skips ``-m pip ...`` and runs this venv's Python with
    the remote user's HOME."""
    directory.mkdir()
    shim = directory / "python"
    shim.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # NNI's remote worker runs "python -m pip install nni --upgrade": offline, keep what is installed.
        if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 0; fi
        export HOME={remote_home}
        exec {sys.executable} "$@"
        """))
    shim.chmod(0o755)
    (directory / "python3").symlink_to(shim)
    return directory


def test_goal_on_remote_training_service(tmp_path, ssh_server):
    code = tmp_path / "code"          # trial_code_directory == cwd of the driver, uploaded by NNI
    code.mkdir()
    (code / "remote_trial.py").write_text(TRIAL_MODULE)
    (code / "driver.py").write_text(DRIVER)
    remote_home = tmp_path / "remote_home"
    remote_home.mkdir()
    python_path = _python_shim(tmp_path / "remote_python", remote_home)
    home = tmp_path / "home"
    home.mkdir()
    cfg = {"trials": 4, "workdir": str(tmp_path / "experiments"), "port": _free_port(),
           "ssh_port": ssh_server["port"], "user": ssh_server["user"], "key": ssh_server["key"],
           "python_path": str(python_path)}
    env = dict(os.environ, HOME=str(home), NNI_CONFIG_DIR=str(tmp_path / "nni_config"), PYTHONPATH=str(code))
    proc = subprocess.Popen([sys.executable, "driver.py", json.dumps(cfg)], cwd=code, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's session: driver, NNI manager, watchdog
        out, _ = proc.communicate()
        pytest.fail(f"remote experiment did not finish in 420 s:\n{out[-4000:]}")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["status"] == "DONE", out[-4000:]
    assert result["trials"] == ["SUCCEEDED"] * 4
    values = result["metrics"]
    assert len(values) == 4
    pids = set()
    for value in values:
        arch = value["arch"]
        assert value["default"] == pytest.approx((arch["a"] + 1) * (arch["b"] + 1) / 16)
        assert value["remote"] == "remote"
        pids.add(value["pid"])
    assert len(pids) == 4 and proc.pid not in pids, "trials did not run in processes of their own"
    # GOAL saw every trial with the metric of the architecture that trial really ran
    assert sorted(json.dumps(s, sort_keys=True) for s, _ in result["history"]) == \
        sorted(json.dumps(v["arch"], sort_keys=True) for v in values), (result["failed"], out[-4000:])
    # the remote side: the trial keeper lived under the remote user's HOME
    assert (remote_home / "nni-experiments").is_dir()
