"""The brain bundle on heads no run used: accuracy, lesion-or-not, hit score, robustness, time.

Every case is a fresh ACAT-Synth head (generator seed ``--seed``, not used by any training run) analysed
by ``ACATCore.analyze`` with its defaults except ``coverage="sampled"`` (the paper's single sampling; the
full coverage averages several and is slower). Rows:

  demo        the demo variant (territorial infarcts: radius 20-35 mm, 8-14 HU extra contrast)
  dark        the demo variant's infarcts 20-28 HU darker than the noise (older ones, near the CSF's density)
  IS-1..IS-4  the standard benchmark, every lesion of one size group (and as many lesion-free heads)
  shift:*     the demo variant with one acquisition factor fixed (``synth`` option ``acquisition``):
              5 mm slices, 10 degree gantry tilt, twice the noise, +5 HU calibration offset, head
              scale 0.85 and 1.15, vertex not covered; an older brain (synth_aging): CSF spaces 3 or
              6 mm wider (atrophy3, atrophy6), white matter around the ventricles 8 HU darker (leuko8);
              neither (young: version 3's heads); one lateral ventricle 3 or 6 mm wider than the other (ventL3,
              ventR3, ventL6, ventR6: the patient's left or right); calcified choroid plexus (calc300)
  insert:*    lesion-free heads given lesions the way a lesion-insertion tool gives them to real CT
              (bench/inserted_lesions.py: smooth irregular ellipsoids of parenchyma across territory borders,
              not the generator's territory-bound ones): demo (radius 20-35 mm), IS-3 (8-12), IS-4 (12-18),
              each 8-20 HU darker; dark (20-35 mm, 20-30 HU darker)

Columns: ACAT and baseline 4-class accuracy (from one analysis: ``probabilities`` and
``baseline_probabilities``), lesion-or-not sensitivity and specificity (ACAT), over the heads with a
lesion: hit score as in the paper (the saliency peak lies in a vascular territory the lesion lies in,
read on the head's own territory map, as the paper reads a registered atlas; the peak is analyze's
``peak_index``, the maximum of the map's most salient region), the same with the territory ``analyze``
reports (``peak_territory``: geometric territories on the extracted brain, no registration), the share of
peaks inside the lesion itself, the hit of the map's plain arg-max (the paper's single pixel, hit(max));
seconds per analysis. Prints a table; asserts nothing.

    python bench/bench_brain.py [--bundle brain] [--n 40] [--seed 9001] [--rows demo,IS-3,shift:tilt10]
                                [--coverage sampled|full] [--search default|paper|early|fista-early]
                                [--shape 100,256,256]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ACATCore.data import synth
from ACATCore.data.territories import TERRITORIES
from ACATCore.errors import ACATError
from ACATCore.pipeline import analyze, load_models
from ACATCore.volume import Volume
from inserted_lesions import insert
from searches import SEARCHES

DEMO = {"radius_mm": [20, 35], "contrast_hu": [8, 14]}
DARK = {"radius_mm": [20, 35], "contrast_hu": [20, 28]}      # older infarcts, near the CSF's density
SHIFTS = {"slices5mm": {"slice_mm": 5.0}, "tilt10": {"tilt_deg": 10.0}, "noise2x": {"noise_scale": 2.0},
          "hu+5": {"hu_offset": 5.0}, "scale0.85": {"head_scale": 0.85}, "scale1.15": {"head_scale": 1.15},
          "vertex_cut": {"vertex_cut": True},
          "atrophy3": {"atrophy_mm": 3.0}, "atrophy6": {"atrophy_mm": 6.0}, "leuko8": {"leukoaraiosis_hu": 8.0},
          "young": {"atrophy_mm": 0.0, "leukoaraiosis_hu": 0.0},
          "ventL3": {"ventricle_asym_mm": 3.0}, "ventR3": {"ventricle_asym_mm": -3.0},
          "ventL6": {"ventricle_asym_mm": 6.0}, "ventR6": {"ventricle_asym_mm": -6.0},
          "calc300": {"calcification_hu": 300.0}}
INSERTED = {"demo": ([20, 35], [8, 20]), "IS-3": ([8, 12], [8, 20]), "IS-4": ([12, 18], [8, 20]),
            "dark": ([20, 35], [20, 30])}       # (radius mm, contrast HU) of insert:* rows' lesions


def row_options(row: str) -> tuple:
    """(generator options, size group for positives or None) of a row name."""
    if row == "demo":
        return dict(DEMO), None
    if row == "dark":
        return dict(DARK), None
    if row in synth.SIZE_GROUPS:
        return {"size_groups": [row]}, row
    if row.startswith("shift:") and row[6:] in SHIFTS:
        return {**DEMO, "acquisition": SHIFTS[row[6:]]}, None
    if row.startswith("insert:") and row[7:] in INSERTED:
        return {}, None
    raise SystemExit(f"unknown row {row!r}: demo, dark, IS-1..IS-4, shift:{'|'.join(SHIFTS)} "
                     f"or insert:{'|'.join(INSERTED)}")


def make_head(row: str, seed: int, index: int, label: int, options: dict, group) -> dict:
    """Head ``index`` of a row: made by the generator, or (insert:*) made lesion-free and given inserted lesions."""
    if not row.startswith("insert:"):
        return synth.make_case("brain", seed, index, label, group if label else None, options=options)
    case = synth.make_case("brain", seed, index, 0)
    return insert(case, label, np.random.default_rng([seed, index, 17]), *INSERTED[row[7:]])


def peak_hits(case: dict, result) -> tuple:
    """(hit on the head's own territories, hit by analyze's territory, peak inside the lesion, hit of
    the map's plain arg-max on the head's own territories: the paper's single pixel)."""
    i, j, k = result.peak_index
    truth = {les["territory"] for les in case["lesions"]}

    def own(k, j, i):
        return TERRITORIES[case["regions"][k, j, i] - 1] if case["regions"][k, j, i] > 0 else None
    arg = np.unravel_index(int(np.argmax(result.saliency.array)), result.saliency.shape)
    return own(k, j, i) in truth, result.peak_territory in truth, bool(case["mask"][k, j, i] > 0), \
        own(*arg) in truth


def resampled(case: dict, shape) -> dict:
    """The case on a (z, y, x) grid of ``shape`` covering the same field of view (linear for the CT,
    nearest for the masks), e.g. the brain issue's 256 x 256 x 100 head."""
    from scipy.ndimage import zoom
    factors = np.array(shape, float) / case["image"].shape
    out = dict(case, spacing=tuple(float(s) / f for s, f in zip(case["spacing"], factors[::-1])))
    out["image"] = np.rint(zoom(case["image"].astype(np.float32), factors, order=1)).astype(np.int16)
    for key in ("mask", "regions"):
        out[key] = zoom(case[key], factors, order=0)
    return out


def run_row(row: str, bundle: str, n: int, seed: int, coverage: str = "sampled", search: dict = None,
            shape=None) -> dict:
    options, group = row_options(row)
    labels = synth.class_plan(n, 4, seed)
    acat, base, hits, seconds = [], [], [], []
    for index, label in enumerate(labels):
        case = make_head(row, seed, index, label, options, group)
        case = resampled(case, shape) if shape else case
        volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
        start = time.perf_counter()
        result = analyze(volume, model=bundle, coverage=coverage, device="cpu", **(search or {}))
        seconds.append(time.perf_counter() - start)
        acat.append(int(np.argmax(result.probabilities)))
        base.append(int(np.argmax(result.baseline_probabilities)))
        if label:
            hits.append(peak_hits(case, result))
    y, acat, base = np.array(labels), np.array(acat), np.array(base)
    hits = np.array(hits, dtype=float).reshape(-1, 4)
    return {"row": row, "n": n, "acat": (acat == y).mean(), "baseline": (base == y).mean(),
            "sensitivity": (acat[y > 0] > 0).mean(), "specificity": (acat[y == 0] == 0).mean(),
            "hit": hits[:, 0].mean(), "hit_analyze": hits[:, 1].mean(), "in_lesion": hits[:, 2].mean(),
            "hit_argmax": hits[:, 3].mean(), "seconds": float(np.mean(seconds))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="brain", help="shipped model name or bundle folder")
    ap.add_argument("--n", type=int, default=40, help="heads per row (classes balanced)")
    ap.add_argument("--seed", type=int, default=9001, help="generator seed (no training run uses it)")
    ap.add_argument("--rows", default=",".join(["demo", *synth.SIZE_GROUPS, *(f"shift:{s}" for s in SHIFTS)]))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--search", default="default", choices=list(SEARCHES),
                    help="the counterfactual search (bench/searches.py; default: analyze's own)")
    ap.add_argument("--coverage", default="sampled", choices=["sampled", "full"],
                    help="analyze's coverage (default sampled: the paper's single sampling, faster)")
    ap.add_argument("--shape", default=None, help="resample every head to Z,Y,X voxels first (e.g. 100,256,256)")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else None
    torch.set_num_threads(args.threads)
    try:    # a missing or altered bundle: one line before any head is made; analyze reuses this cached load
        load_models(args.bundle, device="cpu")
    except ACATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"brain bundle {args.bundle!r} on fresh ACAT-Synth heads (generator seed {args.seed}, "
          f"{args.n} a row, coverage {args.coverage}, search {args.search})")
    print(f"{'row':<18}{'n':>4}{'ACAT':>8}{'baseline':>10}{'sens':>7}{'spec':>7}{'hit':>7}{'hit(an)':>8}"
          f"{'in-les':>7}{'hit(max)':>9}{'s/case':>8}")
    search = SEARCHES[args.search]
    reference = None
    for row in args.rows.split(","):
        r = run_row(row.strip(), args.bundle, args.n, args.seed, args.coverage, search, shape)
        reference = r["acat"] if row == "demo" else reference
        delta = "" if reference is None or not row.startswith("shift:") else \
            f"  ({100 * (r['acat'] - reference):+.1f} vs demo)"
        print(f"{r['row']:<18}{r['n']:>4}{100 * r['acat']:>7.1f}%{100 * r['baseline']:>9.1f}%"
              f"{100 * r['sensitivity']:>6.0f}%{100 * r['specificity']:>6.0f}%{100 * r['hit']:>6.0f}%"
              f"{100 * r['hit_analyze']:>7.0f}%{100 * r['in_lesion']:>6.0f}%{100 * r['hit_argmax']:>8.0f}%"
              f"{r['seconds']:>8.2f}{delta}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
