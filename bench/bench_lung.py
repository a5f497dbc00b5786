"""The lung bundle on chest CT no run used: ACAT against its baseline, where the saliency peak lies, time.

Every case is a fresh ACAT-Synth chest CT (generator seed ``--seed``, not used by any training run; the
demo variant's involvement of 10-30% of the lungs, as the shipped bundle was trained on) analysed by
``ACATCore.analyze`` with its defaults except ``coverage`` (``--coverage``, default "sampled"); one
row per search of bench/searches.py (default, paper, early, fista-early).

Columns: ACAT and baseline accuracy (``probabilities`` and ``baseline_probabilities`` of one analysis),
sensitivity and specificity (ACAT), over the scans with findings: the share whose saliency peak lies in a
finding (the lung task's hit: its findings have no territories) and in a lung (analyze's ``peak_index``:
the maximum of the map's most salient region, ``salient_peak``, since 2026-12-06), the share whose plain
arg-max (the paper's single pixel, analyze's peak before) lies in a finding; seconds per analysis; scans
analyze refused (no lungs found: counted wrong and, with findings, as a miss). ``--shifts`` adds rows of
the same cases under one acquisition shift each (bench/lung_shifts.py: field of view, coverage, pixel and slice
size, noise, calibration, patient size, breath, pose). ``--plain``: the generator's plain chests (version 2's).
Prints a table; asserts nothing.

    python bench/bench_lung.py [--bundle lung] [--n 40] [--seed 1234] [--rows default,paper,early]
                              [--coverage sampled|full] [--shifts fov50,abdomen,...] [--plain]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ACATCore.data import synth
from ACATCore.errors import InputError
from ACATCore.pipeline import analyze
from ACATCore.volume import Volume
from lung_shifts import SHIFTS, shifted
from searches import SEARCHES

DEMO = {"involvement": [0.1, 0.3]}


def fresh_cases(n: int, seed: int, plain: bool = False):
    """(volume, label, case) of ``n`` class-balanced demo-variant chest CT of generator seed ``seed``;
    ``plain``: the generator's plain chests (version 2's cases, before the lungs' density and pose varied)."""
    options = {**DEMO, "variety": False} if plain else DEMO
    for index, label in enumerate(synth.class_plan(n, 2, seed)):
        case = synth.make_case("lung", seed, index, label, options=options)
        yield Volume(case["image"], case["spacing"], case["origin"], case["direction"]), label, case


def run_row(row: str, bundle: str, cases: list, coverage: str = "sampled", shift: str = "") -> dict:
    acat, base, peaks, seconds, refused = [], [], [], [], 0
    for index, (volume, label, case) in enumerate(cases):
        if shift:
            volume, case = shifted(shift, volume, case, np.random.default_rng(index))
        start = time.perf_counter()
        try:
            result = analyze(volume, model=bundle, coverage=coverage, device="cpu", **SEARCHES[row])
        except InputError:                  # no lungs found (a shift merged a lung cut at the side with the air)
            refused += 1
            acat.append(-1)
            base.append(-1)
            peaks += [(False, False, False)] if label else []
            continue
        seconds.append(time.perf_counter() - start)
        acat.append(int(np.argmax(result.probabilities)))
        base.append(int(np.argmax(result.baseline_probabilities)))
        if label:
            i, j, k = result.peak_index
            arg = np.unravel_index(int(np.argmax(result.saliency.array)), result.saliency.shape)
            peaks.append((case["mask"][k, j, i] > 0, case["regions"][k, j, i] > 0, case["mask"][arg] > 0))
    y, acat, base = np.array([c[1] for c in cases]), np.array(acat), np.array(base)
    peaks = np.array(peaks, dtype=float).reshape(-1, 3)
    return {"row": f"{row} {shift}".strip(), "n": len(cases), "acat": (acat == y).mean(),
            "baseline": (base == y).mean(), "sensitivity": (acat[y > 0] > 0).mean(),
            "specificity": (acat[y == 0] == 0).mean(),
            "in_finding": peaks[:, 0].mean(), "in_lung": peaks[:, 1].mean(), "argmax_in_finding": peaks[:, 2].mean(),
            "seconds": float(np.mean(seconds)), "refused": refused}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="lung", help="shipped model name or bundle folder")
    ap.add_argument("--n", type=int, default=40, help="scans (classes balanced)")
    ap.add_argument("--seed", type=int, default=1234, help="generator seed (no training run uses it)")
    ap.add_argument("--rows", default="default,paper,early", help=f"searches: {','.join(SEARCHES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--coverage", default="sampled", choices=["sampled", "full"],
                    help="analyze's coverage (default sampled: the paper's single sampling)")
    ap.add_argument("--plain", action="store_true",
                    help="plain chests (variety off: the generator's cases before version 3)")
    ap.add_argument("--shifts", default="", help=f"also each search on the cases shifted: {','.join(SHIFTS)}")
    args = ap.parse_args(argv)
    shifts = [""] + [s.strip() for s in args.shifts.split(",") if s.strip()]
    rows = [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in rows if r not in SEARCHES]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose from {', '.join(SEARCHES)}")
    if any(s not in SHIFTS for s in shifts[1:]):
        raise SystemExit(f"unknown shifts in {args.shifts!r}: choose from {', '.join(SHIFTS)}")
    torch.set_num_threads(args.threads)
    cases = list(fresh_cases(args.n, args.seed, args.plain))
    print(f"lung bundle {args.bundle!r} on fresh {'plain ' if args.plain else ''}ACAT-Synth chest CT "
          f"(generator seed {args.seed}, "
          f"{args.n} scans, coverage {args.coverage})")
    print(f"{'search':<20}{'n':>4}{'ACAT':>8}{'baseline':>10}{'sens':>7}{'spec':>7}{'in-find':>9}"
          f"{'in-lung':>9}{'max-in-find':>15}{'s/case':>8}{'refused':>9}")
    for row, shift in [(row, shift) for row in rows for shift in shifts]:
        r = run_row(row, args.bundle, cases, args.coverage, shift)
        print(f"{r['row']:<20}{r['n']:>4}{100 * r['acat']:>7.1f}%{100 * r['baseline']:>9.1f}%"
              f"{100 * r['sensitivity']:>6.0f}%{100 * r['specificity']:>6.0f}%{100 * r['in_finding']:>8.0f}%"
              f"{100 * r['in_lung']:>8.0f}%{100 * r['argmax_in_finding']:>14.0f}%{r['seconds']:>8.2f}"
              f"{r['refused']:>9}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
