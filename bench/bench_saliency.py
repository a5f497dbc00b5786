"""Saliency benchmark: wall time and peak memory per volume for every method, as ratios to ours.

    python bench/bench_saliency.py                       # lung 11x128x128 (ResNet-50) + brain 11x400x500
    python bench/bench_saliency.py --rows counterfactual integrated_gradients unbatched --scorecam-channels 2048

One volume, the same (untrained, seeded) models for every method: the lung ResNet-50 baseline and the
autoencoder from ACATCore.models. Rows: every method of ACATCore.saliency (Integrated Gradients with
Captum's 50 steps), plus the unbatched reference loop (one target at a time, the volume's slices as one
batch, plain fp32 autograd with ``loss.backward()`` and every weight trainable, so parameter gradients
are computed too, exactly as the authors' code does: their weights are not frozen), ours with early
stopping at target probability 0.9 and ours in bf16. Then ours on a brain volume (brain MTL,
11x400x500), also with early stopping. Wall AND CPU seconds are reported (the machine may be shared;
the load average is printed), at ``--threads`` torch threads (default 2).
Prints a table; never asserts. Weights do not matter for cost, except that latent shift's lambda search
length depends on the classifier's response (reported as it happened).

Each row runs in a fresh process (models built, a small warm-up, then the measured call), so that one
method's freed-but-retained heap does not hide the next one's. Peak memory: on CUDA
torch.cuda.max_memory_allocated; on CPU the rise of the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs) above the resident set just before the call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ACATCore.counterfactual import generate            # noqa: E402
from ACATCore.models import build_model                 # noqa: E402
from ACATCore.saliency import METHODS, compute_saliency  # noqa: E402


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(fn, device):
    """-> (seconds, peak MiB above the start, CPU seconds) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                    # reset VmHWM to the current RSS
        except OSError:
            pass
        start = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    c0 = time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kb("VmHWM") * 1024
    return dt, max(0, peak - start) / 2 ** 20, cpu


def unbatched_reference(clf, ae, x, steps=20, alpha=100.0, step_size=0.1, on_step=None):
    """The authors' way: one target at a time, each a separate optimisation over the volume's slices
    (one slice batch), ``loss.backward()`` with every weight trainable (parameter gradients are
    computed and accumulated, as in their code, whose weights are not frozen), fp32, no fusion.
    ``on_step(seconds)`` is called after every step (bench_analyze times steps with it)."""
    import torch.nn.functional as F
    for p in list(clf.parameters()) + list(ae.parameters()):
        p.requires_grad_(True)
    B, S, _, H, W = x.shape
    with torch.no_grad():
        z0 = ae.encode(x.reshape(B * S, 1, H, W))
        ref = ae.decode(z0)
        n_targets = clf.counterfactual_logits(x).shape[1]
    maps = []
    for t in range(n_targets):
        z = z0.clone().requires_grad_(True)
        target = torch.full((B,), t, dtype=torch.long, device=x.device)
        for _ in range(steps):
            t0 = time.perf_counter()
            clf.zero_grad(set_to_none=True)
            ae.zero_grad(set_to_none=True)
            logits = clf.counterfactual_logits(ae.decode(z).reshape(B, S, 1, H, W))
            loss = F.cross_entropy(logits, target) + alpha * (z - z0).abs().mean()
            loss.backward()
            with torch.no_grad():
                z -= step_size * z.grad
            z.grad = None
            if on_step is not None:
                on_step(time.perf_counter() - t0)
        with torch.no_grad():
            d = (ref - ae.decode(z)).abs()
        maps.append(d / d.amax().clamp_min(1e-12))
    return torch.stack(maps).mean(0)


ROWS = list(METHODS) + ["unbatched", "early", "bf16", "brain", "brain_early"]


