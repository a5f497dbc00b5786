"""Seconds per volume of the saliency maps Algorithm 1 trains ACAT on, per counterfactual search.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_training_saliency.py --task brain [--cases 32] [--seed 0]

For a trained run (the config's out_dir, run seed ``--seed``: its baseline and autoencoder), the maps of
the first ``--cases`` test volumes exactly as ``training/make_saliency.py`` makes them (batches of the
config's ``saliency.batch_size``), with:

  config        the config's own saliency options (the demo configs: the paper's gradient descent,
                20 steps; brain with early stop at 0.9)
  fista         FISTA with adaptive steps, 7 steps (``counterfactual_options.FAST_SEARCH``), the
                config's early stop kept
  fista-nostop  the same without early stop

and the maps' Pearson correlation with the config's (per volume: mean and minimum). Prints a table;
asserts nothing. Any row is a config override: ``--set saliency.options.optimizer=fista`` etc.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ACATCore.counterfactual_options import FAST_SEARCH, FAST_STEPS
from training.cards import load_final
from training.config import load_config
from training.data import load_splits, run_dir
from training.make_saliency import saliency_maps
from training.runtime import started

ROWS = {"config": {}, "fista": dict(FAST_SEARCH, steps=FAST_STEPS),
        "fista-nostop": dict(FAST_SEARCH, steps=FAST_STEPS, stop_at=None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("brain", "lung"), default="brain")
    ap.add_argument("--config", help="default: training/configs/<task>_synth_demo.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or f"training/configs/{args.task}_synth_demo.json")
    cfg["runtime"]["progress"] = False
    with started(cfg) as rt:
        root = run_dir(cfg, args.seed)
        clf = load_final(root / "baseline" / "model.safetensors", "baseline classifier")[0].eval()
        ae = load_final(root / "autoencoder" / "model.safetensors", "autoencoder")[0].eval()
        test = load_splits(cfg, rt, args.seed)["test"]
        n, bs = min(args.cases, len(test)), int(cfg["saliency"]["batch_size"])
        print(f"{args.task}: {n} test volumes of run seed {args.seed}, config options {cfg['saliency']['options']}, "
              f"{args.threads} thread(s)")
        print(f"{'search':<14}{'s/volume':>10}{'Pearson mean':>14}{'min':>8}")
        reference = None
        for name, extra in ROWS.items():
            start, maps = time.perf_counter(), []
            for s in range(0, n, bs):
                x = test.get(list(range(s, min(n, s + bs))))["x"]
                maps.append(saliency_maps(clf, ae, x, cfg, **extra).float().numpy())
            seconds = (time.perf_counter() - start) / n
            maps = np.concatenate(maps)
            reference = maps if reference is None else reference
            r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(reference, maps)]
            print(f"{name:<14}{seconds:>10.3f}{np.mean(r):>14.3f}{np.min(r):>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
