"""Brain classifiers side by side on the same fresh heads: accuracy, lesion-or-not, thin against thick slices.

Each model file (a trained stage's ``model.safetensors``, e.g. ``runs/X/seed0/baseline``, or a bundle's
``classifier.safetensors``) is read with its card and sees each head as its card's ``preprocessing``
says (heads are made and brain-extracted once, prepared once per distinct preprocessing). No saliency,
no ACAT: this compares what different training recipes or preprocessings do to the classifier itself,
quickly (about 1.5 s a head on one core, most of it making the head). Rows as in ``bench_brain.py``
(``demo``, ``IS-1``..``IS-4``, ``shift:*``, ``insert:*``: the same heads as there). Columns per model:
4-class accuracy, sensitivity and specificity of lesion-or-not, specificity on the heads with slices thinner
than ``--thick`` mm and on the others, and the mean p(no lesion) of the thick-slice lesion-free heads. Then a
summary: per row each model's accuracy over all ``--seeds``' heads, and the mean and standard error across
the models (given the seeds of one recipe, that is the recipe's figure over seeds). Prints tables; asserts
nothing.

    python bench/bench_brain_classifiers.py --models Resources/models/brain/classifier.safetensors \\
        runs/probe_brain/seed0/baseline --seeds 9400,9500 --n 96 [--rows demo,IS-3,insert:IS-3] [--thick 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_brain import make_head, row_options  # noqa: E402
from ACATCore.brain_extraction import extract_brain  # noqa: E402
from ACATCore.checkpoint import load_model  # noqa: E402
from ACATCore.data import synth  # noqa: E402
from ACATCore.metrics import mean_sem  # noqa: E402
from ACATCore.preprocessing import check_spec, prepare, to_canonical  # noqa: E402
from ACATCore.volume import Volume  # noqa: E402


def model_file(path: str) -> Path:
    p = Path(path)
    return p / "model.safetensors" if p.is_dir() else p


def probabilities(models, case) -> list:
    """(C,) class probabilities of every model for one generated case."""
    volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
    canonical = to_canonical(volume)
    brain = extract_brain(canonical.array, canonical.spacing)
    inputs, out = {}, []
    for model, spec in models:
        key = json.dumps(spec, sort_keys=True)
        if key not in inputs:
            inputs[key] = prepare(volume, spec, brain=brain).tensor[None]
        with torch.no_grad():
            out.append(torch.softmax(model(inputs[key]).float(), dim=-1)[0].numpy())
    return out


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def score(labels, thickness, probs, thick_mm: float) -> dict:
    y, pred = np.asarray(labels), np.argmax(probs, axis=1)
    free, thick = y == 0, np.asarray(thickness) >= thick_mm
    return {"acc": _mean(pred == y), "sens": _mean(pred[~free] > 0), "spec": _mean(pred[free] == 0),
            "spec_thin": _mean(pred[free & ~thick] == 0), "spec_thick": _mean(pred[free & thick] == 0),
            "p0_thick": _mean(np.asarray(probs)[free & thick, 0]), "n_thick": int((free & thick).sum()),
            "n_thin": int((free & ~thick).sum())}


def run(models, names, row: str, seed: int, n: int, thick_mm: float) -> list:
    options, group = row_options(row)
    labels = synth.class_plan(n, 4, seed)
    thickness, probs = [], [[] for _ in models]
    for index, label in enumerate(labels):
        case = make_head(row, seed, index, int(label), options, group)
        thickness.append(case["acquisition"]["slice_mm"])
        for m, p in enumerate(probabilities(models, case)):
            probs[m].append(p)
    return [dict(score(labels, thickness, probs[m], thick_mm), model=names[m]) for m in range(len(models))]


def summary(pooled: dict, names: list) -> None:
    """Per row: each model's accuracy over all seeds' heads, then their mean and standard error (the models
    being e.g. the seeds of one recipe: "3 seeds with standard errors")."""
    print(f"\n{'row':<16}" + "".join(f"{'model ' + str(m + 1):>10}" for m in range(len(names)))
          + f"{'mean':>8}{'SE':>6}")
    for row, accs in pooled.items():
        acc = [100 * float(np.mean(a)) for a in accs]
        mean, se = mean_sem(acc)
        print(f"{row:<16}" + "".join(f"{a:>9.1f}%" for a in acc) + f"{mean:>7.1f}%{se:>6.1f}")
    for m, name in enumerate(names):
        print(f"model {m + 1}: {name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="model files or trained-stage folders")
    ap.add_argument("--seeds", default="9400,9500", help="generator seeds no training run uses")
    ap.add_argument("--n", type=int, default=96, help="heads per seed and row (classes balanced)")
    ap.add_argument("--rows", default="demo")
    ap.add_argument("--thick", type=float, default=3.0, help="slices at least this thick (mm) count as thick")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models, names = [], []
    for path in args.models:
        model, card = load_model(model_file(path))
        models.append((model.eval(), check_spec(card["preprocessing"])))
        names.append(str(path))
    print(f"{'model':<48}{'row':<13}{'seed':>6}{'acc':>7}{'sens':>7}{'spec':>7}"
          f"{'spec<' + format(args.thick, 'g'):>8}{'spec>=':>8}{'p0>=':>7}")
    pooled = {}
    for row in args.rows.split(","):
        pooled[row] = [[] for _ in models]
        for seed in (int(s) for s in args.seeds.split(",")):
            for m, r in enumerate(run(models, names, row, seed, args.n, args.thick)):
                pooled[row][m].append(r["acc"])
                print(f"{r['model'][-48:]:<48}{row:<13}{seed:>6}{100 * r['acc']:>6.1f}%{100 * r['sens']:>6.0f}%"
                      f"{100 * r['spec']:>6.0f}%{100 * r['spec_thin']:>7.0f}%{100 * r['spec_thick']:>7.0f}%"
                      f"{r['p0_thick']:>7.2f}   (lesion-free thin {r['n_thin']}, thick {r['n_thick']})",
                      flush=True)
    summary(pooled, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
