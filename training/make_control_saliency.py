"""Controls for ACAT (Sec. 4.7's spirit): a run whose saliency maps are the true lesion masks (upper
bound), decoy masks (the upper bound of a map that always has a peak), smooth noise (lower bound) or the
trained run's own counterfactual maps focused on their brightest 1 %, everything else linked from that run.

    python -m training.make_control_saliency --from runs/brain_synth_demo --to runs/brain_ctl_mask --seed 0 --kind mask
    python -m training.train_acat --config training/configs/brain_synth_demo.json --seed 0 --out runs/brain_ctl_mask

Mask maps: the prepared lesion mask (``cache/mask.npy``) smoothed by 1 pixel, scaled to a peak of 1, zero
without a lesion (so they also tell lesion from no lesion: an upper bound, not a method). Decoy maps: the
same, but a volume without a lesion gets the mask map of a random volume of the split that has one, so
every map has a bright region, as the class-agnostic counterfactual map does, and only its place tells
(a perfectly localising map that does not give presence away); with ``--misplaced F`` a random fraction F
of the lesion volumes get another lesion volume's map instead of their own (a decoy that localises the
rest: what ACAT gains from a map as a function of how often it points at the lesion). Noise maps: uniform
noise smoothed by 2 pixels and scaled to [0, 1], the value range of the real maps. Focus maps: each of the
trained run's own maps smoothed in-plane by 2 pixels, its brightest 1 % of voxels kept as a binary region,
smoothed by 1 pixel and scaled to a peak of 1: a counterfactual map reshaped into a lesion-sized blob like
the decoy's.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

SPLITS = ("train", "val", "test")


FOCUS_FRACTION = 0.01       # about a lesion's share of the brain model's input (median 0.56 %, up to ~2 %)


def focus_maps(maps: np.ndarray) -> np.ndarray:
    """(N, S, 1, H, W) maps -> each one's brightest FOCUS_FRACTION (after 2-px smoothing) as a 1-px-smoothed
    blob, peak 1 (float16)."""
    out = np.empty(maps.shape, np.float16)
    for i, m in enumerate(maps):
        smooth = gaussian_filter(np.asarray(m[:, 0], np.float32), (0, 2, 2))
        top = smooth > np.quantile(smooth, 1.0 - FOCUS_FRACTION)
        blob = gaussian_filter(top.astype(np.float32), (0, 1, 1))
        out[i, :, 0] = blob / max(float(blob.max()), 1e-6)
    return out


def control_maps(kind: str, masks: np.ndarray, shape: tuple, rng: np.random.Generator,
                 misplaced: float = 0.0) -> np.ndarray:
    """(N, S, 1, H, W) float16 maps: `masks` (N, S, H, W) smoothed (a decoy for the lesion-free ones
    with kind "decoy", and another lesion's map for a fraction `misplaced` of the lesion volumes), or
    noise of `shape`."""
    if kind in ("mask", "decoy"):
        maps = np.stack([gaussian_filter((m > 0).astype(np.float32), (0, 1, 1)) for m in masks])
        peak = maps.reshape(len(maps), -1).max(1)
        if kind == "decoy":
            empty, lesions = np.flatnonzero(peak == 0), np.flatnonzero(peak > 0)
            if len(lesions):
                maps[empty] = maps[rng.choice(lesions, len(empty))]
            if len(lesions) > 1 and misplaced > 0:
                pos = rng.choice(len(lesions), int(round(misplaced * len(lesions))), replace=False)
                donor = (pos + rng.integers(1, len(lesions), len(pos))) % len(lesions)   # never itself
                maps[lesions[pos]] = maps[lesions[donor]]
        peak = np.maximum(maps.reshape(len(maps), -1).max(1), 1e-6)
        return (maps / peak[:, None, None, None])[:, :, None].astype(np.float16)
    maps = gaussian_filter(rng.random(shape, dtype=np.float32), (0, 0, 0, 2, 2))
    return ((maps - maps.min()) / (maps.max() - maps.min())).astype(np.float16)


def link(src: Path, dst: Path):
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True, help="a trained run's out_dir (with saliency maps)")
    ap.add_argument("--to", dest="dst", required=True, help="the control run's out_dir (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["mask", "decoy", "noise", "focus"], required=True)
    ap.add_argument("--misplaced", type=float, default=0.0,
                    help="decoy only: the fraction of lesion volumes given another lesion's map (default 0)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.misplaced <= 1.0 or (args.misplaced and args.kind != "decoy"):
        ap.error("--misplaced takes a fraction in [0, 1], and only with --kind decoy")
    src, dst = Path(args.src), Path(args.dst)
    run, source = dst / f"seed{args.seed}", src / f"seed{args.seed}"
    (run / "saliency").mkdir(parents=True, exist_ok=True)
    for name in ("synth", "cache"):
        link(src / name, dst / name)
    for part in ("baseline", "autoencoder"):
        link(source / part, run / part)
    masks = np.load(src / "cache" / "mask.npy", mmap_mode="r")
    rng = np.random.default_rng(args.seed)
    for split in SPLITS:
        index = np.load(source / "saliency" / f"{split}_index.npy")
        own = np.load(source / "saliency" / f"{split}.npy", mmap_mode="r")
        if args.kind == "focus":
            maps = focus_maps(own)
        else:
            maps = control_maps(args.kind, masks[index], own.shape, rng, args.misplaced)
        np.save(run / "saliency" / f"{split}.npy", maps)
        np.save(run / "saliency" / f"{split}_index.npy", index)
    print(f"wrote {args.kind} maps to {run / 'saliency'}")


if __name__ == "__main__":
    main()
