"""A background analysis in a separate Python process, with progress and cancel.

Why a process and not a thread: torch holds the GIL in places and a long CPU run would make Slicer's
GUI stutter; a separate process keeps the GUI responsive, can be cancelled at any moment, and a crash
or an out-of-memory in the engine cannot take Slicer down.

Cancel stops the whole process tree: in Slicer ``PythonSlicer`` is a launcher that starts the real
Python as its child, so terminating only the launcher would leave the analysis running (and its
temporary folder deleted under it). :func:`kill_process_tree` (psutil, as Slicer's AI extensions do)
terminates the children and the launcher, kills what is left after a grace period, and only then is
the folder removed. The price is
the start-up of a Python process and the hand-over of volumes through a temporary folder (.npz).

Qt-free: the widget calls :meth:`BackgroundAnalysis.poll` from a ``qt.QTimer``; console code may call
:meth:`BackgroundAnalysis.wait`. Inside Slicer pass ``python_executable=shutil.which("PythonSlicer")``
and ``launcher=slicer.util.launchConsoleProcess`` (hides the console window on Windows).
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import transfer
from .engine import DEFAULT_ENGINE, check_options
from .outputs import check_outputs
from .worker import PREFIX

WORKER = Path(__file__).resolve().with_name("worker.py")


@dataclass
class ProgressEvent:
    fraction: Optional[float]   # 0..1, None when unknown
    stage: str


def default_sys_path() -> list:
    """Folders the worker needs on sys.path: the one holding ACATLib and the one holding ACATCore
    (found without importing ACATCore, which would import torch)."""
    paths = [str(Path(__file__).resolve().parent.parent)]
    spec = importlib.util.find_spec("ACATCore")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent.parent))
    else:  # source checkout: <repo>/ACATSlicer/ACATLib -> <repo>
        paths.append(str(Path(__file__).resolve().parents[2]))
    return list(dict.fromkeys(paths))


def kill_process_tree(pid: int, timeout: float = 5.0) -> list:
    """Stop process ``pid`` and all its descendants: terminate the children first (so the launcher
    cannot restart or wait on them), then the process; kill whatever is alive after ``timeout`` s.
    Returns the psutil processes that were stopped (for checks)."""
    import psutil
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    procs = children + [parent]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return procs


class BackgroundAnalysis:
    """One analysis of ``volume`` with ``options`` (model, device, steps, alpha, coverage);
    ``outputs``: the output groups to bring back (``ACATLib.outputs``; None: the defaults)."""

    def __init__(self, volume, options: dict, python_executable: Optional[str] = None,
                 engine: str = DEFAULT_ENGINE, launcher=None, sys_path: Optional[list] = None,
                 env: Optional[dict] = None, work_dir: Optional[str] = None, outputs=None):
        self.volume = volume
        self.options = check_options(options)
        self.outputs = list(check_outputs(outputs))
        self.python = python_executable or sys.executable
        self.engine = engine
        self.launcher = launcher
        self.sys_path = list(sys_path) if sys_path is not None else default_sys_path()
        self.env = dict(env or {})
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="ACAT-run-"))
        self.state = "new"             # new, running, done, failed, cancelled
        self.error: Optional[str] = None
        self.log: list = []
        self.fraction = 0.0
        self.stage = ""
        self.process = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = None
        self._result = None
        self._result_path = None
        self.started_at = None

    # ---------------------------------------------------------------- control
    def start(self) -> "BackgroundAnalysis":
        if self.state != "new":
            raise RuntimeError("this analysis was already started")
        input_path = self.work_dir / "input.npz"
        transfer.save_volume(self.volume, input_path)
        job = {"input": str(input_path), "output": str(self.work_dir / "result.npz"),
               "options": self.options, "outputs": self.outputs, "engine": self.engine,
               "sys_path": self.sys_path}
        job_path = self.work_dir / "job.json"
        job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
        args = [self.python, str(WORKER), str(job_path)]
        env = {"PYTHONUNBUFFERED": "1", **self.env}
        if self.launcher is not None:
            self.process = self.launcher(args, updateEnvironment=env)
        else:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                            env={**os.environ, **env})
        self._reader = threading.Thread(target=self._read, name="ACAT worker output", daemon=True)
        self._reader.start()
        self.state = "running"
        self.started_at = time.time()
        return self

    def _read(self):
        try:
            for line in self.process.stdout:
                self._lines.put(line.rstrip("\r\n"))
        except (ValueError, OSError):  # pipe closed on cancel
            pass
        finally:
            self._lines.put(None)

    def cancel(self) -> None:
        """Stop the worker and every process it started (terminate, then kill after 5 s), then
        delete the temporary folder."""
        if self.state != "running":
            return
        self.state = "cancelled"
        self.stage = "Cancelled"
        proc = self.process
        if proc is not None:
            try:
                kill_process_tree(proc.pid)
            except ImportError:  # no psutil: the launcher only (its child may outlive it)
                if proc.poll() is None:
                    proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=2)
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the temporary folder (after the result was loaded or the run ended)."""
        if self._own_dir and self.work_dir.exists() and (self.state != "done" or self._result is not None):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---------------------------------------------------------------- progress
    @property
    def elapsed_seconds(self) -> float:
        return 0.0 if self.started_at is None else time.time() - self.started_at

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def _drain(self, events: list) -> bool:
        """Move the queued lines into ``events``; True when the reader's end marker (None) was seen."""
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return ended
            if line is None:
                ended = True
                continue
            event = self._parse(line)
            if event is not None:
                events.append(event)

    def poll(self) -> list:
        """New progress events since the last call; updates ``state`` when the worker has ended."""
        events = []
        ended = self._drain(events)
        if self.state == "running" and not ended and self.process.poll() is not None:
            # The process ended: let the reader hand over its last lines (bounded wait).
            if self._reader is not None:
                self._reader.join(timeout=2)
            self._drain(events)
            ended = True
        if self.state == "running" and ended:
            code = self.process.wait()
            if self._result_path and code == 0:
                self.state = "done"
                self.fraction, self.stage = 1.0, "Done"
            else:
                self.state = "failed"
                if not self.error:
                    tail = "\n".join(self.log[-10:])
                    self.error = f"the ACAT worker process stopped with exit code {code}" + (
                        f"; its last output:\n{tail}" if tail else "")
                self.cleanup()
        return events

    def _parse(self, line: str) -> Optional[ProgressEvent]:
        if not line.startswith(PREFIX):
            self.log.append(line)
            return None
        kind, _, text = line[len(PREFIX):].partition(" ")
        if kind == "progress":
            value, _, stage = text.partition(" ")
            try:
                fraction = None if value == "-" else float(value)
            except ValueError:
                fraction, stage = None, text
            if fraction is not None:
                self.fraction = fraction
            self.stage = stage or self.stage
            return ProgressEvent(fraction, self.stage)
        if kind == "error":
            self.error = text
        elif kind == "done":
            self._result_path = text
        else:
            self.log.append(line)
        return None

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1, on_progress=None):
        """Block until the worker ends (console use); returns the result, raises on failure."""
        deadline = None if timeout is None else time.time() + timeout
        while not self.finished:
            for event in self.poll():
                if on_progress:
                    on_progress(event)
            if deadline is not None and time.time() > deadline:
                self.cancel()
                raise TimeoutError(f"ACAT analysis did not finish within {timeout} s; cancelled")
            time.sleep(interval)
        if self.state == "failed":
            raise RuntimeError(f"ACAT analysis failed: {self.error}")
        if self.state == "cancelled":
            raise RuntimeError("ACAT analysis was cancelled")
        return self.result

    @property
    def result(self):
        """The AnalysisResult (loaded on first access, then the temporary folder is deleted)."""
        if self.state != "done":
            raise RuntimeError(f"no result: the analysis is {self.state}" + (f" ({self.error})" if self.error else ""))
        if self._result is None:
            self._result = transfer.load_result(self._result_path, input_volume=self.volume)
            self.cleanup()
        return self._result
