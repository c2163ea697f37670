"""The run directory of ``nni-plugins search``: one run, its status, its lock, and interrupts (docs/runs.md).

``RUN_DIR/run.json`` records the run's ``status``:

- ``running``: a search process (``pid``) works in the directory and holds the lock ``RUN_DIR/run.lock``
  (``fcntl.flock``) until it ends. A ``running`` status whose lock nobody holds (the process was killed
  with ``kill -9``, or the machine went down) is read as ``interrupted``;
- ``complete``: the search finished its budget;
- ``failed``: it stopped on an error (``error``), and its results are not to be used;
- ``interrupted``: SIGINT or SIGTERM stopped it; ``resume`` is the command that continues it.

Besides the status: ``strategy``, ``kind`` (one-shot or multi-trial), ``started`` / ``ended`` (UTC, ISO
8601), ``progress`` (``trials_finished`` of ``trials`` with ``trials_failed`` and ``best_metric``, or
``epochs_done`` of ``epochs``; updated as the search goes) and, for
multi-trial runs, NNI's ``experiment_id`` (what a resume continues) and the NNI manager's
``manager_pid``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

__all__ = ["RUN_FILE", "LOCK_FILE", "Interrupted", "RunDir", "read_status", "check_usable", "resume_command",
           "raise_on_signals", "is_ddp_worker"]

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
#: files (and folders) a search writes; ``--overwrite`` removes them, and any of the files marks a directory
#: as holding a run (``config.yml`` and ``best_architecture.json`` alone: a run of an older version)
RUN_FILES = (RUN_FILE, "config.yml", "best_architecture.json", "trials.json")
RUN_FOLDERS = ("tensorboard", "nni-experiments", "retrain")
STATUSES = ("running", "complete", "failed", "interrupted")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a search (:func:`raise_on_signals`). A ``BaseException``, as
    ``KeyboardInterrupt`` is, so that no ``except Exception`` on the way swallows it; the CLI exits
    with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def is_ddp_worker() -> bool:
    """Whether this process is a distributed worker other than rank 0 (Lightning's DDP launcher runs the
    ``nni-plugins search`` command again in one process per extra device, with ``LOCAL_RANK`` /
    ``NODE_RANK`` set; torchrun sets ``RANK``). The run directory is rank 0's."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (once: a second
    signal while the run winds down is ignored). Lightning catches ``KeyboardInterrupt`` and calls
    ``sys.exit(1)``, and turns SIGTERM into an exit status 0; :class:`Interrupted` passes through both.
    Outside the main thread (where Python allows no signal handler) and in a distributed worker (whose
    launcher in rank 0 stops it) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread() or is_ddp_worker():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    received: list[int] = []

    def handler(signum, frame):
        if not received:  # the first signal; the search is winding down after it
            received.append(signum)
            raise Interrupted(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def resume_command(path: Path) -> str:
    return f"nni-plugins search --resume {path}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lock_holder(path: Path) -> int | None:
    """The pid of the process holding ``path/run.lock``, or ``None`` when nobody holds it."""
    lock = path / LOCK_FILE
    if not lock.is_file():
        return None
    with lock.open() as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def read_status(path: str | os.PathLike) -> dict | None:
    """``run.json`` of ``path`` (``None`` when there is none), a stale ``running`` read as ``interrupted``
    (``"stale": true``). ``ValueError`` when the file is not one ``nni-plugins search`` wrote."""
    path = Path(path)
    file = path / RUN_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); it was not written by `nni-plugins search`") from None
    if not isinstance(info, dict) or info.get("status") not in STATUSES:
        raise ValueError(f"{file} has no status of {STATUSES}; it was not written by `nni-plugins search`")
    if info["status"] == "running" and _lock_holder(path) is None:
        info.update(status="interrupted", stale=True, resume=resume_command(path))
    return info


def check_usable(path: str | os.PathLike, what: str) -> dict | None:
    """For ``export`` and ``retrain``: ``ValueError`` for a failed or still running run; a warning line on
    stderr for an interrupted one. Returns the status (``None`` for a run of an older version)."""
    import sys

    info = read_status(path)
    if info is None:
        return None
    if info["status"] == "failed":
        raise ValueError(f"'{path}' is a failed search ({info.get('error', 'no message')}); it has no result to "
                         f"{what}. Start it again with `nni-plugins search --overwrite ...`")
    if info["status"] == "running":
        raise ValueError(f"'{path}' is still being searched (pid {_lock_holder(Path(path))}); {what} it when it "
                         "has finished")
    if info["status"] == "interrupted":
        progress = ", ".join(f"{k} {v}" for k, v in sorted(info.get("progress", {}).items()))
        print(f"warning: '{path}' is an interrupted search ({progress or 'no progress recorded'}): its result is "
              f"the best so far, not the final one; continue it with `{resume_command(Path(path))}`",
              file=sys.stderr)
    return info