def run_row(row, device, scorecam_channels, seed):
    """Build the models and one volume, warm up, measure one row -> (label, seconds, MiB)."""
    torch.manual_seed(seed)
    ae = build_model("autoencoder").to(device).eval()
    if row.startswith("brain"):
        clf = build_model("brain_mtl").to(device).eval()
        x = torch.rand(1, 11, 1, 400, 500, device=device)
    else:
        clf = build_model("lung_resnet50").to(device).eval()
        x = torch.rand(1, 11, 1, 128, 128, device=device)
    if device.type == "cpu" and row != "unbatched":      # as the pipeline runs them (load_models)
        ae.to(memory_format=torch.channels_last)
        clf.to(memory_format=torch.channels_last)
    compute_saliency("gradient", clf, x[:, :2])          # warm-up (allocator, kernels)
    opts = {"max_channels": scorecam_channels} if row == "scorecam" else {}
    if row == "unbatched":
        fn, label = (lambda: unbatched_reference(clf, ae, x)), "unbatched reference loop (ours, one target at a time)"
    elif row == "early":
        fn, label = (lambda: compute_saliency("counterfactual", clf, x, ae, stop_at=0.9)), \
            "counterfactual, early stop at p=0.9"
    elif row == "bf16":
        fn, label = (lambda: compute_saliency("counterfactual", clf, x, ae, precision="bf16")), \
            "counterfactual, bf16"
    elif row == "brain":
        from ACATCore.pipeline import decode_chunk_for
        fn, label = (lambda: compute_saliency("counterfactual", clf, x, ae, decode_chunk=decode_chunk_for(x))), \
            "counterfactual, BRAIN 11x400x500 (brain_mtl, decoder in chunks)"
    elif row == "brain_early":
        from ACATCore.pipeline import decode_chunk_for
        fn, label = (lambda: compute_saliency("counterfactual", clf, x, ae, decode_chunk=decode_chunk_for(x),
                                              stop_at=0.9)), \
            "counterfactual, BRAIN, early stop at p=0.9"
    else:
        fn, label = (lambda: compute_saliency(row, clf, x, ae, **opts)), row
        label += f" ({scorecam_channels} of 2048 channels)" if row == "scorecam" else ""
        label += " (Captum, 50 steps)" if row == "integrated_gradients" else ""
    dt, mem, cpu = measure(fn, device)
    return label, dt, mem, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS)
    ap.add_argument("--scorecam-channels", type=int, default=256,
                    help="Score-CAM channels kept (ResNet-50 has 2048; cost is linear in it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (this machine has 2 cores)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.child:                                    # one row in a fresh process: clean peak memory
        label, dt, mem, cpu = run_row(args.child, device, args.scorecam_channels, args.seed)
        print("ROW " + json.dumps([label, dt, mem, cpu]))
        return
    print(f"# saliency benchmark on {device} ({torch.get_num_threads()} CPU threads of {os.cpu_count()}), "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    print("# lung_resnet50 + autoencoder on one 11x1x128x128 volume (brain row: brain_mtl, 11x1x400x500);")
    print("# each row in a fresh process; ratios are to ours (counterfactual, lung)")
    rows = []
    for row in args.rows:
        out = subprocess.run([sys.executable, __file__, "--child", row, "--device", args.device,
                              "--scorecam-channels", str(args.scorecam_channels), "--seed", str(args.seed),
                              "--threads", str(args.threads)],
                             capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = [l for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if not line:
            print(f"  {row} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[0][4:]) + [os.getloadavg()[0]])
        print(f"  done {rows[-1][0]}: {rows[-1][1]:.1f} s", file=sys.stderr, flush=True)
    ours = next((r for r in rows if r[0] == "counterfactual"), None)
    print("\n| method | wall s / volume | CPU s | peak memory (MiB) | wall ratio to ours | CPU ratio to ours "
          "| memory ratio to ours | load avg after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, dt, mem, cpu, load in rows:
        tr = f"{dt / ours[1]:.2f}" if ours else "-"
        cr = f"{cpu / ours[3]:.2f}" if ours and ours[3] > 0 else "-"
        mr = f"{mem / ours[2]:.2f}" if ours and ours[2] > 0 else "-"
        print(f"| {label} | {dt:.2f} | {cpu:.2f} | {mem:.0f} | {tr} | {cr} | {mr} | {load:.1f} |")


if __name__ == "__main__":
    main()
