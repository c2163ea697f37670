"""Quiet by default: ``nni-plugins --help`` and ``nni-plugins strategies`` import neither torch nor NNI,
and a search prints each message once, NNI's and Lightning's known-harmless ones only with ``--verbose``
(docs/errors.md, "Output")."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "nni", "nni.nas", "pytorch_lightning")
# The CLI as the console script runs it, reporting the heavy modules it imported on the way out.
CLI = f"""
import sys
from nni_plugins.cli import main
try:
    status = main(sys.argv[1:])
finally:
    print("imported:", sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
sys.exit(status)
"""
HARMLESS = ("Validation dataloaders are missing", "Checkpoint callback does not have last_model_path",
            "`isinstance(treespec, LeafSpec)` is deprecated", "GPU available:", "TPU available:", "💡 Tip:",
            "litlogger", "LOCAL_RANK", "is found to be not a nn.Module", "might not be supported")
SHOWN_WITH_VERBOSE = HARMLESS[:6]   # those a one-shot digits search on CPU prints


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The run, its output decoded as is (text mode would turn the progress bar's ``\\r`` into new lines)."""
    out = subprocess.run([sys.executable, "-c", CLI, *argv], cwd=ROOT, capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["strategies"]])
def test_help_and_strategies_import_neither_torch_nor_nni(argv):
    out = _cli(*argv)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "imported: []"
    assert "usage: nni-plugins" in out.stdout or "drnas" in out.stdout


def _search(tmp_path: Path, *flags: str) -> tuple[str, str]:
    out = _cli("search", "--strategy", "drnas", "--epochs", "1", "--limit", "64", "--output",
               str(tmp_path / "run"), *flags, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def _lines(text: str) -> list[str]:
    """Lines of output, without the progress bar (one line of ``\\r``-separated frames)."""
    return [line for line in text.split("\n") if line.strip() and "\r" not in line]


def _not_also_on_stdout(stdout: str, stderr: str) -> list[str]:
    """The messages logged on stderr that NNI's own handler printed on stdout as well."""
    logged = [line.split(": ", 1)[1] for line in _lines(stderr) if re.match(r"(DEBUG|INFO|WARNING|ERROR) \S+: ", line)]
    return [message for message in logged if message.strip() and message in stdout]


def test_oneshot_search_prints_each_message_once_and_harmless_ones_only_with_verbose(tmp_path):
    stdout, stderr = _search(tmp_path / "quiet")
    lines = _lines(stdout) + _lines(stderr)
    assert len(lines) == len(set(lines)), lines
    assert [line for line in lines if any(message in line for message in HARMLESS)] == []
    assert _not_also_on_stdout(stdout, stderr) == []

    stdout, stderr = _search(tmp_path / "verbose", "--verbose")
    for message in SHOWN_WITH_VERBOSE:
        assert message in stderr, message
    assert stderr.count("Validation dataloaders are missing") == 1
    assert _not_also_on_stdout(stdout, stderr) == []
