"""Export one seed's models as a model bundle (what ACATCore.checkpoint.load_bundle reads).

    python -m training.export_bundle --config training/configs/lung_synth_cpu.json --seed 0 \
        --dest Resources/models/lung

Writes classifier.safetensors (the baseline), autoencoder.safetensors and acat.safetensors, each
with its model card; the cards gain the test-set metrics from evaluate.py's predictions when
they exist (run training.evaluate first for complete cards).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.cards import load_final
from training.config import base_parser, config_from_args
from training.data import run_dir
from training.runtime import run_main

PARTS = (("classifier", "baseline"), ("autoencoder", "autoencoder"), ("acat", "acat"))


def test_metrics(cfg: dict, seed: int, key: str) -> dict:
    """Accuracy, sensitivity and specificity on the test split, from evaluate's predictions."""
    path = Path(cfg["out_dir"]) / "tables" / "predictions" / f"seed{seed}_{key}.csv"
    if not path.exists():
        return {}
    from ACATCore.metrics import accuracy, sensitivity_specificity
    rows = list(csv.DictReader(path.open()))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([int(r["predicted"]) for r in rows])
    sens, spec = sensitivity_specificity(y, p)
    return {"test_accuracy": accuracy(y, p), "test_sensitivity": sens, "test_specificity": spec,
            "n_test": len(rows)}


def export_bundle(cfg: dict, seed: int, dest) -> Path:
    """Write the bundle into `dest`, check that it loads; returns `dest`."""
    from ACATCore.checkpoint import load_model, save_model
    dest = Path(dest)
    root = run_dir(cfg, seed)
    for part, key in PARTS:
        src = root / key / "model.safetensors"
        model, card = load_final(src, key)
        card = {k: card[k] for k in ("task", "class_names", "preprocessing", "data", "metrics",
                                     "intended_use", "created") if k in card}
        card["metrics"] = {**card.get("metrics", {}), **test_metrics(cfg, seed, key)}
        save_model(model, dest / f"{part}.safetensors", card)
    load_model(dest / "acat.safetensors")        # verify what was written
    return dest


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--dest", required=True, help="bundle folder, e.g. Resources/models/lung")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    print(export_bundle(cfg, args.seed, args.dest))


if __name__ == "__main__":
    run_main(main)
