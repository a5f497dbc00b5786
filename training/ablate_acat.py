"""One ablation of ACAT: retrain it with other saliency maps or another schedule, same seed's baseline.

    python -m training.ablate_acat --config training/configs/brain_synth_demo.json --seed 0 --name neg015 \
        --set 'saliency.options={"optimizer": "fista", "schedule": "adaptive", "steps": 7, "alpha": 100,
               "target": 0, "scale": 0.15}'
    python -m training.ablate_acat --config ... --seed 0 --name paper100 --set acat.epochs=100 --set acat.lr=1e-5
    python -m training.ablate_acat --config ... --seed 0 --name config      # the seed's own ACAT, scored only
    python -m training.ablate_acat --summary runs/brain_synth_demo/ablations.jsonl

Needs the seed's baseline and autoencoder (training.run_algorithm1). The variant lives under
<seed>/ablation_<name>/: its own saliency maps when its `saliency` section differs from the one the
seed's ACAT was trained with (else a link to the seed's maps), and its ACAT. Prints, and appends to
<out_dir>/ablations.jsonl, the validation and test accuracy, sensitivity and specificity of the
baseline and of this ACAT: every row of a table compares ACAT with the same baseline on the same
split. --summary prints the table (mean and standard error over seeds, per-seed ACAT - baseline).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ACATCore.errors import ConfigError
from ACATCore.metrics import accuracy, mean_sem, sensitivity_specificity
from training.cards import load_final
from training.classifier import predict
from training.config import base_parser, config_from_args, load_config
from training.data import attach_saliency, load_splits, run_dir, saliency_done
from training.make_saliency import make_saliency
from training.runtime import run_main, started
from training.train_acat import train_acat


def scores(model, ds, rt, needs_saliency: bool) -> dict:
    """Accuracy, and sensitivity / specificity of "any finding", of `model` on the split `ds`."""
    probs, y = predict(model, ds, rt, needs_saliency)
    pred = probs.argmax(1).numpy()
    sens, spec = sensitivity_specificity(y.numpy(), pred)
    return {"accuracy": accuracy(y.numpy(), pred), "sensitivity": sens, "specificity": spec}


def same_maps(cfg: dict, base_cfg: dict, seed_dir: Path) -> bool:
    """Whether `cfg` asks for the maps the seed's ACAT was trained with (its card says how they were
    made; without one, the config file's saliency section)."""
    card = seed_dir / "acat" / "model.json"
    if card.exists():
        used = json.loads(card.read_text())["data"]["training"]["saliency"] or {}
        wanted = cfg["saliency"]
        return ((used.get("method"), used.get("options"), used.get("cpu_bf16", False))
                == (wanted["method"], wanted["options"], wanted["cpu_bf16"]))
    return cfg["saliency"] == base_cfg["saliency"]


def prepare_variant(cfg: dict, base_cfg: dict, seed: int, rt, name: str) -> Path:
    """The variant's folder with its maps (new ones, or a link to the seed's) and its trained ACAT."""
    seed_dir = run_dir(cfg, seed)
    if name == "config":
        return seed_dir
    root = seed_dir / f"ablation_{name}"
    root.mkdir(parents=True, exist_ok=True)
    if same_maps(cfg, base_cfg, seed_dir) and not (root / "saliency").exists():
        (root / "saliency").symlink_to((seed_dir / "saliency").resolve())
    if not saliency_done(root):
        make_saliency(cfg, seed, rt, root=root, classifier_path=seed_dir / "baseline" / "model.safetensors")
    if not (root / "acat" / "model.safetensors").exists():
        train_acat(cfg, seed, rt, root=root, baseline_path=seed_dir / "baseline" / "model.safetensors")
    return root


def ablate(cfg: dict, base_cfg: dict, seed: int, rt, name: str) -> dict:
    """Train the variant if needed and score it against the seed's baseline on val and test."""
    root = prepare_variant(cfg, base_cfg, seed, rt, name)
    splits = load_splits(cfg, rt, seed)
    attach_saliency(cfg, seed, splits, root=root)
    baseline, _ = load_final(run_dir(cfg, seed) / "baseline" / "model.safetensors", "baseline")
    acat, _ = load_final(root / "acat" / "model.safetensors", "ACAT")
    baseline, acat = rt.place(baseline), rt.place(acat)
    record = {"name": name, "seed": seed, "task": cfg["task"], "saliency": cfg["saliency"]["options"],
              "acat": {k: cfg["acat"][k] for k in ("epochs", "lr")}}
    for split in ("val", "test"):
        record[split] = {"baseline": scores(baseline, splits[split], rt, False),
                         "acat": scores(acat, splits[split], rt, True)}
    return record


def summary(path: Path) -> str:
    """Markdown table of an ablations.jsonl: the latest record per (name, seed)."""
    recs = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        recs[(r["name"], r["seed"])] = r
    lines = ["| variant | seeds | baseline test | ACAT test | ACAT - baseline (per seed) | ACAT val | "
             "ACAT sens / spec | baseline sens / spec |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(n for n, _ in recs):
        rs = [recs[k] for k in sorted(k for k in recs if k[0] == name)]
        get = lambda split, m, k: np.array([r[split][m][k] for r in rs]) * 100
        tb, ta = get("test", "baseline", "accuracy"), get("test", "acat", "accuracy")
        (mb, sb), (ma, sa) = mean_sem(tb), mean_sem(ta)
        lines.append(f"| {name} | {len(rs)} | {mb:.1f} ({sb:.1f}) | {ma:.1f} ({sa:.1f}) | "
                     f"{(ta - tb).mean():+.1f} ({', '.join(f'{d:+.1f}' for d in ta - tb)}) | "
                     f"{get('val', 'acat', 'accuracy').mean():.1f} | "
                     f"{get('test', 'acat', 'sensitivity').mean():.0f} / "
                     f"{get('test', 'acat', 'specificity').mean():.0f}% | "
                     f"{get('test', 'baseline', 'sensitivity').mean():.0f} / "
                     f"{get('test', 'baseline', 'specificity').mean():.0f}% |")
    return "\n".join(lines)


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--name", help="the variant's name (its folder: <seed>/ablation_<name>); "
                                   "'config' scores the seed's own ACAT")
    ap.add_argument("--summary", type=Path, help="print the table of an ablations.jsonl and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return
    if args.set and not args.name:
        raise ConfigError("--set makes a variant: give it a --name (its folder is <seed>/ablation_<name>)")
    cfg = config_from_args(args)
    base_cfg = load_config(args.config)
    with started(cfg) as rt:
        record = ablate(cfg, base_cfg, args.seed, rt, args.name or "config")
    print(json.dumps(record))
    with open(Path(cfg["out_dir"]) / "ablations.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    run_main(main)
