"""What ACAT reads in its saliency input: the shipped bundle fed different maps on fresh cases.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_acat_maps.py [--task brain] [--n 48] [--seed 9002]

For fresh ACAT-Synth cases (generator seed ``--seed``, no training run used it; the demo variants), the
model input of the paper's single sampling, and the shipped ACAT network fed as its saliency:

  counterfactual  the counterfactual map ACAT was trained with (class-agnostic, or the card's target and
                  fixed scale), as ``analyze`` makes it (its default search)
  zero            an all-zero map (no place is marked)
  flat            0.5 everywhere
  lesion mask     the case's own lesion mask (zero on lesion-free cases): the training control's map

and the baseline classifier alone. Columns: accuracy, mean probability of the true class on cases
without and with a lesion. A map that ACAT reads as "a lesion is here" lowers the lesion-free column.
Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ACATCore.brain_extraction import extract_brain
from ACATCore.counterfactual_options import DEFAULT_SEARCH, DEFAULT_STEPS
from ACATCore.data import synth
from ACATCore.analysis_maps import acat_map_options
from ACATCore.pipeline import load_models
from ACATCore.preprocessing import prepare, to_canonical
from ACATCore.saliency import compute_saliency
from ACATCore.volume import Volume

DEMO = {"brain": {"radius_mm": [20, 35], "contrast_hu": [8, 14]}, "lung": {"involvement": [0.1, 0.3]}}
FEEDS = ("baseline", "counterfactual", "zero", "flat", "lesion mask")


def case_inputs(task: str, seed: int, index: int, label: int, bundle):
    """(model input x, lesion mask on the model grid) of one fresh case."""
    case = synth.make_case(task, seed, index, label, options=DEMO[task])
    volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
    spec, brain = bundle.card["preprocessing"], None
    if spec.get("brain_extraction"):        # the image's brain mask places the lesion mask too
        canonical = to_canonical(volume)
        brain = extract_brain(canonical.array, canonical.spacing)
    x = prepare(volume, spec, brain=brain).tensor[None].float()
    lo, hi = spec["window"]                     # lesion far above the window, the rest far below
    marked = volume.with_array(np.where(case["mask"] > 0, hi + 1000.0, lo - 1000.0).astype(np.float32))
    mask = prepare(marked, spec, brain=brain).tensor[None].float()
    return x, (mask > 0.5).float()


def probabilities(bundle, x, mask) -> dict:
    """Softmax of the baseline and of ACAT with each map, for one case."""
    sal = compute_saliency("counterfactual", bundle.classifier, x, bundle.autoencoder, steps=DEFAULT_STEPS,
                           alpha=100.0, **DEFAULT_SEARCH, **acat_map_options(bundle.card))   # = analyze's ACAT input
    maps = {"counterfactual": sal, "zero": torch.zeros_like(sal), "flat": torch.full_like(sal, 0.5),
            "lesion mask": mask}
    with torch.no_grad():
        out = {"baseline": torch.softmax(bundle.classifier(x), 1)[0].numpy()}
        for name, m in maps.items():
            out[name] = torch.softmax(bundle.acat(x, m), 1)[0].numpy()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("brain", "lung"), default="brain")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=9002)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_models(args.task, "cpu")
    labels = synth.class_plan(args.n, len(bundle.card["class_names"]), args.seed)
    probs = {name: [] for name in FEEDS}
    for index, label in enumerate(labels):
        x, mask = case_inputs(args.task, args.seed, index, label, bundle)
        for name, p in probabilities(bundle, x, mask).items():
            probs[name].append(p)
    y = np.array(labels)
    print(f"{args.task}: shipped ACAT fed different saliency maps, {args.n} fresh cases (seed {args.seed}), "
          f"{(y == 0).sum()} without a lesion")
    print(f"{'fed':<16}{'accuracy':>10}{'P(true), no lesion':>20}{'P(true), lesion':>17}")
    for name in FEEDS:
        p = np.array(probs[name])
        true = p[np.arange(len(y)), y]
        print(f"{name:<16}{100 * (p.argmax(1) == y).mean():>9.1f}%{true[y == 0].mean():>20.3f}"
              f"{true[y > 0].mean():>17.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
