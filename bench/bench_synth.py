"""ACAT-Synth generation speed (volumes per second, files written included). Prints a table.

    python bench/bench_synth.py [--brain N] [--lung N] [--seed S]

The one-off set-up (atlas preparation, chest CT loading) is timed separately. Targets from issue 4:
>= 1 brain volume/s and >= 5 lung volumes/s on the development machine (2 CPU cores).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ACATCore.data import synth  # noqa: E402


def bench(task: str, n: int, seed: int) -> dict:
    start = time.perf_counter()
    (synth.brain_base if task == "brain" else synth.lung_base)()
    setup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        synth.generate(task, n=n, seed=seed, out_dir=out)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = sum(f.stat().st_size for f in Path(out).rglob("*.nrrd")) / n / 1e6
    return {"task": task, "n": n, "setup_s": setup, "seconds": seconds, "per_s": n / seconds, "cpu": cpu / n, "mb": size}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", type=int, default=10)
    parser.add_argument("--lung", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [bench("brain", args.brain, args.seed), bench("lung", args.lung, args.seed)]
    print(f"ACAT-Synth generation ({torch.get_num_threads()} torch threads; wall-clock volumes/s, "
          "CPU seconds summed over threads)")
    print(f"{'task':6} {'cases':>6} {'set-up s':>9} {'total s':>8} {'volumes/s':>10} {'CPU s/case':>10} {'MB/case':>8} {'target':>8}")
    for row, target in zip(rows, (1.0, 5.0)):
        print(f"{row['task']:6} {row['n']:6d} {row['setup_s']:9.2f} {row['seconds']:8.2f} "
              f"{row['per_s']:10.2f} {row['cpu']:10.3f} {row['mb']:8.2f} {target:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
