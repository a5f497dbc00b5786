"""Step 5 of Algorithm 1: fine-tune ACAT (or a competitor) from the baseline, with saliency maps.

    python training/train_acat.py --config training/configs/lung_synth_cpu.json --seed 0
    python training/train_acat.py --config ... --seed 0 --model smic     # a competitor (Table 2)
    torchrun --nproc_per_node 4 training/train_acat.py --config ... --seed 0 [--resume]

Needs the baseline (train_baseline.py) and the saliency maps (make_saliency.py) of the same seed.
Both branches of ACAT (and the heads) start from the baseline's weights (paper Appendix C); a
baseline that does not fit the model is an error, never a silent start from random weights. The
competitors SMIC, SalClassNet, HSM (saliency-aided), SpAtt and SeAtt start from the baseline too;
ViT has no convolutional baseline and is trained from scratch (the model card says so).
Defaults: Adam lr 1e-5, weight decay 5e-5, batch 8, cosine to 1e-7 over 100 epochs, class-weighted
cross-entropy, flips (the saliency map is flipped with its image).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
from ACATCore.errors import ConfigError  # noqa: E402

TRUNK_KEYS = ("widths", "pool_layers", "block_inplanes", "layers")


def build_from_baseline(cfg: dict, model: str, baseline, baseline_card: dict):
    """Build `model` ("acat" or a competitor) with the baseline's trunk, initialised from it."""
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
    net = C.build(name, extra, cfg)
    if baseline_card.get("task") not in (None, cfg["task"]):
        raise ConfigError(f"the baseline was trained for task {baseline_card.get('task')!r}, "
                          f"this config is for {cfg['task']!r}")
    if name == "vit" or not cfg["acat"]["init_from_baseline"]:
        return net, "random initialisation (ViT has no convolutional baseline)" \
            if name == "vit" else "random initialisation (acat.init_from_baseline is false)"
    kept = net.init_from_baseline(baseline)   # raises ConfigError when the families differ
    kept = [k for k in kept if not _widen_input(net, baseline, k)]
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


def train_acat(cfg: dict, seed: int, rt: C.Runtime, model: str = "acat", resume: bool = False,
               root=None, baseline_path=None) -> Path:
    root = Path(root) if root else C.run_dir(cfg, seed)
    folder = root / model
    hp = dict(cfg["acat"])
    if model == "vit":        # from scratch: the baseline's schedule, not the fine-tuning one
        hp.update({k: cfg["baseline"][k] for k in ("lr", "epochs")})
    baseline_path = baseline_path or root / "baseline" / "model.safetensors"
    baseline, bcard = C.load_final(baseline_path, "baseline")
    splits = C.load_splits(cfg, rt, seed)
    C.seed_everything(C.derive_seed("init", seed, model))
    net, init = build_from_baseline(cfg, model, baseline, bcard)
    needs_saliency = bool(getattr(net, "needs_saliency", False))
    if needs_saliency:
        C.attach_saliency(cfg, seed, splits, root=root)
    rt.log(f"[{model}] seed {seed}: {net.model_name} from {init}; {len(splits['train'])} training "
           f"volumes, {hp['epochs']} epochs, lr {hp['lr']:g}, {rt.world_size} process(es)")
    stage = C.classifier_stage(model, cfg, hp, splits, seed, net.num_classes, needs_saliency, rt)
    net, metrics, best_epoch = C.fit(net, stage, splits, hp, cfg, rt, folder, seed,
                                     resume=resume)
    path = folder / "model.safetensors"
    if rt.is_main:
        card = C.model_card(cfg, model, seed, splits,
                            {"val_accuracy": metrics.get("accuracy"), "best_epoch": best_epoch},
                            extra={"initialised_from": init,
                                   "saliency": {"method": cfg["saliency"]["method"],
                                                "options": cfg["saliency"]["options"],
                                                "classifier": "baseline", "autoencoder": "autoencoder"}
                                   if needs_saliency else None})
        C.save_final(net, path, card)
        rt.log(f"[{model}] saved {path}")
    rt.barrier()
    return path


def main(argv=None):
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="acat", choices=["acat"] + C.COMPETITORS,
                    help="acat (default) or a competitor of Table 2")
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    ap.add_argument("--baseline", help="baseline model file (default: the seed's baseline)")
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    try:
        train_acat(cfg, args.seed, rt, model=args.model, resume=args.resume,
                   baseline_path=args.baseline)
    finally:
        C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
