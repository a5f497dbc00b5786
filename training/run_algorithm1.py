"""All of Algorithm 1, and the paper's tables, from one config file.

    python training/run_algorithm1.py --config training/configs/lung_synth_cpu.json
    torchrun --nproc_per_node 8 training/run_algorithm1.py --config training/configs/brain_paper.json
    python training/run_algorithm1.py --config ... --resume          # continue an interrupted run

For every seed of the config (each seed: its own data split and initialisation):
  1. train the baseline f                                   -> seed<s>/baseline/
  2. train the autoencoder D(E(.))                           -> seed<s>/autoencoder/
  3. counterfactual saliency maps for every volume           -> seed<s>/saliency/
  4. fine-tune ACAT from the baseline with the maps          -> seed<s>/acat/
  then the extras the config asks for: competitors (Table 2), feature-dropout controls (Sec. 4.7),
  limited training data (Table 4: baseline, saliency and ACAT retrained on n volumes).
Finally evaluate.py writes the tables into <out_dir>/tables/.

A stage whose model file already exists is skipped, so rerunning after a crash redoes only what is
missing; with --resume an interrupted stage continues from its last epoch.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
from evaluate import evaluate  # noqa: E402
from make_saliency import make_saliency  # noqa: E402
from train_acat import train_acat  # noqa: E402
from train_autoencoder import train_autoencoder  # noqa: E402
from train_baseline import train_baseline  # noqa: E402


def _done(path: Path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def _saliency_done(root: Path) -> bool:
    return all((root / "saliency" / f"{s}.npy").exists() for s in C.SPLITS)


def run_seed(cfg: dict, seed: int, rt: C.Runtime, resume: bool):
    root = C.run_dir(cfg, seed)
    if not _done(root / "baseline" / "model.safetensors"):
        train_baseline(cfg, seed, rt, resume=resume)
    if not _done(root / "autoencoder" / "model.safetensors"):
        train_autoencoder(cfg, seed, rt, resume=resume)
    if not _saliency_done(root):
        make_saliency(cfg, seed, rt)
    for model in ["acat"] + list(cfg["competitors"]):
        if not _done(root / model / "model.safetensors"):
            train_acat(cfg, seed, rt, model=model, resume=resume)
    for p in cfg["dropout_control"]:
        if not _done(root / f"dropout{p:g}" / "model.safetensors"):
            train_baseline(cfg, seed, rt, resume=resume, feature_dropout=p)
    for n in cfg["limited_data"]:
        sub = copy.deepcopy(cfg)
        sub["data"]["max_train"] = n
        sroot = root / f"limited{n}"
        if not _done(sroot / "baseline" / "model.safetensors"):
            train_baseline(sub, seed, rt, resume=resume, root=sroot)
        if not _saliency_done(sroot):
            make_saliency(sub, seed, rt, root=sroot)
        if not _done(sroot / "acat" / "model.safetensors"):
            train_acat(sub, seed, rt, model="acat", resume=resume, root=sroot)


def run_algorithm1(cfg: dict, rt: C.Runtime, resume: bool = False, seeds=None,
                   tables: bool = True):
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
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue interrupted stages")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the config's)")
    ap.add_argument("--no-tables", action="store_true", help="train only; skip evaluate.py")
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    try:
        run_algorithm1(cfg, rt, resume=args.resume, seeds=args.seeds, tables=not args.no_tables)
    finally:
        C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
