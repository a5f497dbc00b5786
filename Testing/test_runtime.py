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
# each time it starts, then (in main) the mmap threshold it runs with, its arguments, and the median minor
# page faults of one allocation of 64 MiB, written through and freed, over 16 after 18 to warm up (glibc
# settles after 7-12 here; now and then a later allocation still faults, hence the median).
SCRIPT = textwrap.dedent("""
    import os, resource, sys
    import torch
    from training.runtime import run_main
    print("start", os.getpid(), flush=True)

    def faults_of_large_allocations():
        faults = []
        for _ in range(34):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.empty(16 << 20).fill_(1.0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return sorted(faults[18:])[8]

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
    # (16384 pages of 4 KiB; fewer with transparent huge pages). Kept, the freed block is reused.
    assert faults_kept * 10 < faults_default, (faults_kept, faults_default)
