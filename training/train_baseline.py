"""Step 1 of Algorithm 1: train the baseline classifier f (brain MTL CNN or lung ResNet-50).

    python -m training.train_baseline --config training/configs/lung_synth_cpu.json --seed 0
    torchrun --nproc_per_node 4 -m training.train_baseline --config ... --seed 0      # DDP
    python -m training.train_baseline --config ... --seed 0 --resume                  # continue

Paper defaults (Appendix C, authors' code): Adam lr 1e-4, weight decay 5e-5, batch 8, cosine
annealing to 1e-7 over 200 epochs, class-weighted cross-entropy, random left-right flips (a flipped
brain swaps its "left" and "right" labels). Writes <out_dir>/seed<seed>/baseline/model.safetensors
(best on validation) with its model card, plus resume checkpoints and logs.

``--feature-dropout p`` trains the Sec. 4.7 control instead: the baseline with dropout p on the
image features at the stages where ACAT puts its attention masks (folder dropout<p>/).
"""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from training import lesion_loss
from training.cards import build, model_card, save_stage
from training.classifier import fit_classifier
from training.config import HyperParams, base_parser, config_from_args
from training.data import load_splits, run_dir
from training.runtime import Runtime, derive_seed, run_main, seed_everything, started


def add_feature_dropout(model, p: float):
    """Dropout p on the outputs of the trunk stages where ACAT applies attention (Sec. 4.7)."""
    from ACATCore.models.backbones import ATTENTION_STAGES
    for i in ATTENTION_STAGES[model.backbone]:
        model.trunk[i].register_forward_hook(
            lambda mod, inp, out: F.dropout(out, p, training=mod.training))
    return model


def train_baseline(cfg: dict, seed: int, rt: Runtime, resume: bool = False,
                   feature_dropout: float = 0.0, root=None) -> Path:
    """Train one baseline (or feature-dropout control) under root (default: the seed's folder);
    returns the path of its model file."""
    root = Path(root) if root else run_dir(cfg, seed)
    stage = "baseline" if not feature_dropout else f"dropout{feature_dropout:g}"
    folder = root / stage
    section = cfg["baseline"]
    hp = HyperParams.from_config(section)
    splits = load_splits(cfg, rt, seed)

    seed_everything(derive_seed("init", seed, stage))
    model = build(section["model"], section["model_config"], cfg["task"])
    if feature_dropout:
        add_feature_dropout(model, feature_dropout)
    if hp.lesion_loss > 0:
        lesion_loss.attach(model, hp.lesion_layer)      # a training-only head, removed before saving
    rt.log(f"[{stage}] seed {seed}: {section['model']} on {len(splits['train'])} training / "
           f"{len(splits['val'])} validation volumes, {hp.epochs} epochs, device {rt.device}, "
           f"{rt.world_size} process(es)")

    model, metrics = fit_classifier(model, stage, cfg, hp, splits, rt, folder=folder, seed=seed,
                                    resume=resume, needs_saliency=False)
    if hp.lesion_loss > 0:
        lesion_loss.detach(model)

    card = model_card(cfg, stage, seed, splits, metrics,
                      extra={"feature_dropout": feature_dropout} if feature_dropout else None)
    return save_stage(model, folder, card, rt)


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    ap.add_argument("--feature-dropout", type=float, default=0.0,
                    help="Sec. 4.7 control: dropout p at ACAT's attention stages")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        train_baseline(cfg, args.seed, rt, resume=args.resume, feature_dropout=args.feature_dropout)


if __name__ == "__main__":
    run_main(main)
