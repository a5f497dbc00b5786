"""Training throughput at the paper's resolutions: baseline and ACAT, bf16 on a GPU.

    python bench/gpu_train_check.py                     # GPU: 300 steps per model, bf16 autocast
    python bench/gpu_train_check.py --steps 2 --small   # CPU smoke run (known to work without a GPU)

For each model (lung ResNet-50 and lung ACAT at 11 x 128 x 128; brain MTL and brain ACAT at
11 x 400 x 500; the autoencoder on 128 slices) it runs `--steps` optimiser steps of the training
loop of training/loop.py (Adam, class-weighted cross-entropy, batch 8 volumes) on random inputs
and prints volumes (or slices) per second after `--warmup` steps, and the peak GPU memory. A
prepared check for a GPU machine: it prints a table and asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ACATCore.models import build_model  # noqa: E402

# (label, model name, build config, input (S, H, W), batch, needs_saliency, kind)
PAPER = [
    ("lung baseline (ResNet-50)", "lung_resnet50", {}, (11, 128, 128), 8, False, "volumes"),
    ("lung ACAT", "acat_lung", {}, (11, 128, 128), 8, True, "volumes"),
    ("brain baseline (MTL CNN)", "brain_mtl", {}, (11, 400, 500), 8, False, "volumes"),
    ("brain ACAT", "acat_brain", {}, (11, 400, 500), 8, True, "volumes"),
    ("autoencoder (128 x 128 slices)", "autoencoder", {}, (1, 128, 128), 32, False, "slices"),
]
SMALL = {"lung_resnet50": {"block_inplanes": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
         "acat_lung": {"block_inplanes": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
         "brain_mtl": {"widths": [8, 8, 16, 16, 32, 32, 32]},
         "acat_brain": {"widths": [8, 8, 16, 16, 32, 32, 32]},
         "autoencoder": {"stem_channels": 8, "blocks_per_stage": 1}}


def run(label, name, config, shape, batch, needs_saliency, kind, args, device):
    torch.manual_seed(0)
    if args.small:
        config = SMALL[name]
        s, h, w = shape
        shape = (s, min(h, 64), min(w, 64))
        batch = 2
    model = build_model(name, **config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-5)
    s, h, w = shape
    if name == "autoencoder":
        x = torch.rand(batch, 1, h, w, device=device)
    else:
        x = torch.rand(batch, s, 1, h, w, device=device)
    sal = torch.rand_like(x) if needs_saliency else None
    y = torch.randint(0, getattr(model, "num_classes", 2), (batch,), device=device)
    weights = torch.ones(getattr(model, "num_classes", 2), device=device)
    bf16 = device.type == "cuda" and not args.fp32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if name == "autoencoder":
                loss = F.mse_loss(model(x).float(), x)
            else:
                out = model(x, sal) if needs_saliency else model(x)
                loss = (F.cross_entropy(out.float(), y, reduction="none") * weights[y]).mean()
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss = float(loss.detach())     # forces the last step to finish
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"model": label, "input": f"{batch} x {s} x {h} x {w}", "params_M": params,
            "per_s": args.steps * batch / dt, "kind": kind, "peak_GiB": peak, "loss": loss,
            "precision": "bf16 autocast" if bf16 else "fp32"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="timed optimiser steps per model")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    ap.add_argument("--small", action="store_true",
                    help="tiny widths, <= 64 x 64 slices, batch 2 (a CPU smoke run)")
    ap.add_argument("--models", help="comma-separated subset of: lung_resnet50, acat_lung, "
                                     "brain_mtl, acat_brain, autoencoder")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    wanted = set(args.models.split(",")) if args.models else None
    rows = []
    for spec in PAPER:
        if wanted and spec[1] not in wanted:
            continue
        r = run(*spec, args, device)
        rows.append(r)
        print(f"{r['model']:32s} {r['input']:>20s} {r['params_M']:7.2f} M params "
              f"{r['per_s']:9.2f} {r['kind']}/s  peak {r['peak_GiB']:.2f} GiB  ({r['precision']})",
              flush=True)
    print("\n| model | batch x S x H x W | params (M) | throughput | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['params_M']:.2f} | {r['per_s']:.1f} {r['kind']}/s "
              f"| {r['peak_GiB']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
