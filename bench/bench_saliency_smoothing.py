"""Hit score, IoU and Dice of saliency methods against in-plane Gaussian smoothing of their maps.

A map's arg-max is one pixel: a lone bright pixel of decoder noise outside the lesion moves the peak
out of its territory. Smoothing first (the same for every method) makes the peak the centre of the
strongest region. This prints, per method and sigma (model-grid pixels), the hit score (SE over seeds),
IoU and Dice on the positive cases of one split: choose sigma on "val", report on "test".

    python bench/bench_saliency_smoothing.py --config training/configs/brain_synth_demo.json \
        --out runs/brain_n960_a1 --seeds 0 1 2 --split val --sigmas 0 1 2 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACATCore import metrics                                   # noqa: E402
from ACATCore.filters import gaussian_smooth                   # noqa: E402
from training.config import load_config                        # noqa: E402
from training.data import attach_saliency, load_splits, run_dir  # noqa: E402
from training.evaluate import _saliency_map, _saliency_models, lesion_region  # noqa: E402
from training.runtime import started                           # noqa: E402

METHODS = ["counterfactual_agnostic", "gradient", "integrated_gradients", "latent_shift"]


def smoothed(s: np.ndarray, sigma: float) -> np.ndarray:
    """(S, H, W) map smoothed in-plane by ``sigma`` pixels (the saliency package's own filter)."""
    return gaussian_smooth(torch.from_numpy(np.ascontiguousarray(s))[None, :, None], sigma)[0, :, 0].numpy()


def seed_scores(cfg, rt, seed, split, methods, sigmas, limit) -> dict:
    """{(method, sigma): [(hit, iou, dice) per case]} for one seed's positive cases of ``split``."""
    splits = load_splits(cfg, rt, seed)
    attach_saliency(cfg, seed, splits)
    models = _saliency_models(cfg, rt, seed, run_dir(cfg, seed), have_maps=False)
    ds = splits[split]
    masks, regions = ds.array("mask"), ds.array("regions")
    positives = [p for p in np.flatnonzero(ds.labels > 0) if masks[ds.indices[p]].any()][:limit]
    out = {(m, s): [] for m in methods for s in sigmas}
    for p in positives:
        batch = ds.get([p], with_saliency=True)
        g = ds.indices[p]
        labels = np.asarray(masks[g])           # territory labels of the lesion voxels (brain)
        region, mask = lesion_region(labels, np.asarray(regions[g]), cfg["task"]), labels > 0
        for m in methods:
            raw = _saliency_map(m, models, batch, cfg, rt)
            for s in sigmas:
                sal = smoothed(raw, s)
                out[(m, s)].append((metrics.is_hit(sal, region), *metrics.iou_dice(sal, mask)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True, help="the Algorithm 1 run folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--limit", type=int, default=40, help="positive cases a seed")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cfg["out_dir"] = args.out
    cfg["runtime"]["progress"] = False
    per_seed = []
    with started(cfg) as rt:
        for seed in args.seeds:
            per_seed.append(seed_scores(cfg, rt, seed, args.split, args.methods, args.sigmas, args.limit))
    n = len(per_seed[0][(args.methods[0], args.sigmas[0])])
    print(f"split {args.split}, seeds {args.seeds}, {n} positives in seed {args.seeds[0]}")
    print(f"{'method':<26}{'sigma':>6}{'hit':>8}{'(SE)':>7}{'IoU':>8}{'Dice':>8}")
    for m in args.methods:
        for s in args.sigmas:
            hits = [100 * np.mean([r[0] for r in d[(m, s)]]) for d in per_seed]
            rows = np.array([r for d in per_seed for r in d[(m, s)]], dtype=float)
            se = np.std(hits, ddof=1) / np.sqrt(len(hits)) if len(hits) > 1 else float("nan")
            print(f"{m:<26}{s:>6g}{np.mean(hits):>7.1f}%{se:>7.1f}{np.nanmean(rows[:, 1]):>8.3f}"
                  f"{np.nanmean(rows[:, 2]):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
