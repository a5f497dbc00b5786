"""``make bench``: run every benchmark script in bench/ in turn and keep their tables.

Each ``bench/bench_*.py`` runs in its own process with its default options; its output is shown and
also written to ``bench/results/<name>.txt``. A script that fails is reported and the others still
run; the exit code is 1 if any failed. Benchmarks print tables and assert nothing.

    python bench/run_all.py [--only bench_analyze,bench_models]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bench_models", "bench_saliency", "bench_synth", "bench_analyze"]   # the rest after, by name


def scripts(only=None) -> list:
    found = {p.stem: p for p in HERE.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return [found[n] for n in names if not only or n in only]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated script names (without .py)")
    args = ap.parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for script in scripts(only):
        print(f"\n######## {script.name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        code = proc.wait()
        seconds = time.perf_counter() - start
        (results / f"{script.stem}.txt").write_text("".join(lines))
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"######## {script.name}: {status} in {seconds:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    print(f"\n{len(scripts(only)) - len(failed)} benchmark(s) ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
