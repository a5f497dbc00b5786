"""Whether bf16 keeps the shipped bundles' maps: fp32 against bf16 through ``analyze`` on fresh cases.

    python bench/bf16_equivalence.py --device cuda [--n 12]

For each shipped bundle (brain: fresh demo-variant heads of generator seed 9001; lung: fresh chest CT
of seed 1234, both unused by training), analyze's default search in fp32 and with
``counterfactual_options={"precision": "bf16"}`` on the same device: the saliency maps' Pearson
correlation and whether the peak falls in the same vascular territory (brain) or within 10 mm (lung).
The brain issue's bar for turning bf16 on: Pearson >= 0.95 and the same peak in >= 95% of cases.
Prints a table; asserts nothing. On a CPU without native bf16 it is slow (bf16 is emulated).

``--floor HU``: the same table with bf16 replaced by fp32 on the input plus Gaussian noise of HU
(e.g. 1, far below a CT's own noise): how far the maps and peaks move under a change no reader would
see, the floor against which bf16's figures are read.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ACATCore.counterfactual_options import DEFAULT_SEARCH
from ACATCore.data import synth
from ACATCore.pipeline import analyze
from ACATCore.volume import Volume

CASES = {"brain": (9001, 4, {"radius_mm": [20, 35], "contrast_hu": [8, 14]}),
         "lung": (1234, 2, {"involvement": [0.1, 0.3]})}


def compare(task: str, n: int, device: str, floor_hu: float = 0.0) -> dict:
    seed, classes, options = CASES[task]
    rng = np.random.default_rng(0)
    pearson, same, seconds = [], [], {"fp32": 0.0, "bf16": 0.0}
    for index, label in enumerate(synth.class_plan(n, classes, seed)):
        case = synth.make_case(task, seed, index, label, options=options)
        volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
        results = {}
        for precision in ("fp32", "bf16"):
            seen = volume
            if floor_hu and precision == "bf16":         # the floor: fp32 on a barely noised input
                noise = rng.normal(0.0, floor_hu, volume.array.shape)
                seen, precision_run = volume.with_array(volume.array + noise.astype(np.float32)), "fp32"
            else:
                precision_run = precision
            start = time.perf_counter()
            results[precision] = analyze(seen, model=task, coverage="sampled", device=device, report=False,
                                         counterfactual_options={**DEFAULT_SEARCH, "precision": precision_run})
            seconds[precision] += time.perf_counter() - start
        a, b = (results[p].saliency.array.ravel().astype(np.float64) for p in ("fp32", "bf16"))
        pearson.append(np.corrcoef(a, b)[0, 1])
        if task == "brain":
            same.append(results["fp32"].peak_territory == results["bf16"].peak_territory)
        else:
            d = np.subtract(results["fp32"].peak_lps, results["bf16"].peak_lps)
            same.append(float(np.linalg.norm(d)) <= 10.0)
    return {"task": task, "n": n, "pearson_min": min(pearson), "pearson_mean": float(np.mean(pearson)),
            "same_peak": float(np.mean(same)), "s_fp32": seconds["fp32"] / n, "s_bf16": seconds["bf16"] / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--tasks", default="brain,lung")
    ap.add_argument("--floor", type=float, default=0.0, metavar="HU",
                    help="compare fp32 with fp32 on the input plus noise of HU instead of bf16")
    args = ap.parse_args(argv)
    other = f"fp32 on the input + N(0, {args.floor:g} HU)" if args.floor else "bf16"
    print(f"{other} against fp32, shipped bundles, analyze's default search, device {args.device}, {args.n} cases")
    print(f"{'task':<7}{'n':>4}{'Pearson min':>13}{'mean':>8}{'same peak':>11}{'s fp32':>8}"
          f"{'s noised' if args.floor else 's bf16':>9}")
    for task in args.tasks.split(","):
        r = compare(task, args.n, args.device, args.floor)
        print(f"{task:<7}{r['n']:>4}{r['pearson_min']:>13.3f}{r['pearson_mean']:>8.3f}{100 * r['same_peak']:>10.0f}%"
              f"{r['s_fp32']:>8.2f}{r['s_bf16']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