def _holds_run(path: Path) -> list[str]:
    return [name for name in RUN_FILES if (path / name).exists()]


class RunDir:
    """One run in directory ``path``: :meth:`check` before anything is built, :meth:`open` to take it,
    :meth:`update` and :meth:`close` to record what happened. In a distributed worker
    (:func:`is_ddp_worker`) all of them do nothing: the directory is rank 0's."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run or start it again")
        self.path = Path(path).resolve()
        self.resume = resume
        self.overwrite = overwrite
        self.previous: dict | None = None
        self.worker = is_ddp_worker()
        self._lock = None
        self._info: dict[str, Any] = {}
        self._mutex = threading.Lock()
        self._closed = False

    def check(self) -> "RunDir":
        """Refuse (``ValueError``) a directory that another process searches, one that holds a run when
        neither ``resume`` nor ``overwrite`` is set, and a resume of what cannot be resumed. Writes nothing."""
        if self.worker:
            self.previous = read_status(self.path)  # rank 0 holds it; a resume reads the same progress
            return self
        holder = _lock_holder(self.path) if self.path.is_dir() else None
        if holder is not None:
            raise ValueError(f"'{self.path}' is being searched by another process (pid {holder}); wait for it, "
                             "stop it, or choose another --output")
        self.previous = read_status(self.path) if self.path.is_dir() else None
        found = _holds_run(self.path) if self.path.is_dir() else []
        if self.resume:
            if self.previous is None:
                why = (f"it holds {', '.join(found)} but no {RUN_FILE} (a run of an older version)" if found
                       else "it holds no run")
                raise ValueError(f"cannot resume '{self.path}': {why}")
            if self.previous["status"] == "complete":
                raise ValueError(f"cannot resume '{self.path}': the run is complete; start it again with --overwrite")
        elif found and not self.overwrite:
            status = self.previous["status"] if self.previous else None
            resumable = "continue it with --resume, " if status in ("interrupted", "failed") else ""
            raise ValueError(f"'{self.path}' already holds a run{f' ({status})' if status else ''}: {', '.join(found)};"
                             f" {resumable}start it again with --overwrite, or choose another --output")
        return self

    def open(self, **info: Any) -> None:
        """Create the directory, take the lock, remove the old run's files (``overwrite``) and write
        ``run.json`` as ``running``."""
        if self.worker:
            self._info = dict(self.previous or {})
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot create the run directory: {err.strerror}", str(self.path)) from None
        lock = (self.path / LOCK_FILE).open("a+")
        for attempt in range(20):  # _lock_holder() of an `export` may hold the lock for a moment
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    lock.close()
                    raise ValueError(f"'{self.path}' is being searched by another process "
                                     f"(pid {_lock_holder(self.path)})") from None
                time.sleep(0.05)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        if self.overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                old = self.path / name
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink(missing_ok=True)
        self._info = dict(self.previous or {}) if self.resume else {}
        for key in ("error", "stale", "resume", "ended"):
            self._info.pop(key, None)
        if self.resume:
            self._info["resumed"] = self._info.get("resumed", 0) + 1
        else:
            self._info["started"] = _now()
        self._info.update(info, status="running", pid=os.getpid())
        self._write()

    @property
    def info(self) -> dict:
        return dict(self._info)

    def update(self, **info: Any) -> None:
        """Record ``info`` in ``run.json`` (from any thread: a multi-trial search records its progress from
        NNI's engine thread); ignored once the run is closed."""
        with self._mutex:
            if self._closed:
                return
            self._info.update(info)
            if not self.worker:
                self._write()

    def close(self, status: str, **info: Any) -> None:
        """Record the final ``status`` (and, for ``interrupted``, the resume command) and release the lock."""
        with self._mutex:
            self._closed = True
            self._info.update(info, status=status, ended=_now())
            if status == "interrupted":
                self._info["resume"] = resume_command(self.path)
            if self.worker:
                return
            self._write()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _write(self) -> None:
        from .runfiles import write_json  # imports torch: not for `export`

        write_json(self.path / RUN_FILE, self._info)
