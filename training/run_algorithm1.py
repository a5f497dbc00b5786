"""All of Algorithm 1, and the paper's tables, from one config file.

    python -m training.run_algorithm1 --config training/configs/lung_synth_cpu.json
    torchrun --nproc_per_node 8 -m training.run_algorithm1 --config training/configs/brain_paper.json
    python -m training.run_algorithm1 --config ... --resume          # continue an interrupted run

For every seed of the config (each seed: its own data split and initialisation):
  1. train the baseline f                                   -> seed<s>/baseline/
  2. train the autoencoder D(E(.))                           -> seed<s>/autoencoder/
  3. counterfactual saliency maps for every volume           -> seed<s>/saliency/
  4. fine-tune ACAT from the baseline with the maps          -> seed<s>/acat/
  then the extras the config asks for: competitors (Table 2), feature-dropout controls (Sec. 4.7),
  limited training data (Table 4: baseline, saliency and ACAT retrained on n volumes).
Finally evaluate writes the tables into <out_dir>/tables/.

Every step runs in this process (the functions of the step scripts). A stage whose model file
already exists is skipped, so rerunning after a crash redoes only what is missing; with --resume
an interrupted stage continues from its last epoch.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from training.config import base_parser, config_from_args
from training.data import run_dir, saliency_done
from training.evaluate import evaluate
from training.make_saliency import make_saliency
from training.runtime import Runtime, run_main, started
from training.train_acat import train_acat
from training.train_autoencoder import train_autoencoder
from training.train_baseline import train_baseline


def _done(root: Path, stage: str) -> bool:
    """Whether root/stage has its final model file and card."""
    path = root / stage / "model.safetensors"
    return path.exists() and path.with_suffix(".json").exists()


def run_seed(cfg: dict, seed: int, rt: Runtime, resume: bool):
    """Every missing stage of one run seed, in the order of Algorithm 1, then the extras."""
    root = run_dir(cfg, seed)
    if not _done(root, "baseline"):
        train_baseline(cfg, seed, rt, resume=resume)
    if not _done(root, "autoencoder"):
        train_autoencoder(cfg, seed, rt, resume=resume)
    if not saliency_done(root):
        make_saliency(cfg, seed, rt)
    for model in ["acat"] + list(cfg["competitors"]):
        if not _done(root, model):
            train_acat(cfg, seed, rt, model=model, resume=resume)
    for p in cfg["dropout_control"]:
        if not _done(root, f"dropout{p:g}"):
            train_baseline(cfg, seed, rt, resume=resume, feature_dropout=p)
    for n in cfg["limited_data"]:          # Table 4: the seed's autoencoder, all else retrained
        sub = copy.deepcopy(cfg)
        sub["data"]["max_train"] = n
        sroot = root / f"limited{n}"
        if not _done(sroot, "baseline"):
            train_baseline(sub, seed, rt, resume=resume, root=sroot)
        if not saliency_done(sroot):
            make_saliency(sub, seed, rt, root=sroot)
        if not _done(sroot, "acat"):
            train_acat(sub, seed, rt, model="acat", resume=resume, root=sroot)


def run_algorithm1(cfg: dict, rt: Runtime, resume: bool = False, seeds=None,
                   tables: bool = True):
    """Every seed (or `seeds`), then the tables (evaluate's {name: markdown}; None if not asked)."""
    out = Path(cfg["out_dir"])
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for seed in seeds or cfg["seeds"]:
        run_seed(cfg, seed, rt, resume)
    if tables:
        return evaluate(cfg, rt, seeds=seeds)
    return None


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue interrupted stages")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the config's)")
    ap.add_argument("--no-tables", action="store_true", help="train only; skip evaluate")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        run_algorithm1(cfg, rt, resume=args.resume, seeds=args.seeds, tables=not args.no_tables)


if __name__ == "__main__":
    run_main(main)
