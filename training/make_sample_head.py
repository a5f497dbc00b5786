"""Make the shipped sample head CT (Resources/data/ACATSampleHeadCT.nrrd) and check a bundle finds its lesion.

    python -m training.make_sample_head [--bundle brain] [--dest Resources/data/ACATSampleHeadCT.nrrd]

The sample is one ACAT-Synth head with a left-sided territorial infarct (the demo variant's options
and, to look like a clinical head CT, 5 mm slices with the scan's usual head holder). Case indices
0, 1, 2, ... of generator seed ``SEED`` are tried in turn and the first one that the bundle, through
``analyze`` with its defaults, calls "left" with the saliency peak in the lesion's vascular territory
is written. ``make demo``, Slicer's Sample Data and the module's self-test use it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = 2023
OPTIONS = {"radius_mm": [20, 30], "contrast_hu": [8, 12], "acquisition": {"slice_mm": 5.0, "holder": True}}
LEFT = 1


def candidate(index: int):
    from ACATCore.data import synth
    from ACATCore.volume import Volume
    case = synth.make_case("brain", SEED, index, LEFT, options=OPTIONS)
    return Volume(case["image"], case["spacing"], case["origin"], case["direction"]), case


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="brain")
    ap.add_argument("--dest", default=str(REPO / "Resources" / "data" / "ACATSampleHeadCT.nrrd"))
    ap.add_argument("--tries", type=int, default=10)
    args = ap.parse_args(argv)
    from ACATCore.io import write_volume
    from ACATCore.pipeline import analyze
    for index in range(args.tries):
        volume, case = candidate(index)
        territory = case["lesions"][0]["territory"]
        result = analyze(volume, model=args.bundle, device="cpu")
        print(f"index {index}: lesion in {territory}; ACAT says {result.predicted_class} "
              f"({max(result.probabilities):.0%}), peak in {result.peak_territory}")
        if result.predicted_class == "left" and result.peak_territory == territory:
            write_volume(volume, args.dest)
            print(f"wrote {args.dest}: ACAT-Synth brain seed {SEED}, index {index}, options {OPTIONS}")
            return 0
    print(f"no candidate in {args.tries} tries was found by the bundle", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
