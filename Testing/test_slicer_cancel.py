"""Cancel stops the whole process tree of a background run.

In Slicer the worker is started with ``PythonSlicer``, a launcher that sets up the environment and
starts the real Python as its child, then waits for it. A stand-in launcher here does exactly that
(a separate executable script that starts ``python worker.py JOB`` as a child process and waits),
so cancelling must stop the child too, not only the launcher.
"""
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ACATSlicer"))

from ACATCore.volume import Volume  # noqa: E402
from ACATLib import engine  # noqa: E402
from ACATLib.runner import BackgroundAnalysis, default_sys_path, kill_process_tree  # noqa: E402

LAUNCHER = f'''#!{sys.executable}
"""Stand-in for PythonSlicer: start the real Python as a child with the same arguments, and wait."""
import os, subprocess, sys
with open(os.environ["ACAT_TEST_PIDS"], "a") as f:
    f.write(f"launcher {{os.getpid()}}\\n")
child = subprocess.Popen([{sys.executable!r}] + sys.argv[1:])
with open(os.environ["ACAT_TEST_PIDS"], "a") as f:
    f.write(f"python {{child.pid}}\\n")
sys.exit(child.wait())
'''

SLOW_ENGINE = '''
import os, time

def analyze(volume_or_path, model="brain", coverage="full", steps=20, alpha=100.0, device="auto",
            smoothing=2.0, progress=None):
    with open(os.environ["ACAT_TEST_PIDS"], "a") as f:
        f.write(f"engine {os.getpid()}\\n")
    progress("counterfactuals", 0.3)
    time.sleep(120)
    raise RuntimeError("not cancelled")
'''


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture()
def launcher(tmp_path):
    path = tmp_path / "PythonSlicer"
    path.write_text(LAUNCHER)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "slow_acat_engine.py").write_text(SLOW_ENGINE)
    return path


@pytest.mark.skipif(os.name == "nt", reason="the stand-in launcher is a POSIX script")
def test_cancel_stops_the_launcher_and_the_python_it_started(launcher, tmp_path):
    pids_file = tmp_path / "pids.txt"
    volume = Volume(np.zeros((4, 5, 6), np.int16))
    job = BackgroundAnalysis(volume, {"model": "x"}, python_executable=str(launcher),
                             engine="slow_acat_engine:analyze", sys_path=[str(tmp_path)] + default_sys_path(),
                             env={"ACAT_TEST_PIDS": str(pids_file)}).start()
    deadline = time.time() + 60
    while job.stage != engine.STAGE_LABELS["counterfactuals"] and time.time() < deadline:   # inside the engine
        job.poll()
        assert job.state == "running", job.log
        time.sleep(0.05)
    pids = dict(line.split() for line in pids_file.read_text().splitlines())
    launcher_pid, python_pid = int(pids["launcher"]), int(pids["python"])
    assert int(pids["engine"]) == python_pid != launcher_pid == job.process.pid
    assert psutil.Process(python_pid).ppid() == launcher_pid      # the real Python is the launcher's child
    work_dir = job.work_dir
    started = time.time()
    job.cancel()
    assert time.time() - started < 8
    assert job.state == "cancelled" and not work_dir.exists()
    assert not alive(launcher_pid) and not alive(python_pid), "a process of the cancelled run is alive"
    assert job.poll() == [] and job.state == "cancelled"


def test_kill_process_tree_escalates_to_kill(tmp_path):
    """A child that ignores SIGTERM is killed after the grace period."""
    import subprocess
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); print(c.pid, flush=True); "
            "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    procs = kill_process_tree(parent.pid, timeout=1.0)
    parent.wait(timeout=5)
    assert {p.pid for p in procs} == {parent.pid, child_pid}
    assert not alive(parent.pid) and not alive(child_pid)
    assert kill_process_tree(parent.pid) == []          # already gone: nothing to do
