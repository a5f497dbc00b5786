"""The classifier's operating point: would moving its "lesion / finding" threshold help, read on validation?

    OMP_NUM_THREADS=1 python bench/bench_operating_point.py --config runs/brain_mix/config.json --seeds 0 1 \
        [--model baseline|acat] [--offsets 0,0.5,1,1.5,2,3]

For each run seed, the trained classifier's class probabilities on its validation and test splits are
recomputed with the log-odds of "any lesion" (brain: 1 - p(no lesion); lung: p(findings)) raised by each
offset, the split between the lesion classes kept (brain: p(left | lesion) etc. unchanged). An offset of 0
is the model as trained and shipped; a positive one trades specificity for sensitivity. Columns: 4-class
(or 2-class) accuracy, lesion-or-not sensitivity and specificity, "side": of the lesions found, the share
given the right class (brain: left, right or both; 100% on lung), and on brain the test sensitivity per
size group of the lesions (IS-1..IS-4; the demo recipes' larger lesions count as IS-4). The last line per
seed names the offset best on validation and its test accuracy: the only honest way to pick one.
Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACATCore.errors import ACATError                          # noqa: E402
from ACATCore.metrics import accuracy, sensitivity_specificity  # noqa: E402
from training.cards import load_final                          # noqa: E402
from training.classifier import predict                        # noqa: E402
from training.config import load_config                        # noqa: E402
from training.data import attach_saliency, load_splits, run_dir  # noqa: E402
from training.runtime import started                           # noqa: E402


def shifted(probs: np.ndarray, offset: float) -> np.ndarray:
    """(N, C) probabilities with the log-odds of "not class 0" raised by ``offset``; the positive classes keep
    their shares of the positive probability."""
    p = np.clip(np.asarray(probs, np.float64), 1e-9, 1.0)
    positive = np.clip(1.0 - p[:, 0], 1e-9, 1.0)
    q = 1.0 / (1.0 + np.exp(-(np.log(positive) - np.log(p[:, 0]) + offset)))
    return np.concatenate([(1.0 - q)[:, None], q[:, None] * p[:, 1:] / positive[:, None]], axis=1)


def scores(probs: np.ndarray, labels: np.ndarray, sizes=None) -> dict:
    """Accuracy, sensitivity, specificity (and per size group sensitivity when ``sizes`` is given)."""
    pred = probs.argmax(1)
    sens, spec = sensitivity_specificity(labels, pred)
    found = (labels > 0) & (pred > 0)
    out = {"acc": accuracy(labels, pred), "sens": sens, "spec": spec, "side": accuracy(labels[found], pred[found])}
    for g in range(1, 5) if sizes is not None else ():
        hit = pred[(labels > 0) & (np.minimum(sizes, 4) == g)] > 0
        out[f"IS-{g}"] = np.mean(hit) if hit.size else np.nan
    return out


def seed_probabilities(cfg: dict, rt, seed: int, which: str) -> dict:
    """{split: (probabilities (N, C), labels (N,), size groups (N,))} for validation and test."""
    model, _ = load_final(run_dir(cfg, seed) / which / "model.safetensors", which)
    splits = load_splits(cfg, rt, seed)
    needs = bool(getattr(model, "needs_saliency", False))
    if needs:
        attach_saliency(cfg, seed, splits)
    model = rt.place(model)
    out = {}
    for name in ("val", "test"):
        probs, labels = predict(model, splits[name], rt, needs)
        sizes = splits[name].array("size")                     # None for a datalist without size groups
        out[name] = (probs.numpy(), labels.numpy(), None if sizes is None else sizes[splits[name].indices])
    return out


def print_seed(seed: int, data: dict, offsets: list, brain: bool) -> None:
    groups = [f"IS-{g}" for g in range(1, 5)] if brain else []      # "-" where the sizes are unknown
    best = max(offsets, key=lambda b: scores(shifted(data["val"][0], b), data["val"][1])["acc"])
    for b in offsets:
        cells = []
        for name in ("val", "test"):
            probs, labels, sizes = data[name]
            s = scores(shifted(probs, b), labels, sizes if groups and name == "test" else None)
            cells += [f"{100 * s[k]:.1f}%" for k in ("acc", "sens", "spec", "side")]
        cells += [f"{100 * s[g]:.0f}%" if np.isfinite(s.get(g, np.nan)) else "-" for g in groups]
        print(f"| {seed} | {b:g} | " + " | ".join(cells) + " |")
    test = scores(shifted(data["test"][0], best), data["test"][1])["acc"]
    print(f"| {seed} | best on validation: {best:g} | test {100 * test:.1f}% |" + " |" * (7 + len(groups)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a finished run's config (its cache and trained stages)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="baseline", choices=("baseline", "acat"))
    ap.add_argument("--offsets", default="0,0.5,1,1.5,2,3", help="log-odds offsets to try (0: as trained)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    cfg["runtime"]["threads"] = args.threads
    offsets = [float(b) for b in args.offsets.split(",")]
    brain = cfg["task"] == "brain"
    groups = " | IS-1 | IS-2 | IS-3 | IS-4 (test sensitivity)" if brain else ""
    print(f"| seed | offset | val acc | val sens | val spec | val side | test acc | test sens | test spec | test side"
          f"{groups} |")
    print("|---" * (10 + 4 * brain) + "|")
    with started(cfg) as rt:
        rt.progress = False
        for seed in args.seeds:
            print_seed(seed, seed_probabilities(cfg, rt, seed, args.model), offsets, brain)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ACATError as e:                      # an unfinished run: say which stage to train first
        raise SystemExit(f"error: {e}")
