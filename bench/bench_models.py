"""Parameter counts and CPU time per volume of every model at the paper's input sizes.

Brain (IST-3): 11 slices of 400 x 500; lung (MosMed): 11 slices of 128 x 128; one volume per pass.
The autoencoder runs on the 11 slices of one volume. Times are the median of ``--repeats`` runs after
one warm-up, with ``torch.set_num_threads(--threads)`` (2 by default). Prints a table; asserts nothing.

    python bench/bench_models.py [--repeats 3] [--threads 2] [--only brain_mtl,acat_lung] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from ACATCore.models import build_model

SIZES = {"brain": (11, 400, 500), "lung": (11, 128, 128)}
# (label, model name, backbone, extra config)
CASES = [
    ("brain_mtl", "brain_mtl", "brain", {}),
    ("acat_brain", "acat_brain", "brain", {}),
    ("smic", "smic", "brain", {"backbone": "brain"}),
    ("salclassnet", "salclassnet", "brain", {"backbone": "brain"}),
    ("hsm", "hsm", "brain", {"backbone": "brain"}),
    ("spatt", "spatt", "brain", {"backbone": "brain"}),
    ("seatt", "seatt", "brain", {"backbone": "brain"}),
    ("vit", "vit", "brain", {"backbone": "brain"}),
    ("autoencoder", "autoencoder", "brain", {}),
    ("lung_resnet50", "lung_resnet50", "lung", {}),
    ("acat_lung", "acat_lung", "lung", {}),
    ("smic", "smic", "lung", {"backbone": "lung"}),
    ("salclassnet", "salclassnet", "lung", {"backbone": "lung"}),
    ("hsm", "hsm", "lung", {"backbone": "lung"}),
    ("spatt", "spatt", "lung", {"backbone": "lung"}),
    ("seatt", "seatt", "lung", {"backbone": "lung"}),
    ("vit", "vit", "lung", {"backbone": "lung"}),
    ("autoencoder", "autoencoder", "lung", {}),
]


def _call(model, x, sal):
    if model.model_name == "autoencoder":
        return model(x[0])  # the slices of one volume, (S, 1, H, W)
    return model(x, sal) if model.needs_saliency else model(x)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(name, backbone, config, repeats):
    torch.manual_seed(0)
    model = build_model(name, **config)
    params = sum(p.numel() for p in model.parameters())
    s, h, w = SIZES[backbone]
    x = torch.rand(1, s, 1, h, w)
    sal = torch.rand_like(x)

    model.eval()

    def forward():
        with torch.no_grad():
            _call(model, x, sal)

    model.train()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        _call(model, x, sal).float().pow(2).mean().backward()

    model.eval()
    t_fwd = _median_time(forward, repeats)
    model.train()
    t_fb = _median_time(forward_backward, repeats)
    return {"model": name, "backbone": backbone, "input": f"{s}x{h}x{w}", "params": params,
            "forward_s": t_fwd, "forward_backward_s": t_fb}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--backbone", choices=["brain", "lung", "both"], default="both")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = {n for n in args.only.split(",") if n}
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} runs, one volume per pass")
    header = f"{'model':<14}{'backbone':<9}{'input (SxHxW)':<15}{'params':>12}{'forward s':>11}{'fwd+bwd s':>11}"
    print(header)
    print("-" * len(header))
    for label, name, backbone, config in CASES:
        if (only and label not in only) or (args.backbone != "both" and backbone != args.backbone):
            continue
        row = bench_case(name, backbone, config, args.repeats)
        rows.append(row)
        print(f"{label:<14}{backbone:<9}{row['input']:<15}{row['params']:>12,}{row['forward_s']:>11.3f}"
              f"{row['forward_backward_s']:>11.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
