"""Bad input and faults end in one ``error:`` line and a non-zero exit, before anything starts.

Each test drives ``nni_plugins.cli.main`` in-process (or the function that holds the check) and asserts
the one-line message and the exit status; docs/errors.md lists them.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import socket

import numpy as np
import pytest
import torch

from nni_plugins import cli
from nni_plugins.cli import main
from nni_plugins.datasets import build_datasets
from nni_plugins.evaluators import build_evaluator, check_hardware


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("error: ")
    return err[0]


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _images(n=20, dtype=np.float32):
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(dtype), np.arange(n) % 4


def _search(tmp_path, *flags) -> list[str]:
    return ["search", "--strategy", "darts", "--epochs", "1", "--output", str(tmp_path / "run"), *flags]


def _config(tmp_path, text: str) -> list[str]:
    path = tmp_path / "run.yml"
    path.write_text(text + f"\noutput: {tmp_path / 'run'}\n")
    return ["search", "--config", str(path)]


# ------------------------------------------------------------------------------------------- data at load

def test_nan_pixel_npz_is_refused_naming_file_array_and_count(tmp_path, capsys):
    x, y = _images()
    x[3, 0, 1, 1] = np.nan
    x[7, 0, 2] = np.inf  # a row of 8
    path = _npz(tmp_path / "nan.npz", x_train=x, y_train=y)
    assert main(_search(tmp_path, "--dataset", "npz", "--data-path", path)) == 2
    message = _error(capsys)
    assert f"{path}: 'x_train' has 9 NaN or infinite value(s) in 2 image(s) (first: image 3)" in message
    assert not (tmp_path / "run").exists()  # refused before the search starts


def test_test_label_outside_training_classes_is_refused(tmp_path, capsys):
    x, y = _images()
    path = _npz(tmp_path / "labels.npz", x_train=x, y_train=y, x_test=x[:4], y_test=np.array([0, 1, 9, 9]))
    assert main(_search(tmp_path, "--dataset", "npz", "--data-path", path)) == 2
    message = _error(capsys)
    assert f"{path}: 'y_test' has 2 label(s) >= 4 (largest 9)" in message and "'num_classes'" in message


@pytest.mark.parametrize("extra, message", [
    (dict(num_classes=3), "'y_train' has 5 label(s) >= 3 (largest 3), outside the classes 0..2 set by num_classes=3"),
    (dict(num_classes=np.array([4, 4])), "'num_classes' must be one integer"),
    (dict(y_train=np.zeros(20, int)), "'y_train' (largest label 0) gives 1 class; classification needs at least 2"),
    (dict(y_train=np.array([0, 10 ** 9] * 10)),
     "'y_train' (largest label 1000000000) implies 1000000001 classes, but only 2 of them occur in 'y_train'; number "
     "the classes 0..K-1, or store 'num_classes' in the file"),
])
def test_labels_against_the_number_of_classes(tmp_path, extra, message):
    x, y = _images()
    with pytest.raises(ValueError) as info:
        build_datasets("npz", path=_npz(tmp_path / "d.npz", **{"x_train": x, "y_train": y, **extra}))
    assert str(info.value).startswith(f"{tmp_path / 'd.npz'}: ") and message in str(info.value)


def test_truncated_corrupt_and_wrong_format_npz_name_the_file(tmp_path):
    x, y = _images(200, np.float64)
    np.savez_compressed(tmp_path / "ok.npz", x_train=x, y_train=y)
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read '.*truncated\.npz' as a NumPy \.npz file"):
        build_datasets("npz", path=str(tmp_path / "truncated.npz"))
    corrupt = bytearray(data)
    corrupt[2000:2100] = bytes(100)  # inside x_train's compressed bytes; the zip directory is intact
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=r"corrupt\.npz: cannot read array 'x_train'"):
        build_datasets("npz", path=str(tmp_path / "corrupt.npz"))
    np.save(tmp_path / "single.npy", x)
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(ValueError, match=r"single\.npz' holds a single \.npy array"):
        build_datasets("npz", path=str(tmp_path / "single.npz"))
    np.savez(tmp_path / "objects.npz", x_train=np.array([object()] * 4), y_train=y[:4])
    with pytest.raises(ValueError, match=r"objects\.npz: cannot read array 'x_train'.*Python objects"):
        build_datasets("npz", path=str(tmp_path / "objects.npz"))


def _png_folder(root, per_class=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_file_that_is_not_an_image_is_refused_at_load(tmp_path, capsys):
    _png_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"not an image")
    assert main(_search(tmp_path, "--dataset", "imagefolder", "--data-path", str(tmp_path / "imgs"))) == 2
    message = _error(capsys)
    assert "1 file(s) are not readable images" in message and "b/broken.png" in message


def test_imagefolder_truncated_image_names_the_file_when_read(tmp_path):
    _png_folder(tmp_path / "imgs")
    splits = build_datasets("imagefolder", path=str(tmp_path / "imgs"), augment=False)
    file = splits.train.source.folders["train"].samples[int(splits.train.indices[0])][0]
    data = open(file, "rb").read()
    open(file, "wb").write(data[:len(data) - 40])  # the cached source reads the file again
    with pytest.raises(ValueError, match=f"cannot decode image '{file}': image file is truncated"):
        splits.train[0]


# ------------------------------------------------------------------------------------------- hardware

def test_devices_99_on_cpu_is_refused_before_any_process_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(_config(tmp_path, "strategy: darts\naccelerator: cpu\ndevices: 99")) == 2
    assert _error(capsys) == ("error: 'devices' is 99, which starts 99 training processes on the CPU, but this "
                              "machine has 2 CPU core(s); use devices: 1 (or auto), at most 2")
    assert multiprocessing.active_children() == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("accelerator, needs", [
    pytest.param("tpu", "a TPU and the torch_xla package",
                 marks=pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla")),
    pytest.param("gpu", "a CUDA GPU visible to PyTorch",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")),
])
def test_accelerator_without_its_hardware(tmp_path, capsys, accelerator, needs):
    assert main(_config(tmp_path, f"strategy: darts\naccelerator: {accelerator}")) == 2
    message = _error(capsys)
    assert f"'accelerator' is '{accelerator}', which needs {needs}" in message and "accelerator: cpu" in message


@pytest.mark.parametrize("accelerator, devices, message", [
    ("quantum", "auto", "'accelerator' must be one of auto, cpu, gpu, cuda, mps, tpu, hpu, got 'quantum'"),
    ("cpu", 0, "'devices' on the CPU must be a positive number of processes (or 'auto'), got 0"),
    ("cpu", -1, "'devices' on the CPU must be a positive number of processes (or 'auto'), got -1"),
    ("cpu", [0, 1], "'devices' on the CPU must be a positive number of processes (or 'auto'), got [0, 1]"),
    ("cpu", "two", "'devices' must be 'auto', a positive number of devices"),
    ("cuda", 2, "'devices' is 2, but this machine has 1 GPU(s)"),
    ("gpu", 0, "'devices' is 0, but this machine has 1 GPU(s)"),
    ("gpu", "0,3", "'devices' '0,3' names GPU index(es) [3], but this machine has GPUs 0..0"),
])
def test_check_hardware_messages(monkeypatch, accelerator, devices, message):
    monkeypatch.setattr("nni_plugins.evaluators._accelerator_available", lambda name: name == "cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError) as info:
        check_hardware(accelerator, devices)
    assert message in str(info.value)
    check_hardware("gpu", -1)  # -1: all GPUs
    check_hardware("cuda", [0])


def test_python_api_build_evaluator_checks_hardware_too(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ValueError, match="'devices' is 99"):
        build_evaluator(build_datasets("digits", limit=20), accelerator="cpu", devices=99)


# ------------------------------------------------------------------------------------------- multi-trial settings

def test_port_that_is_taken(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["search", "--strategy", "rea", "--port", str(port), "--output", str(tmp_path / "run")]) == 2
    assert f"error: 'port' {port} is not free on this machine" in _error(capsys)


@pytest.mark.parametrize("port", [0, 65536])
def test_port_out_of_range(tmp_path, capsys, port):
    assert main(["search", "--strategy", "rea", "--port", str(port), "--output", str(tmp_path / "run")]) == 2
    assert f"error: 'port' must be an integer from 1 to 65535, got {port}" in _error(capsys)


@pytest.mark.parametrize("experiment, message", [
    ("{trial_concurrency: 0}", "'experiment.trial_concurrency' (trials run at once) must be a positive integer, got 0"),
    ("{trialConcurrency: -1}", "'experiment.trialConcurrency' (trials run at once) must be a positive integer"),
    ("{trial_gpu_number: -1}", "'experiment.trial_gpu_number' must be a non-negative integer, got -1"),
    ("{training_service: {platform: local, trial_gpu_number: GPUS}}",
     "'experiment.training_service.trial_gpu_number' is GPUS, but this machine has"),
])
def test_multi_trial_concurrency_and_gpus(tmp_path, capsys, experiment, message):
    gpus = str(torch.cuda.device_count() + 1)
    argv = _config(tmp_path, f"strategy: rea\nexperiment: {experiment.replace('GPUS', gpus)}")
    assert main(argv) == 2
    assert message.replace("GPUS", gpus) in _error(capsys)


# ------------------------------------------------------------------------------------------- files and the CLI

def test_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    assert main(_search(tmp_path)) == 2
    assert _error(capsys) == f"error: 'output' '{tmp_path / 'run'}' is a file; give a directory path for the run"


def test_output_path_that_is_not_writable(tmp_path, capsys, monkeypatch):
    (tmp_path / "locked").mkdir(mode=0o500)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # also when the tests run as root
    assert main(["search", "--strategy", "darts", "--output", str(tmp_path / "locked" / "run")]) == 2
    assert _error(capsys) == (f"error: 'output' '{tmp_path / 'locked' / 'run'}': '{tmp_path / 'locked'}' is not "
                              "writable; choose a directory you can write to")


def test_os_errors_name_the_path(tmp_path, capsys):
    (tmp_path / "best_architecture.json").write_text('{"sample": {"op": "conv"}}')
    assert main(["export", str(tmp_path), "--output", str(tmp_path)]) == 2  # a directory, not a file
    assert _error(capsys) == f"error: '{tmp_path}': Is a directory"
    (tmp_path / "bad.yml").write_bytes(b"strategy: \xff\xfe\n")
    assert main(["search", "--config", str(tmp_path / "bad.yml")]) == 2
    assert "is not UTF-8 text" in _error(capsys)


def test_nni_config_assertion_is_one_line(monkeypatch, capsys):
    def nni_rejects(args):
        from nni.experiment.config import ExperimentConfig
        config = ExperimentConfig("local")
        config.trial_command, config.trial_concurrency, config.search_space = "x", 0, {}
        config.validate()

    monkeypatch.setattr(cli, "_cmd_strategies", nni_rejects)
    assert main(["strategies"]) == 2
    assert _error(capsys) == ("error: NNI refused the experiment settings: assert self.trial_concurrency > 0 "
                              "(experiment_config.py)")


def test_lightning_misconfiguration_is_one_line(monkeypatch, capsys):
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    def lightning_rejects(args):
        raise MisconfigurationException("`Trainer(strategy='ddp')` needs\n more than one device")

    monkeypatch.setattr(cli, "_cmd_strategies", lightning_rejects)
    assert main(["strategies"]) == 2
    assert _error(capsys) == "error: `Trainer(strategy='ddp')` needs more than one device"


def test_unexpected_exception_is_one_line_exit_1_and_verbose_shows_traceback(monkeypatch, capsys):
    def bug(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "_cmd_strategies", bug)
    assert main(["strategies"]) == 1
    assert _error(capsys) == ("error: unexpected TypeError: unsupported operand (a bug in nni-plugins or below; "
                              "run with --verbose for the traceback)")
    for argv in (["--verbose", "strategies"], ["strategies", "-v"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == "Traceback (most recent call last):" and err[-2] == "TypeError: unsupported operand"
        assert err[-1] == "error: unexpected TypeError: unsupported operand (a bug in nni-plugins or below)"


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_strategies", interrupted)
    assert main(["strategies"]) == 130
    assert _error(capsys) == "error: interrupted"


# ------------------------------------------------------------------------------------------- audit: more kinds
# Kinds found CLEAR by the bad-input audit (/tmp/audit/run_audit.py) and not tested above or elsewhere.

def _yaml(tmp_path, text: str) -> list[str]:
    """A config file holding exactly ``text`` (no output appended)."""
    path = tmp_path / "exact.yml"
    path.write_text(text)
    return ["search", "--config", str(path)]


@pytest.mark.parametrize("argv, message", [
    (["search", "--epochs", "abc", "--output", "x"], "error: nni-plugins search: argument --epochs: invalid int value: 'abc'"),
    (["search", "--strategy", "rea", "--trials", "2.5", "--output", "x"],
     "error: nni-plugins search: argument --trials: invalid int value: '2.5'"),
    (["search", "--batch-size", "abc", "--output", "x"], "error: nni-plugins search: argument --batch-size: invalid int value: 'abc'"),
    (["search", "--seed", "abc", "--output", "x"], "error: nni-plugins search: argument --seed: invalid int value: 'abc'"),
    (["search", "--port", "abc", "--output", "x"], "error: nni-plugins search: argument --port: invalid int value: 'abc'"),
    (["benchmark", "--checkpoints", "a,b", "--output", "x"],
     "error: nni-plugins benchmark: argument --checkpoints: expected comma-separated integers, got 'a,b'"),
    ([], "error: nni-plugins: the following arguments are required: command"),
])
def test_flag_values_of_the_wrong_type_name_the_flag_and_value(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert _error(capsys) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "drnas", "--epochs", "-1"], "error: 'epochs' must be a positive integer, got -1"),
    (["--strategy", "rea", "--trials", "0"], "error: 'trials' must be a positive integer, got 0"),
    (["--strategy", "rea", "--trials", "-3"], "error: 'trials' must be a positive integer, got -3"),
    (["--strategy", "drnas", "--batch-size", "0"], "error: 'batch_size' must be a positive integer, got 0"),
    (["--strategy", "drnas", "--limit", "1"], "error: 'limit' must be an integer >= 2, got 1"),
    (["--strategy", "drnas", "--limit", "-5"], "error: 'limit' must be an integer >= 2, got -5"),
])
def test_search_numbers_out_of_range_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    assert main(["search", *flags, "--output", str(tmp_path / "run")]) == 2
    assert _error(capsys) == message
    assert not (tmp_path / "run").exists()


def test_empty_output_flag_is_refused(capsys):
    assert main(["search", "--strategy", "drnas", "--output", ""]) == 2
    assert _error(capsys) == "error: --output DIR is required (or give it in --config)"


def test_output_that_is_a_device_file(capsys):
    assert main(["search", "--strategy", "drnas", "--output", "/dev/null"]) == 2
    assert _error(capsys) == "error: 'output' '/dev/null' is a file; give a directory path for the run"


@pytest.mark.parametrize("text, message", [
    ("strategy: 5\n", "error: Unknown strategy 5; choose one of: random, rea"),
    ("strategy: drnas\nstrategy_args: [1, 2]\n", "error: 'strategy_args' must be a mapping, got [1, 2]"),
    ("strategy: drnas\nspace_args: C=16\n", "error: 'space_args' must be a mapping, got 'C=16'"),
    ("strategy: rea\nexperiment: [1, 2]\n", "error: 'experiment' must be a mapping, got [1, 2]"),
    ("strategy: drnas\nlimit: '64'\n", "error: 'limit' must be an integer >= 2, got '64'"),
    ("strategy: drnas\nlimit: 2.5\n", "error: 'limit' must be an integer >= 2, got 2.5"),
    ("strategy: drnas\nepochs: '3'\n", "error: 'epochs' must be a positive integer, got '3'"),
    ("strategy: rea\ntrials: 2.5\n", "error: 'trials' must be a positive integer, got 2.5"),
    ("strategy: drnas\nbatch_size: true\n", "error: 'batch_size' must be a positive integer, got True"),
    ("strategy: drnas\nseed: '0'\n", "error: 'seed' must be an integer, got '0'"),
    ("strategy: drnas\noutput: 5\n", "error: 'output' must be a directory path, got 5"),
    ("strategy: drnas\noutput: [a, b]\n", "error: 'output' must be a directory path, got ['a', 'b']"),
    ("strategy: drnas\nEpochs: 1\noutput: x\n", "error: Unknown key(s) ['Epochs'] in "),
    ("strategy: random\ntrials: 2\nstrategy_args: {seed: -1}\noutput: x\n",
     "error: 'strategy_args.seed': give the seed as the top-level 'seed' (--seed)"),
])
def test_yaml_values_of_the_wrong_type_name_the_key_and_value(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    assert main(_yaml(tmp_path, text)) == 2
    assert _error(capsys).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exact.yml"]  # nothing written


def test_config_that_is_a_directory(tmp_path, capsys):
    assert main(["search", "--config", str(tmp_path)]) == 2
    assert _error(capsys) == f"error: Config file '{tmp_path}' is a directory"


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "error: seed must be a non-negative integer, got -1"),
    (["--data-path", "x.npz"], "error: path is only used by the 'npz' and 'imagefolder' data sets, not by 'digits'"),
    (["--data-root", "."], "error: root is only used by the 'cifar10' and 'cifar100' data sets, not by 'digits'"),
    (["--download"], "error: download is only possible for 'cifar10' and 'cifar100', not for 'digits'"),
    (["--dataset", "npz"], "error: data set 'npz' needs path to an .npz file (path= in Python, --data-path on the "
                           "command line, data_path in a YAML config)"),
    (["--dataset", "imagefolder"], "error: data set 'imagefolder' needs path to a directory"),
    (["--space", "nasbench201-hub"], "error: Model space 'nasbench201-hub' is built for 3x32x32 images, but the data "
                                     "set gives 1x8x8; pick a 32x32 RGB data set"),    (["--strategy", "tpe", "--trials", "2"], "error: strategy 'tpe' cannot search model space 'digits': "),
])
def test_data_set_and_space_flags_that_do_not_fit(tmp_path, capsys, flags, message):
    assert main(["search", "--strategy", "drnas", "--epochs", "1", "--limit", "64", *flags,
                 "--output", str(tmp_path / "run")]) == 2
    assert _error(capsys).startswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("dataset: [npz]\n", "error: unknown data set ['npz']; choose one of digits, cifar10, cifar100, imagefolder, npz"),
    ("space_args: {bogus: 1}\n", "error: Model space 'digits' does not take option(s) ['bogus']; it takes channels: "
                                 "int = 16, num_nodes: int = 3, num_cells: int = 2"),
    ("space: nasbench201\nspace_args: {C: -4, N: 1}\n",
     "error: Model space 'nasbench201': space_args C must be an integer >= 1, got -4"),
    ("evaluator: 3\n", "error: unknown evaluator kind 3; choose one of search, classification"),
])
def test_yaml_data_space_and_evaluator_settings(tmp_path, capsys, text, message):
    assert main(_config(tmp_path, "strategy: drnas\nepochs: 1\nlimit: 64\n" + text)) == 2
    assert _error(capsys).startswith(message)


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.array(["a"] * 20)), "'x_train' must hold uint8 or float images, got dtype <U1"),
    (dict(x_train=np.zeros((1, 1, 8, 8), np.float32), y_train=np.array([0])), "'x_train' needs at least 2 images, got 1"),
    (dict(x_train=np.zeros((0, 1, 8, 8), np.float32), y_train=np.zeros(0, int)), "'x_train' needs at least 2 images, got 0"),
    (dict(x_test=np.zeros((4, 3, 8, 8), np.float32), y_test=np.arange(4)),
     "test images have shape (3, 8, 8) (C, H, W) but training images (1, 8, 8)"),
])
def test_npz_contents_refused_at_the_cli_name_the_file(tmp_path, capsys, arrays, message):
    x, y = _images()
    path = _npz(tmp_path / "d.npz", **{"x_train": x, "y_train": y, **arrays})
    assert main(_search(tmp_path, "--dataset", "npz", "--data-path", path)) == 2
    assert _error(capsys) == f"error: {path}: {message}"
    assert not (tmp_path / "run").exists()


def test_npz_path_that_is_not_an_npz_archive_says_what_it_is(tmp_path, capsys):
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "text.npz").write_text("x_train,y_train\n0,1\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    expected = {
        "dir.npz": f"error: npz path '{tmp_path / 'dir.npz'}' is a directory; give the .npz file",
        "text.npz": f"error: '{tmp_path / 'text.npz'}' is not a NumPy .npz archive (it starts with b'x_trai'; an "
                    ".npz file is a zip archive written by numpy.savez(",
        "empty.npz": f"error: '{tmp_path / 'empty.npz'}' is not a NumPy .npz archive (it is empty;",
    }
    for name, message in expected.items():
        assert main(_search(tmp_path, "--dataset", "npz", "--data-path", str(tmp_path / name))) == 2
        error = _error(capsys)
        assert error.startswith(message) and "pickle" not in error, error
    assert not (tmp_path / "run").exists()


def test_imagefolder_with_one_class_names_the_folder(tmp_path, capsys):
    _png_folder(tmp_path / "imgs")
    for image in (tmp_path / "imgs" / "b").iterdir():
        image.unlink()
    (tmp_path / "imgs" / "b").rmdir()
    assert main(_search(tmp_path, "--dataset", "imagefolder", "--data-path", str(tmp_path / "imgs"))) == 2
    assert _error(capsys) == (f"error: image folder '{tmp_path / 'imgs'}' has 1 class sub-directory ['a']; "
                              "classification needs at least 2 (one sub-directory of images per class)")


def test_limit_above_the_number_of_training_images(tmp_path, capsys):
    x, y = _images()
    path = _npz(tmp_path / "d.npz", x_train=x, y_train=y)
    assert main(_search(tmp_path, "--dataset", "npz", "--data-path", path, "--limit", "21")) == 2
    assert _error(capsys) == (f"error: limit is 21, but data set 'npz' ({path}) has 20 training images; use at "
                              "most 20, or leave limit out to use them all")
    assert main(_search(tmp_path, "--limit", "5000")) == 2
    assert _error(capsys).startswith("error: limit is 5000, but data set 'digits' has 1438 training images")
    assert not (tmp_path / "run").exists()
    splits = build_datasets("npz", path=path, limit=20)   # all of them is fine
    assert len(splits.train) + len(splits.val) == 20


def test_imagefolder_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "imgs").write_text("x")
    assert main(_search(tmp_path, "--dataset", "imagefolder", "--data-path", str(tmp_path / "imgs"))) == 2
    assert _error(capsys) == f"error: image folder '{tmp_path / 'imgs'}' does not exist or is not a directory"


@pytest.mark.parametrize("strategy, args, message", [
    ("drnas", "{reg_scal: 1}", "error: Invalid arguments for strategy 'drnas': ['reg_scal']; it accepts ["),
    ("drnas", "{warmup_epochs: -1}", "error: DrNAS: warmup_epochs must be >= 0, got -1"),
    ("drnas", "{arc_learning_rate: '1e-3'}",
     "error: Invalid arguments for strategy 'drnas': DrNAS: arc_learning_rate must be a finite number > 0, got '1e-3'"),
    ("gaea", "{sparsity_thresh: 0.1}", "error: Invalid arguments for strategy 'gaea': ['sparsity_thresh']; it accepts ["),
    ("gaea", "{sparsity_threshold: 1.0}", "error: GAEA: sparsity_threshold must be in [0, 1), got 1.0"),
    ("tetlo", "{taux: 1}", "error: Invalid arguments for strategy 'tetlo': ['taux']; it accepts ["),
    ("tetlo", "{tau: 0}", "error: TETLO: tau must be > 0, got 0"),
    ("goal", "{n_inti: 3}", "error: Invalid arguments for strategy 'goal': ['n_inti']; it accepts ["),
    ("goal", "{top_k: -1}", "error: GOAL: top_k must be >= 0, got -1"),
    ("nasgem", "{n_init: 3}", "error: Invalid arguments for strategy 'nasgem': ['n_init']; it accepts ["),
    ("nasgem", "{holdout_fraction: 0.6}", "error: NASGEM: holdout_fraction must be in [0, 0.5], got 0.6"),
    ("rea", "{popsize: 4}", "error: Invalid arguments for strategy 'rea': ['popsize']; it accepts ["),
    ("tpe", "{bogus: 1}", "error: Invalid arguments for strategy 'tpe': ['bogus']; it accepts ["),
])
def test_strategy_args_through_the_cli_are_one_line_before_anything_is_written(tmp_path, capsys, strategy, args, message):
    assert main(_config(tmp_path, f"strategy: {strategy}\nepochs: 1\nlimit: 64\nstrategy_args: {args}")) == 2
    assert _error(capsys).startswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("strategy, args, message", [
    ("darts", {"arc_learning_rate": -1}, "DARTS: arc_learning_rate must be > 0, got -1"),
    ("darts", {"arc_learning_rate": "1e-3"}, "Invalid arguments for strategy 'darts': DARTS: arc_learning_rate must be "
                                             "a finite number > 0, got '1e-3'"),
    ("darts", {"gradient_clip_val": 0}, "DARTS: gradient_clip_val must be > 0, got 0"),
    ("darts", {"warmup_epochs": -2}, "DARTS: warmup_epochs must be >= 0, got -2"),
    ("darts", {"mutation_hooks": ["x"]}, "DARTS: mutation_hooks must be a list of callables or None, got ['x']"),
    ("proxyless", {"log_prob_every_n_step": 0}, "Proxyless: log_prob_every_n_step must be >= 1, got 0"),
    ("gumbel-darts", {"temperature": [0.1, 1.0]},
     "GumbelDARTS: temperature must be a number > 0, a pair [start, end] or a mapping {init: start, min: end} with "
     "start >= end > 0, got [0.1, 1.0]"),
    ("gumbel-darts", {"temperature": 0}, "GumbelDARTS: temperature must be a number > 0"),
    ("rea", {"population_size": 0}, "RegularizedEvolution: population_size must be >= 1, got 0"),
    ("rea", {"population_size": 3}, "RegularizedEvolution: sample_size must be <= population_size (3), got 5"),
    ("rea", {"mutation_prob": 1.5}, "RegularizedEvolution: mutation_prob must be in [0, 1], got 1.5"),
    ("rea", {"crossover": "yes"}, "RegularizedEvolution: crossover must be True or False, got 'yes'"),
    ("random", {"seed": -1}, "Random: seed must be in [0, 4294967295], got -1"),
    ("random", {"dedup": 1}, "Random: dedup must be True or False, got 1"),
    ("random", {"engine": 1}, "Invalid arguments for strategy 'random': ['engine']; it accepts ['dedup', 'seed']"),
    ("tpe", {"optimize_mode": "max"}, "TPE: optimize_mode must be one of ('maximize', 'minimize'), got 'max'"),
    ("tpe", {"tpe_args": {"gamma": 0}}, "TPE: tpe_args.gamma must be > 0, got 0"),
    ("tpe", {"tpe_args": {"n_startup": 5}}, "TPE: unknown tpe_args key 'n_startup'; it accepts constant_liar_type, "),
    ("tpe", {"tpe_args": {"constant_liar_type": "best-ish"}}, "TPE: tpe_args.constant_liar_type must be one of"),
    ("random-oneshot", {"filter": 3}, "RandomOneShot: filter must be a mapping of ProfilerFilter's arguments, a "
                                      "callable on a sample or None, got 3"),
])
def test_nni_strategies_arguments_are_checked_naming_strategy_and_argument(strategy, args, message):
    from nni_plugins.registry import make_strategy
    with pytest.raises(ValueError) as info:
        make_strategy(strategy, **args)
    assert message in str(info.value)


def test_nni_strategies_good_arguments_still_pass():
    from nni_plugins.registry import make_strategy
    assert make_strategy("gumbel-darts", temperature=[2, 1]).temperature == (2.0, 1.0)  # a YAML list works
    assert make_strategy("gumbel-darts", temperature={"init": 1, "min": 0.5}).temperature == (1.0, 0.5)
    assert make_strategy("rea", population_size=4, sample_size=4, mutation_prob=0).sample_size == 4
    tpe = make_strategy("tpe", seed=1, tpe_args={"n_startup_jobs": 0, "constant_liar_type": None})
    assert tpe.tuner.args.n_startup_jobs == 0


def test_nni_strategy_argument_through_the_cli(tmp_path, capsys):
    assert main(_config(tmp_path, "strategy: darts\nepochs: 1\nlimit: 64\nstrategy_args: {arc_learning_rate: -1}")) == 2
    assert _error(capsys) == "error: DARTS: arc_learning_rate must be > 0, got -1"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("space, args, message", [
    ("digits", {"chanels": 8}, "Model space 'digits' does not take option(s) ['chanels']; it takes channels: int = 16, "
                               "num_nodes: int = 3, num_cells: int = 2"),
    ("digits", {"channels": "8"}, "Model space 'digits': space_args channels must be an integer >= 1, got '8'"),
    ("digits", {"num_classes": 3}, "Model space 'digits': space_args ['num_classes'] are set from the data set (the "
                                   "number of classes); leave them out"),
    ("nasbench201", {"affine": "no"}, "Model space 'nasbench201': space_args affine must be true or false, got 'no'"),
    ("wide-cell", {"ops": 5}, "Model space 'wide-cell' cannot use space_args ops=5 ('int' object is not iterable); "
                              "it takes num_nodes: int = 30, channels: int = 8, num_cells: int = 2, ops: "),
    ("nasbench201-hub", {"stem_out_channels": "a"},
     "Model space 'nasbench201-hub': space_args stem_out_channels must be an integer >= 1, got 'a'"),
    ("nasbench201-hub", {"stem_out_chanels": 8}, "Model space 'nasbench201-hub' does not take option(s) "
                                                 "['stem_out_chanels']; it takes stem_out_channels: int = 16, "
                                                 "num_modules_per_stack: int = 5"),
    ("darts-hub", {"width": [16, 0]}, "Model space 'darts-hub': space_args width must be an integer >= 1 or a list of "
                                      "them (the choices), got [16, 0]"),
    ("darts-hub", {"dataset": "mnist"}, "Model space 'darts-hub': space_args dataset must be one of ['cifar', "
                                        "'imagenet'], got 'mnist'"),
    ("darts-hub", {"drop_path_prob": 1.0}, "Model space 'darts-hub': space_args drop_path_prob must be a number in "
                                           "[0, 1), got 1.0"),
    ("nasbench101-hub", {"max_num_vertices": 1}, "Model space 'nasbench101-hub': space_args max_num_vertices must be "
                                                 "an integer >= 2 (the cell's input and output), got 1"),
])
def test_space_args_unknown_option_and_bad_value_are_told_apart(space, args, message):
    from nni_plugins.spaces import build_space
    shape = (1, 8, 8) if space in ("digits", "nasbench201", "wide-cell") else (3, 32, 32)
    with pytest.raises(ValueError) as info:
        build_space(space, 10, shape, **args)
    assert str(info.value).startswith(message), str(info.value)


def test_tpe_refuses_a_space_with_multi_select_choices():
    from nni_plugins.registry import check_strategy_space
    from nni_plugins.spaces import build_space
    digits = build_space("digits", 10, (1, 8, 8))   # InputChoice: NNI's TPE failed after the run had started
    with pytest.raises(ValueError) as info:
        check_strategy_space("tpe", "digits", digits)
    assert str(info.value).startswith("strategy 'tpe' cannot search model space 'digits': NNI's TPE searches through "
                                      "its HPO tuner, whose search-space format has no multi-select choice, and the "
                                      "space has 4: 'cell0/node2/input' (CategoricalMultiple), ")
    check_strategy_space("tpe", "nasbench201", build_space("nasbench201", 10, (1, 8, 8)))
    check_strategy_space("random", "digits", digits)


@pytest.mark.parametrize("experiment, message", [
    ("{training_service: {platform: foo}}", "error: Unknown training service platform 'foo'"),
    ("{training_service: local}", "error: 'experiment.training_service' must be a mapping with a 'platform' key"),
    ("{training_service: {platform: remote}}", "error: RemoteConfig: machine_list is not set"),
    ("{bogus_setting: 1}", "error: Unknown NNI experiment setting 'bogus_setting' under 'experiment'"),
    ("{trial_concurrency: '2'}", "error: 'experiment.trial_concurrency' (trials run at once) must be a positive integer, got '2'"),
    ("{max_trial_number: 0}", "error: NNI refused the experiment settings: assert self.max_trial_number is None or "
                              "self.max_trial_number > 0 (experiment_config.py)"),
    ("{log_level: chatty}", "error: NNI refused the experiment settings: assert self.log_level in ["),
])
def test_nni_experiment_settings_through_the_cli(tmp_path, capsys, experiment, message):
    text = f"strategy: rea\nepochs: 1\ntrials: 2\nlimit: 64\nexperiment: {experiment}"
    assert main(_config(tmp_path, text)) == 2
    assert _error(capsys).startswith(message)
    assert not (tmp_path / "run" / "best_architecture.json").exists()


@pytest.mark.parametrize("content, message", [
    (None, "is not a finished `nni-plugins search` run: {run}/best_architecture.json is missing"),
    ('{"sample": ', "{run}/best_architecture.json is not valid JSON: Expecting value: line 1 column 12 (char 11)"),
    ("", "{run}/best_architecture.json is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
])
def test_export_of_a_directory_that_is_not_a_finished_run(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "best_architecture.json").write_text(content)
    assert main(["export", str(tmp_path)]) == 2
    assert message.format(run=tmp_path) in _error(capsys)
    assert capsys.readouterr().out == ""


def test_export_output_into_a_missing_directory_names_it(tmp_path, capsys):
    (tmp_path / "best_architecture.json").write_text('{"sample": {"op": "conv"}}')
    target = tmp_path / "no" / "such" / "a.json"
    assert main(["export", str(tmp_path), "--output", str(target)]) == 2
    assert _error(capsys) == f"error: '{target}': No such file or directory"


@pytest.mark.parametrize("flags, message", [
    (["--strategies", "nope"], "error: Unknown strategy 'nope'; choose one of"),
    (["--strategies", "drnas"], "error: Strategy 'drnas' is one-shot; the table benchmark runs multi-trial strategies only"),
    (["--strategies", "random,random"], "error: strategies lists a name twice: ['random', 'random']"),
    (["--seeds", "-1"], "error: seeds must be an integer >= 1, got -1"),
    (["--budget", "0"], "error: budget must be an integer >= 1, got 0"),
    (["--budget", "100000"], "error: budget 100000 exceeds the 15625 cells of table"),
    (["--column", "nope"], "error: Unknown column 'nope' in NAS-Bench-201 table"),
    (["--checkpoints=-5"], "error: checkpoint must be an integer >= 1, got -5"),
    (["--concurrency", "0"], "error: concurrency must be an integer >= 1, got 0"),
    (["--table", "TMP/none.csv"], "error: Cannot read NAS-Bench-201 table 'TMP/none.csv': [Errno 2] No such file"),
    (["--table", "TMP"], "error: Cannot read NAS-Bench-201 table 'TMP': [Errno 21] Is a directory"),
])
def test_benchmark_flags_through_the_cli(tmp_path, capsys, flags, message):
    flags = [f.replace("TMP", str(tmp_path)) for f in flags]
    argv = ["benchmark", "--strategies", "random", "--seeds", "1", "--budget", "5", "--checkpoints", "5",
            "--output", str(tmp_path / "out"), *flags]
    assert main(argv) == 2
    assert _error(capsys).startswith(message.replace("TMP", str(tmp_path)))
    assert not (tmp_path / "out" / "benchmark.csv").exists()


def test_register_and_unregister_twice_succeed_and_a_corrupt_registry_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NNI_CONFIG_DIR", str(tmp_path))
    for _ in range(2):
        assert main(["register"]) == 0
        assert capsys.readouterr().out.startswith("registered tuners GOAL, NASGEM in ")
    assert main(["unregister"]) == 0
    assert capsys.readouterr().out.startswith("unregistered GOAL, NASGEM from ")
    assert main(["unregister"]) == 0
    assert capsys.readouterr().out == "nothing to unregister\n"
    (tmp_path / "registered_algorithms.yml").write_text("tuners: [\n")
    assert main(["register"]) == 2
    assert f"{tmp_path / 'registered_algorithms.yml'}\", line 2, column 1" in _error(capsys)
