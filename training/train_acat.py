"""Step 5 of Algorithm 1: fine-tune ACAT (or a competitor) from the baseline, with saliency maps.

    python -m training.train_acat --config training/configs/lung_synth_cpu.json --seed 0
    python -m training.train_acat --config ... --seed 0 --model smic     # a competitor (Table 2)
    torchrun --nproc_per_node 4 -m training.train_acat --config ... --seed 0 [--resume]

Needs the baseline (train_baseline) and the saliency maps (make_saliency) of the same seed.
Both branches of ACAT (and the heads) start from the baseline's weights (paper Appendix C); a
baseline that does not fit the model is an error, never a silent start from random weights. The
competitors SMIC, SalClassNet, HSM (saliency-aided), SpAtt and SeAtt start from the baseline too;
ViT has no convolutional baseline and is trained from scratch (the model card says so).
Defaults: Adam lr 1e-5, weight decay 5e-5, batch 8, cosine to 1e-7 over 100 epochs, class-weighted
cross-entropy, flips (the saliency map is flipped with its image).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ACATCore.errors import ConfigError
from training.cards import build, load_final, model_card, save_stage
from training.classifier import fit_classifier
from training.config import COMPETITORS, HyperParams, base_parser, config_from_args
from training.data import attach_saliency, load_splits, run_dir
from training.make_saliency import maps_precision
from training.runtime import Runtime, derive_seed, run_main, seed_everything, started

TRUNK_KEYS = ("widths", "pool_layers", "block_inplanes", "layers", "contralateral")


def build_from_baseline(cfg: dict, model: str, baseline, baseline_card: dict):
    """(net, how it was initialised): `model` ("acat" or a competitor) built with the baseline's
    trunk and initialised from its weights (ViT, or acat.init_from_baseline false: random)."""
    name = cfg["acat"]["model"] if model == "acat" else model
    trunk = {k: v for k, v in baseline_card.get("model_config", baseline.config).items()
             if k in TRUNK_KEYS}
    if name == "vit":
        size = cfg["data"]["preprocessing"]["size"]
        extra = {"image_size": list(size), **cfg["competitor_config"].get("vit", {})}
    elif model == "acat":
        extra = {**trunk, **cfg["acat"]["model_config"]}
    else:
        extra = {**trunk, **cfg["competitor_config"].get(model, {})}
    net = build(name, extra, cfg["task"])
    if baseline_card.get("task") not in (None, cfg["task"]):
        raise ConfigError(f"the baseline was trained for task {baseline_card.get('task')!r}, "
                          f"this config is for {cfg['task']!r}")
    if name == "vit":
        return net, "random initialisation (ViT has no convolutional baseline)"
    if not cfg["acat"]["init_from_baseline"]:
        return net, "random initialisation (acat.init_from_baseline is false)"
    kept = net.init_from_baseline(baseline)   # raises ConfigError when the families differ
    kept = [k for k in kept if not _widen_input(net, baseline, k)]
    net.fresh_parameters = [k for k in kept if k in dict(net.named_parameters())]   # for acat.new_lr
    missed = [k for k in kept if k.startswith(("trunk.", "sal_trunk.", "heads."))]
    if missed:
        raise ConfigError(f"the baseline's weights do not fit {name} (e.g. {missed[0]} keeps its "
                          "random value); build it with the baseline's config or retrain the baseline")
    return net, "baseline weights (every trunk, saliency-branch and head tensor)"


def _widen_input(net, baseline, key: str) -> bool:
    """SalClassNet reads image and saliency as 2 channels: its first conv gets the baseline's
    filters on the image channel and zeros on the saliency channel (so it starts as the baseline).
    True when `key` was filled that way."""
    src, own = baseline.state_dict().get(key), net.state_dict()[key]
    if src is None or src.dim() != 4 or own.dim() != 4 or src.shape[0] != own.shape[0] \
            or src.shape[2:] != own.shape[2:] or own.shape[1] <= src.shape[1]:
        return False
    with torch.no_grad():
        widened = torch.zeros_like(own)
        widened[:, :src.shape[1]] = src
        net.get_parameter(key).copy_(widened)
    return True


def gate_reach(hp: HyperParams, n_train: int) -> float:
    """How far an identity-start gate g can move from 0 in the whole fine-tuning: Adam moves a tensor
    by at most about its learning rate a step. Below about 1, ACAT cannot depart much from its baseline
    whatever maps it reads (docs/RESULTS.md: at lr 1e-4 even the true lesion masks gave nothing)."""
    steps = hp.epochs * math.ceil(n_train / max(1, hp.batch_size))
    return (hp.new_lr or hp.lr) * steps


def train_acat(cfg: dict, seed: int, rt: Runtime, model: str = "acat", resume: bool = False,
               root=None, baseline_path=None) -> Path:
    """Fine-tune `model` under root (default: the seed's folder) from root's baseline (or
    `baseline_path`); returns the path of its model file."""
    root = Path(root) if root else run_dir(cfg, seed)
    folder = root / model
    hp = HyperParams.from_config(cfg["acat"])
    if model == "vit":        # from scratch: the baseline's schedule, not the fine-tuning one
        hp = dataclasses.replace(hp, lr=cfg["baseline"]["lr"], epochs=cfg["baseline"]["epochs"])
    baseline, bcard = load_final(baseline_path or root / "baseline" / "model.safetensors",
                                 "baseline")
    splits = load_splits(cfg, rt, seed)

    seed_everything(derive_seed("init", seed, model))
    net, init = build_from_baseline(cfg, model, baseline, bcard)
    needs_saliency = bool(getattr(net, "needs_saliency", False))
    if needs_saliency:
        attach_saliency(cfg, seed, splits, root=root)
    rt.log(f"[{model}] seed {seed}: {net.model_name} from {init}; {len(splits['train'])} training "
           f"volumes, {hp.epochs} epochs, lr {hp.lr:g}, {rt.world_size} process(es)")
    reach = gate_reach(hp, len(splits["train"]))
    if getattr(net, "gates", None) is not None and reach < 1.0:
        rt.log(f"[{model}] note: identity start, but its gates can move at most about {reach:.2f} from 0 at "
               "this learning rate: ACAT will stay close to its baseline whatever its maps; set acat.new_lr "
               "(e.g. 0.01)")

    net, metrics = fit_classifier(net, model, cfg, hp, splits, rt, folder=folder, seed=seed,
                                  resume=resume, needs_saliency=needs_saliency)
    if metrics["best_epoch"] == -1:
        rt.log(f"[{model}] no epoch beat the starting weights on validation by more than {hp.start_margin:g}: "
               f"{model} keeps them (best_epoch -1 in its card)")

    saliency = {"method": cfg["saliency"]["method"], "options": cfg["saliency"]["options"],
                "cpu_bf16": cfg["saliency"]["cpu_bf16"], "classifier": "baseline", "autoencoder": "autoencoder",
                "precision": maps_precision(root / "saliency")}     # the precision that ran, not the setting
    card = model_card(cfg, model, seed, splits, metrics,
                      extra={"initialised_from": init,
                             "saliency": saliency if needs_saliency else None})
    return save_stage(net, folder, card, rt)


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="acat", choices=["acat"] + COMPETITORS,
                    help="acat (default) or a competitor of Table 2")
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    ap.add_argument("--baseline", help="baseline model file (default: the seed's baseline)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        train_acat(cfg, args.seed, rt, model=args.model, resume=args.resume,
                   baseline_path=args.baseline)


if __name__ == "__main__":
    run_main(main)
