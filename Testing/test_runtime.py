"""training.runtime: a training script restarts itself once so that glibc keeps freed memory, and then
its repeated large allocations stop page-faulting (what made half of the maps' time)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.runtime import KEEP_FREED_MEMORY

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)

# A script as the training scripts are: its main() runs through run_main. It prints its process id
# each time it starts, then (in main) the mmap threshold it runs with, its arguments, and the minor page
# faults of 12 allocations of 64 MiB, each written through and freed, after 10 to warm up (glibc
# settles after about 8).
SCRIPT = textwrap.dedent("""
    import os, resource, sys
    import torch
    from training.runtime import run_main
    print("start", os.getpid(), flush=True)

    def faults_of_large_allocations():
        for _ in range(10):
            torch.empty(16 << 20).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(12):
            torch.empty(16 << 20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def main():
        print("main", os.getpid(), os.environ.get("MALLOC_MMAP_THRESHOLD_"), sys.argv[1:],
              faults_of_large_allocations(), flush=True)

    run_main(main)
""")


def run_script(tmp_path, **env) -> list:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    clean = {k: v for k, v in os.environ.items() if k not in KEEP_FREED_MEMORY}
    clean.update(env, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(script), "--seed", "3"], cwd=tmp_path, env=clean,
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    return [line.split(" ", 1) for line in r.stdout.splitlines()]


def test_a_script_restarts_once_in_the_same_process_with_freed_memory_kept(tmp_path):
    kept = run_script(tmp_path)
    assert [k for k, _ in kept] == ["start", "start", "main"]
    pid = kept[0][1]
    assert kept[1][1] == pid and kept[2][1].startswith(pid + " ")
    main = kept[2][1].split(" ")
    assert main[1] == KEEP_FREED_MEMORY["MALLOC_MMAP_THRESHOLD_"]
    assert main[2:4] == ["['--seed',", "'3']"]

    default = run_script(tmp_path, ACAT_KEEP_FREED_MEMORY="0")
    assert [k for k, _ in default] == ["start", "main"]
    assert default[1][1].split(" ")[1] == "None"

    faults_kept, faults_default = int(main[-1]), int(default[1][1].split(" ")[-1])
    # glibc's default maps and unmaps each 64 MiB block: every allocation faults its pages in again
    # (12 x 16384 pages of 4 KiB; fewer with transparent huge pages). Kept, the freed block is reused.
    assert faults_kept * 10 < faults_default, (faults_kept, faults_default)
