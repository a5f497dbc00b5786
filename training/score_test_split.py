"""Accuracy of one saved classifier on a split of a config's data, by size group (no saliency needed).

    python -m training.score_test_split --config training/configs/lung_synth_demo.json \
        --model Resources/models/lung/classifier.safetensors [--split test] [--seed 0]

Uses the config's prepared data (<out_dir>/cache, written by any training script of that config)
and the run seed's stratified split; prints accuracy overall and per size group (0: no lesion;
brain 1..4: IS-1..IS-4 of the first lesion; lung 1..3: LS-1..LS-3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.cards import load_final
from training.config import base_parser, config_from_args
from training.data import SPLITS, DataSet, load_splits
from training.runtime import run_main, started


def predictions(model, ds: DataSet, device) -> np.ndarray:
    """Predicted class of every volume of `ds` (the first output of models that return several)."""
    preds = []
    with torch.no_grad():
        for s in range(0, len(ds), 16):
            out = model(ds.get(list(range(s, min(s + 16, len(ds)))))["x"].to(device))
            out = out[0] if isinstance(out, tuple) else out
            preds.append(out.argmax(1).cpu().numpy())
    return np.concatenate(preds)


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a classifier .safetensors (baseline / bundle)")
    ap.add_argument("--split", default="test", choices=list(SPLITS))
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        model, _ = load_final(Path(args.model), "classifier")
        ds = load_splits(cfg, rt, args.seed)[args.split]
        p, y = predictions(rt.place(model).eval(), ds, rt.device), ds.labels
    size = np.load(ds.cache / "size.npy")[ds.indices]
    print(f"{args.model}: {args.split} accuracy {100 * (p == y).mean():.1f}% ({(p == y).sum()}/{len(y)})")
    for g in np.unique(size):
        k = size == g
        print(f"  size group {g}: {100 * (p[k] == y[k]).mean():.1f}% ({(p[k] == y[k]).sum()}/{k.sum()})")


if __name__ == "__main__":
    run_main(main)
