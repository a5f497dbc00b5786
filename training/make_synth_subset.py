"""ACAT-Synth with the lesion sizes restricted to chosen size groups (a documented demo setting).

    python training/make_synth_subset.py --task brain --n 320 --seed 2 --groups IS-3 IS-4 \
        --out runs/brain_synth_demo_data

The cases are made exactly as ACATCore.data.synth.generate makes them (same generator, same
per-case random stream, same files and datalist.json format), except that every lesion's size
group is drawn from --groups (cycled for the first lesion, drawn at random for the second lesion
of a "both" case) instead of IS-1..IS-4. Point a config's data.datalist at <out>/datalist.json
with data.source "datalist". Brain only (lung cases have no size groups to restrict).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ACATCore.data import synth as S  # noqa: E402
from ACATCore.data.splits import stratified_split  # noqa: E402


def generate_subset(n: int, seed: int, groups, out_dir) -> dict:
    groups = list(groups)
    for g in groups:
        if g not in S.SIZE_GROUPS:
            raise SystemExit(f"error: size group {g!r} unknown; use {', '.join(S.SIZE_GROUPS)}")
    out = Path(out_dir)
    for sub in ("images", "masks", "regions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels = S.class_plan(n, len(S.BRAIN_CLASSES), seed)
    items, positives, t0 = [], 0, time.time()
    for index, label in enumerate(labels):
        rng = np.random.default_rng([seed, index, S.TASKS.index("brain")])
        extra = groups[rng.integers(len(groups))]
        first = None
        if label > 0:
            first = groups[positives % len(groups)]
            positives += 1
        case = S.make_brain_case(rng, label, (first, extra))
        name = f"brain_{index:05d}"
        paths = {key: f"{key}/{name}.nrrd" for key in ("images", "masks", "regions")}
        for key, array_key in (("images", "image"), ("masks", "mask"), ("regions", "regions")):
            S._write(case[array_key], case["spacing"], case["origin"], case["direction"], out / paths[key])
        items.append({"case": name, "image": paths["images"], "label": int(label),
                      "label_name": S.BRAIN_CLASSES[label], "mask": paths["masks"],
                      "regions": paths["regions"], "noise_hu": round(case["noise_hu"], 2),
                      "lesions": case["lesions"],
                      "territory": "+".join(les["territory"] for les in case["lesions"]),
                      "size_group": "+".join(les["size_group"] for les in case["lesions"])})
        if (index + 1) % 50 == 0:
            print(f"{index + 1}/{n} cases, {time.time() - t0:.0f} s", flush=True)
    datalist = {
        "name": f"ACAT-Synth brain, size groups {'+'.join(groups)} only", "task": "brain",
        "seed": seed, "n": n, "size_groups": groups,
        "description": ("synthetic lesions on real CT anatomy (ACATCore.data.synth), lesion sizes "
                        f"restricted to {', '.join(groups)} (training/make_synth_subset.py)"),
        "class_names": list(S.BRAIN_CLASSES), "region_names": list(S.TERRITORIES),
        "label_counts": {c: labels.count(i) for i, c in enumerate(S.BRAIN_CLASSES)},
        **stratified_split(items, seed=seed),
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return datalist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="brain", choices=["brain"])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groups", nargs="+", default=["IS-3", "IS-4"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    generate_subset(args.n, args.seed, args.groups, args.out)
    print(Path(args.out) / "datalist.json")


if __name__ == "__main__":
    main()
