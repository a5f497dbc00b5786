"""Accuracy of one saved classifier on a split of a config's data, by size group (no saliency needed).

    python training/score_test_split.py --config training/configs/lung_synth_demo.json \
        --model Resources/models/lung/classifier.safetensors [--split test] [--seed 0]

Uses the config's prepared data (<out_dir>/cache, written by any training script of that config)
and the run seed's stratified split; prints accuracy overall and per size group (0: no lesion;
brain 1..4: IS-1..IS-4 of the first lesion; lung 1..3: LS-1..LS-3).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def main(argv=None):
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a classifier .safetensors (baseline / bundle)")
    ap.add_argument("--split", default="test", choices=list(C.SPLITS))
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    model, _ = C.load_final(Path(args.model), "classifier")
    model = model.to(rt.device).eval()
    splits = C.load_splits(cfg, rt, args.seed)
    ds = splits[args.split]
    size = np.load(ds.cache / "size.npy")[ds.indices]
    preds = []
    with torch.no_grad():
        for s in range(0, len(ds), 16):
            out = model(ds.get(list(range(s, min(s + 16, len(ds)))))["x"].to(rt.device))
            out = out[0] if isinstance(out, tuple) else out
            preds.append(out.argmax(1).cpu().numpy())
    p, y = np.concatenate(preds), ds.labels
    print(f"{args.model}: {args.split} accuracy {100 * (p == y).mean():.1f}% ({(p == y).sum()}/{len(y)})")
    for g in np.unique(size):
        k = size == g
        print(f"  size group {g}: {100 * (p[k] == y[k]).mean():.1f}% ({(p[k] == y[k]).sum()}/{k.sum()})")
    C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
