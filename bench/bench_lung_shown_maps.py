"""Every saliency method's lung map as ``analyze`` shows the counterfactual one: hit score, 3 run seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_lung_shown_maps.py \
        --config training/configs/lung_synth_demo.json --set out_dir=runs/lung_base --seeds 0 1 2

For each run seed's baseline and autoencoder, on the positive test scans that ``training/evaluate.py``
scores, each method's map (its own target semantics: the counterfactual is class-agnostic, the others explain
"findings") is scored by whether its arg-max lies in a finding, three ways: as made (the Sec. 4.4 score); bounded to
the lungs found in the model input (``lung_mask.find_lungs``) and smoothed 2 model pixels; and, as ``analyze``
shows a lung map since 2026-12-06, without the lungs' outermost ``EDGE_BAND`` pixels before smoothing
(``analysis_maps.inner_region``). Same post-processing for every method. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACATCore.analysis_maps import EDGE_BAND, SHOWN_SMOOTHING, inner_region   # noqa: E402
from ACATCore.errors import ACATError                          # noqa: E402
from ACATCore.filters import gaussian_smooth                   # noqa: E402
from ACATCore.lung_mask import find_lungs                      # noqa: E402
from ACATCore.saliency import compute_saliency                 # noqa: E402
from training.cards import load_final                          # noqa: E402
from training.data import load_splits, run_dir                 # noqa: E402
from training.evaluate import _positive_cases                  # noqa: E402
from bench_lung_peaks import per_seed                          # noqa: E402

METHODS = ("counterfactual", "latent_shift", "integrated_gradients", "gradient", "gradcam")
WAYS = ("as made", "in the lungs, smoothed", "shown (edge band dropped)")
MODEL_GRID_MM = (6.1, 6.1, 31.0)   # an ACAT-Synth chest CT (128 px of 3.05 mm, 34 x 10 mm) on the 64 x 64 x 11 grid;
# a lung-box run's grid is finer (about 4.7 x 4.7 x 25 mm): only find_lungs' ml thresholds move, far below a lung


def scored_ways(sal: torch.Tensor, lungs: np.ndarray, findings: np.ndarray) -> list:
    """Hit (peak in a finding) of the (S, H, W) map as made, bounded + smoothed, bounded without the band + smoothed."""
    hits = [bool(findings.reshape(-1)[int(sal.argmax())])]
    for keep in (lungs, inner_region(lungs, (None, 1.0, 1.0), EDGE_BAND["lung"])):
        m = torch.where(torch.from_numpy(keep), sal, torch.zeros_like(sal))
        m = gaussian_smooth(m[None, :, None], SHOWN_SMOOTHING)[0, :, 0].numpy()
        hits.append(bool(findings.reshape(-1)[int(np.argmax(np.where(keep, m, -1.0)))]))
    return hits


def seed_hits(cfg: dict, rt, seed: int) -> dict:
    """{method: (cases, 3) hits} on the seed's positive test scans."""
    root = run_dir(cfg, seed)
    base, _ = load_final(root / "baseline" / "model.safetensors", "baseline")
    ae, _ = load_final(root / "autoencoder" / "model.safetensors", "autoencoder")
    splits = load_splits(cfg, rt, seed)
    base, ae = base.eval(), ae.eval()
    sub = copy.deepcopy(cfg)
    sub["evaluate"]["saliency_splits"] = ["test"]
    ds, hits = splits["test"], {m: [] for m in METHODS}
    for _, p in _positive_cases(sub, splits, rt):
        x = ds.get([p])["x"]
        g = ds.indices[p]
        findings = np.asarray(ds.array("mask")[g]) > 0
        lo, hi = cfg["data"]["preprocessing"]["window"]
        lungs = find_lungs(x[0, :, 0].numpy() * (hi - lo) + lo, MODEL_GRID_MM)
        if lungs is None:                   # not expected on these scans; the generator's lungs then
            lungs = np.asarray(ds.array("regions")[g]) > 0
        for method in METHODS:
            kw = {} if method == "counterfactual" else {"target": 1}
            sal = compute_saliency(method, base, x, autoencoder=ae, **kw)[0, :, 0].float()
            hits[method].append(scored_ways(sal, lungs, findings))
    return {m: np.array(v, dtype=float) for m, v in hits.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a finished lung run's config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    rows = per_seed(args.config, args.set, args.seeds, args.threads, seed_hits)
    print("| method | " + " | ".join(f"{w}: mean (SE)" for w in WAYS) + " | positives |")
    print("|---" * (len(WAYS) + 2) + "|")
    for method in METHODS:
        by_seed = np.array([100.0 * rows[s][method].mean(axis=0) for s in args.seeds])      # (seeds, ways)
        se = by_seed.std(axis=0, ddof=1) / np.sqrt(len(by_seed)) if len(by_seed) > 1 else np.zeros(len(WAYS))
        cells = " | ".join(f"{m:.1f}% ({e:.1f})" for m, e in zip(by_seed.mean(axis=0), se))
        print(f"| {method} | {cells} | {sum(len(rows[s][method]) for s in args.seeds)} |")


if __name__ == "__main__":
    try:
        main()
    except ACATError as e:
        raise SystemExit(f"error: {e}")
