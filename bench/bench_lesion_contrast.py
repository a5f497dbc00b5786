"""How visible brain lesions are in what the model reads: contrast and size in the prepared input, by row.

For fresh heads of each row (``demo``, ``IS-1``..``IS-4``, ``shift:*`` as in ``bench_brain.py``) the generator
also returns the head before its lesions and before its noise; all three are prepared as a model card says
(default: the shipped brain classifier; ``--slices`` overrides its slice count), with the brain mask of
the real head, and the lesion mask is sampled the same way (the slab's mean: each pixel's lesion share).
Per lesion side, over the pixels that are at least half lesion: the lesion's own signal (before noise
minus before lesions). Against it, over the brain: the noise (the head minus the head before noise) and
the left-right difference of the lesion-free head (anatomy and a head off the midline), as standard
deviations. Prints medians and quartiles in HU (the window's width times input units); asserts nothing.

    python bench/bench_lesion_contrast.py --rows IS-3,IS-4,demo --seeds 9400,9500 --n 48 [--slices 11,22]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_brain import row_options  # noqa: E402
from ACATCore.brain_extraction import extract_brain  # noqa: E402
from ACATCore.data import synth  # noqa: E402
from ACATCore.preprocessing import check_spec, prepare, to_canonical  # noqa: E402
from ACATCore.volume import Volume  # noqa: E402

SHIPPED_CARD = os.path.join(os.path.dirname(__file__), "..", "Resources", "models", "brain", "classifier.json")


def head_figures(image, noiseless, clean, lesion) -> tuple[list, list, float, float]:
    """Prepared (S, H, W) arrays of one head -> (signal of each lesion side, its pixels, noise s.d., s.d. of
    the lesion-free head's left-right difference), in input units. Columns < W/2: the patient's right."""
    half = image.shape[-1] // 2
    brain = image > 0                                               # outside the brain the input is 0
    signals, pixels = [], []
    for side in (np.s_[..., :half], np.s_[..., half:]):
        core = (lesion[side] >= 0.5) & brain[side]
        if core.any():
            signals.append(float((noiseless[side] - clean[side])[core].mean()))
            pixels.append(int(core.sum()))
    both = brain[..., :half] & brain[..., ::-1][..., :half]
    left_right = (clean[..., :half] - clean[..., ::-1][..., :half])[both]
    return signals, pixels, float((image - noiseless)[brain].std()), float(left_right.std())


def measure(row: str, seeds, n: int, spec: dict) -> dict:
    options, group = row_options(row)
    out = {"signal": [], "pixels": [], "noise": [], "left_right": []}
    for seed in seeds:
        for index, label in enumerate(synth.class_plan(n, 4, seed)):
            case = synth.make_case("brain", seed, index, label, group if label else None, return_clean=True,
                                   options=options)
            geometry = (case["spacing"], case["origin"], case["direction"])
            volume = Volume(case["image"], *geometry)
            canonical = to_canonical(volume)
            brain = extract_brain(canonical.array, canonical.spacing)
            prepared = prepare(volume, spec, brain=brain)
            arrays = [prepared.tensor.numpy()[:, 0].astype(np.float32)]
            for key in ("noiseless", "clean"):
                arrays.append(prepare(Volume(case[key], *geometry), spec, brain=brain).tensor.numpy()[:, 0])
            lesion = prepared.to_model_grid(Volume(case["mask"].astype(np.float32), *geometry), mode="bilinear")
            signals, pixels, noise, left_right = head_figures(*arrays, lesion)
            out["signal"] += signals
            out["pixels"] += pixels
            out["noise"].append(noise)
            out["left_right"].append(left_right)
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card", default=SHIPPED_CARD, help="a brain model card (.json) whose preprocessing to use")
    ap.add_argument("--rows", default="IS-3,IS-4,demo")
    ap.add_argument("--seeds", default="9400,9500", help="generator seeds no training run uses")
    ap.add_argument("--n", type=int, default=48, help="heads per seed and row (classes balanced)")
    ap.add_argument("--slices", default="", help="comma-separated slice counts instead of the card's")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with open(args.card) as f:
        base = json.load(f)["preprocessing"]
    (lo, hi) = base["window"]
    hu = float(hi - lo)                                           # input units -> HU
    counts = [int(s) for s in args.slices.split(",")] if args.slices else [int(base["slices"])]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'row':<8}{'slices':>7}{'lesions':>8}{'signal HU, median (q25 to q75)':>32}"
          f"{'pixels, median':>16}{'noise s.d. HU':>15}{'left-right s.d. HU':>20}")
    for row in args.rows.split(","):
        for count in counts:
            r = measure(row, seeds, args.n, check_spec({**base, "slices": count}))
            q25, q50, q75 = np.percentile(r["signal"] * hu, [25, 50, 75])
            print(f"{row:<8}{count:>7}{len(r['signal']):>8}{q50:>14.1f} ({q25:.1f} to {q75:.1f}){'':>6}"
                  f"{np.median(r['pixels']):>16.0f}{np.mean(r['noise']) * hu:>15.1f}"
                  f"{np.mean(r['left_right']) * hu:>20.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
