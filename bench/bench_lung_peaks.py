"""Where the counterfactual map's peak falls on lung positives, when it misses the findings.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_lung_peaks.py \
        --config runs/lung_timing/config.json --seeds 0 1 2

For each run seed's baseline and autoencoder, on the positive test scans that ``training/evaluate.py``
scores (its ``evaluate.max_saliency_cases`` first ones), the Sec. 4.4 map (negative counterfactual, the
config's search, unsmoothed) is made as the evaluation makes it, and its arg-max is put in one of four
places: inside a finding (a hit), within ``NEAR_PX`` model-grid pixels of one in its slice (a near miss:
the finding's faded edge), elsewhere in the lungs (the generator's lung labels, vessels and airways
included), or outside them (hilum, mediastinum, chest wall). The last column is the findings' share of the
lungs: the hit score of a peak drawn at random inside the lungs. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACATCore.errors import ACATError                          # noqa: E402
from training.cards import load_final                          # noqa: E402
from training.config import load_config                        # noqa: E402
from training.data import load_splits, run_dir                 # noqa: E402
from training.evaluate import _positive_cases                  # noqa: E402
from training.make_saliency import saliency_maps               # noqa: E402
from training.runtime import started                           # noqa: E402

NEAR_PX = 2.0
PLACES = ("in a finding", f"within {NEAR_PX:g} px of one", "elsewhere in the lungs", "outside the lungs")


def place_of(peak: tuple, findings: np.ndarray, lungs: np.ndarray) -> str:
    """Which of PLACES the (s, h, w) voxel `peak` is in, given (S, H, W) boolean findings and lungs."""
    if findings[peak]:
        return PLACES[0]
    distance = ndimage.distance_transform_edt(~findings[peak[0]])[peak[1:]]
    if findings[peak[0]].any() and distance <= NEAR_PX:
        return PLACES[1]
    return PLACES[2] if lungs[peak] else PLACES[3]


def seed_row(cfg: dict, rt, seed: int) -> dict:
    """{place: share of the positives, "n": cases, "chance": mean findings share of the lungs}."""
    root = run_dir(cfg, seed)
    base, _ = load_final(root / "baseline" / "model.safetensors", "baseline")       # before any data is prepared
    ae, _ = load_final(root / "autoencoder" / "model.safetensors", "autoencoder")
    splits = load_splits(cfg, rt, seed)
    base, ae = base.to(rt.device).eval(), ae.to(rt.device).eval()
    sub = copy.deepcopy(cfg)
    sub["evaluate"]["saliency_splits"] = ["test"]
    ds, counts, chance = splits["test"], dict.fromkeys(PLACES, 0), []
    cases = [p for _, p in _positive_cases(sub, splits, rt)]
    for p in cases:
        x = ds.get([p])["x"].to(rt.device)
        s = saliency_maps(base, ae, x, cfg, "counterfactual", target=0).float().cpu().numpy()[0, :, 0]
        g = ds.indices[p]
        findings, lungs = np.asarray(ds.array("mask")[g]) > 0, np.asarray(ds.array("regions")[g]) > 0
        counts[place_of(np.unravel_index(int(np.argmax(s)), s.shape), findings, lungs)] += 1
        chance.append(findings[lungs].mean())
    n = max(len(cases), 1)
    return {**{k: 100.0 * v / n for k, v in counts.items()}, "n": len(cases), "chance": 100.0 * np.mean(chance)}


def per_seed(config: str, overrides: list, seeds: list, threads: int, row) -> dict:
    """{seed: row(cfg, rt, seed)} for a finished lung run's ``config`` (with ``--set`` ``overrides``)."""
    cfg = load_config(config, overrides)
    if cfg["task"] != "lung":
        raise SystemExit(f"{config} is a {cfg['task']} run; this benchmark reads lung runs")
    cfg["runtime"]["threads"] = threads
    with started(cfg) as rt:
        rt.progress = False
        return {seed: row(cfg, rt, seed) for seed in seeds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a finished lung run's config (its cache, baselines, autoencoders)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    rows = per_seed(args.config, [], args.seeds, args.threads, seed_row)
    print("| seed | positives | " + " | ".join(PLACES) + " | findings' share of the lungs |")
    print("|---" * (len(PLACES) + 3) + "|")
    for seed, r in list(rows.items()) + [("mean", {k: np.mean([r[k] for r in rows.values()])
                                                   for k in (*PLACES, "n", "chance")})]:
        print(f"| {seed} | {r['n']:g} | " + " | ".join(f"{r[k]:.1f}%" for k in PLACES) + f" | {r['chance']:.1f}% |")


if __name__ == "__main__":
    try:
        main()
    except ACATError as e:                      # an unfinished run: say which model to train first
        raise SystemExit(f"error: {e}")
