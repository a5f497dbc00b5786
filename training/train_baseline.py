"""Step 1 of Algorithm 1: train the baseline classifier f (brain MTL CNN or lung ResNet-50).

    python training/train_baseline.py --config training/configs/lung_synth_cpu.json --seed 0
    torchrun --nproc_per_node 4 training/train_baseline.py --config ... --seed 0      # DDP
    python training/train_baseline.py --config ... --seed 0 --resume                  # continue

Paper defaults (Appendix C, authors' code): Adam lr 1e-4, weight decay 5e-5, batch 8, cosine
annealing to 1e-7 over 200 epochs, class-weighted cross-entropy, random left-right flips (a flipped
brain swaps its "left" and "right" labels). Writes <out_dir>/seed<seed>/baseline/model.safetensors
(best on validation) with its model card, plus resume checkpoints and logs.

``--feature-dropout p`` trains the Sec. 4.7 control instead: the baseline with dropout p on the
image features at the stages where ACAT puts its attention masks (folder dropout<p>/).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def add_feature_dropout(model, p: float):
    """Dropout p on the outputs of the trunk stages where ACAT applies attention (Sec. 4.7)."""
    from ACATCore.models.backbones import ATTENTION_STAGES
    for i in ATTENTION_STAGES[model.backbone]:
        model.trunk[i].register_forward_hook(
            lambda mod, inp, out: F.dropout(out, p, training=mod.training))
    return model


def train_baseline(cfg: dict, seed: int, rt: C.Runtime, resume: bool = False,
                   feature_dropout: float = 0.0, root=None) -> Path:
    """Train one baseline; returns the path of its model file."""
    root = Path(root) if root else C.run_dir(cfg, seed)
    stage = "baseline" if not feature_dropout else f"dropout{feature_dropout:g}"
    folder = root / stage
    hp = dict(cfg["baseline"])
    splits = C.load_splits(cfg, rt, seed)
    C.seed_everything(C.derive_seed("init", seed, stage))
    model = C.build(hp["model"], hp["model_config"], cfg)
    if feature_dropout:
        add_feature_dropout(model, feature_dropout)
    rt.log(f"[{stage}] seed {seed}: {hp['model']} on {len(splits['train'])} training / "
           f"{len(splits['val'])} validation volumes, {hp['epochs']} epochs, device {rt.device}, "
           f"{rt.world_size} process(es)")
    stage_def = C.classifier_stage(stage, cfg, hp, splits, seed, model.num_classes, False, rt)
    model, metrics, best_epoch = C.fit(model, stage_def, splits, hp, cfg, rt, folder, seed,
                                       resume=resume)
    path = folder / "model.safetensors"
    if rt.is_main:
        card = C.model_card(cfg, stage, seed, splits,
                            {"val_accuracy": metrics.get("accuracy"), "best_epoch": best_epoch},
                            extra={"feature_dropout": feature_dropout} if feature_dropout else None)
        C.save_final(model, path, card)
        rt.log(f"[{stage}] saved {path}")
    rt.barrier()
    return path


def main(argv=None):
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    ap.add_argument("--feature-dropout", type=float, default=0.0,
                    help="Sec. 4.7 control: dropout p at ACAT's attention stages")
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    try:
        train_baseline(cfg, args.seed, rt, resume=args.resume, feature_dropout=args.feature_dropout)
    finally:
        C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
