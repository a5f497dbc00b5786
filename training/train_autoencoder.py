"""Step 1 of Algorithm 1 (second half): train the autoencoder D(E(.)) that the counterfactuals
move through.

    python training/train_autoencoder.py --config training/configs/lung_synth_cpu.json --seed 0

The autoencoder works on single slices: a batch is `autoencoder.batch_size` slices drawn from all
slices of the training volumes (random left-right flips), loss = mean squared reconstruction error,
Adam, cosine schedule. Validation score = -MSE on the validation volumes' slices. Writes
<out_dir>/seed<seed>/autoencoder/model.safetensors and its card.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


class SliceSet:
    """The slices of a DataSet's volumes, as one flat list of (volume, slice) pairs."""

    def __init__(self, ds: C.DataSet):
        self.ds = ds
        self.slices = ds.array("x").shape[1]

    def __len__(self):
        return len(self.ds) * self.slices

    def get(self, flat) -> torch.Tensor:
        flat = np.asarray(flat)
        vol, sl = flat // self.slices, flat % self.slices
        x = self.ds.array("x")
        g = self.ds.indices[vol]
        return torch.from_numpy(np.stack([np.asarray(x[gi, si], np.float32)
                                          for gi, si in zip(g, sl)]))   # (N, 1, H, W)


def autoencoder_stage(hp: dict, seed: int) -> C.Stage:
    def get_batch(slices: SliceSet, pos, epoch):
        x = slices.get(pos)
        flips = C.flip_decisions(pos, hp.get("flip", 0.0), seed, epoch)
        x[flips] = x[flips].flip(-1)
        return {"x": x}

    def loss(model, batch, rt):
        return F.mse_loss(model(batch["x"]).float(), batch["x"])

    @torch.no_grad()
    def validate(model, slices: SliceSet, rt):
        m = C.unwrap(model)
        m.eval()
        n = len(slices)
        total = torch.zeros(2, dtype=torch.float64, device=rt.device)
        mine = np.arange(rt.rank, n, rt.world_size)
        for start in range(0, len(mine), hp["batch_size"]):
            x = slices.get(mine[start:start + hp["batch_size"]]).to(rt.device)
            with C.autocast(rt):
                rec = m(x).float()
            total[0] += F.mse_loss(rec, x, reduction="sum").double()
            total[1] += x.numel()
        if rt.distributed:
            dist.all_reduce(total)
        m.train()
        mse = float(total[0] / total[1].clamp_min(1))
        return {"score": -mse, "mse": mse}

    return C.Stage("autoencoder", loss, validate, get_batch)


def train_autoencoder(cfg: dict, seed: int, rt: C.Runtime, resume: bool = False,
                      root=None) -> Path:
    root = Path(root) if root else C.run_dir(cfg, seed)
    folder = root / "autoencoder"
    hp = dict(cfg["autoencoder"])
    splits = C.load_splits(cfg, rt, seed)
    slices = {k: SliceSet(v) for k, v in splits.items()}
    C.seed_everything(C.derive_seed("init", seed, "autoencoder"))
    model = C.build(hp["model"], hp["model_config"], cfg)
    rt.log(f"[autoencoder] seed {seed}: {len(slices['train'])} training slices, {hp['epochs']} "
           f"epochs, device {rt.device}, {rt.world_size} process(es)")
    model, metrics, best_epoch = C.fit(model, autoencoder_stage(hp, seed), slices, hp, cfg, rt,
                                       folder, seed, resume=resume)
    path = folder / "model.safetensors"
    if rt.is_main:
        card = C.model_card(cfg, "autoencoder", seed, splits,
                            {"val_mse": metrics.get("mse"), "best_epoch": best_epoch})
        C.save_final(model, path, card)
        rt.log(f"[autoencoder] saved {path}")
    rt.barrier()
    return path


def main(argv=None):
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    try:
        train_autoencoder(cfg, args.seed, rt, resume=args.resume)
    finally:
        C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
