"""Step 1 of Algorithm 1 (second half): train the autoencoder D(E(.)) that the counterfactuals
move through.

    python -m training.train_autoencoder --config training/configs/lung_synth_cpu.json --seed 0

The autoencoder works on single slices: a batch is `autoencoder.batch_size` slices drawn from all
slices of the training volumes (random left-right flips), loss = mean squared reconstruction error,
Adam, cosine schedule. Validation score = -MSE on the validation volumes' slices. Writes
<out_dir>/seed<seed>/autoencoder/model.safetensors and its card.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.augment import flip_decisions
from training.cards import build, model_card, save_stage
from training.config import HyperParams, base_parser, config_from_args
from training.data import DataSet, load_splits, run_dir
from training.loop import Stage, fit
from training.runtime import Runtime, autocast, derive_seed, run_main, seed_everything, started, unwrap


class SliceSet:
    """The slices of a DataSet's volumes, as one flat list of (volume, slice) pairs."""

    def __init__(self, ds: DataSet):
        self.ds = ds
        self.slices = ds.array("x").shape[1]

    def __len__(self):
        return len(self.ds) * self.slices

    def get(self, flat) -> torch.Tensor:
        """(N, 1, H, W) slices at flat positions volume * slices + slice."""
        flat = np.asarray(flat)
        vol, sl = flat // self.slices, flat % self.slices
        x = self.ds.array("x")
        g = self.ds.indices[vol]
        return torch.from_numpy(np.stack([np.asarray(x[gi, si], np.float32)
                                          for gi, si in zip(g, sl)]))


def autoencoder_stage(hp: HyperParams, seed: int) -> Stage:
    """Mean squared reconstruction error of flipped slices; validation score -MSE."""
    def get_batch(slices: SliceSet, pos, epoch):
        x = slices.get(pos)
        flips = flip_decisions(pos, hp.flip, seed, epoch)
        x[flips] = x[flips].flip(-1)
        return {"x": x}

    def loss(model, batch, rt):
        return F.mse_loss(model(batch["x"]).float(), batch["x"])

    @torch.no_grad()
    def validate(model, slices: SliceSet, rt):
        m = unwrap(model)
        m.eval()
        n = len(slices)
        total = torch.zeros(2, dtype=torch.float64, device=rt.device)
        mine = np.arange(rt.rank, n, rt.world_size)
        for start in range(0, len(mine), hp.batch_size):
            x = slices.get(mine[start:start + hp.batch_size]).to(rt.device)
            with autocast(rt):
                rec = m(x).float()
            total[0] += F.mse_loss(rec, x, reduction="sum").double()
            total[1] += x.numel()
        if rt.distributed:
            dist.all_reduce(total)
        m.train()
        mse = float(total[0] / total[1].clamp_min(1))
        return {"score": -mse, "mse": mse}

    return Stage("autoencoder", loss, validate, get_batch)


def train_autoencoder(cfg: dict, seed: int, rt: Runtime, resume: bool = False,
                      root=None) -> Path:
    """Train the seed's autoencoder under root (default: the seed's folder); its model file."""
    root = Path(root) if root else run_dir(cfg, seed)
    folder = root / "autoencoder"
    section = cfg["autoencoder"]
    hp = HyperParams.from_config(section)
    splits = load_splits(cfg, rt, seed)
    slices = {k: SliceSet(v) for k, v in splits.items()}

    seed_everything(derive_seed("init", seed, "autoencoder"))
    model = build(section["model"], section["model_config"], cfg["task"])
    rt.log(f"[autoencoder] seed {seed}: {len(slices['train'])} training slices, {hp.epochs} "
           f"epochs, device {rt.device}, {rt.world_size} process(es)")

    model, metrics, best_epoch, ran = fit(model, autoencoder_stage(hp, seed), slices, hp, rt,
                                          folder=folder, seed=seed, resume=resume,
                                          tensorboard=cfg["runtime"]["tensorboard"])

    card = model_card(cfg, "autoencoder", seed, splits,
                      {"val_mse": metrics.get("mse"), "best_epoch": best_epoch, "epochs_run": ran})
    return save_stage(model, folder, card, rt)


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        train_autoencoder(cfg, args.seed, rt, resume=args.resume)


if __name__ == "__main__":
    run_main(main)
