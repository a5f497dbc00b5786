"""The counterfactual engine (Eq. 4 search) against this machine's own peak: seconds, memory, GFLOP/s.

    python bench/bench_engine.py                  # paper sizes: lung 11x128x128 (ResNet-50), brain 11x400x500
    python bench/bench_engine.py --quick          # small sizes (lung 11x64x64, brain 11x96x120): about 2 min
    python bench/bench_engine.py --tasks lung --rows gd20,fista,early,reference,ig50 --threads 2
    python bench/bench_engine.py --device cuda --rows gd20,fista,early,bf16,compile,reference,ig50   # a GPU

First the machine's matmul peak (GFLOP/s, fp32 and bf16, ``--threads`` threads), then per task one
volume, paper-size models with random weights (BatchNorm statistics set from the input so the nets
respond to it; weights do not change the cost of fixed-step rows), one row per configuration:

  gd20       the paper preset: plain gradient descent, 2 targets x 20 steps, fp32 (fixed steps)
  gd20_chunked  gd20 with the decoder in analyze's own chunks (``pipeline.decode_chunk_for``) on every
             device: what ``acat analyze`` runs; on a CPU every row already chunks, on a GPU the other
             rows run the decoder whole (faster, more memory)
  fista      FISTA with adaptive steps (counterfactual_options.FAST_SEARCH), fixed at the steps it needs to reach GD-20's
             objective on the trained bundles (7, --fista-steps)
  early      gradient descent + early stop at target probability 0.9 (<= 20 steps; analyze's default
             until 2026-12-02, now the fista row's search)
  early_fista  FISTA + early stop 0.9 (<= 20 steps)
  bf16       gd20 under bf16 autocast (this CPU's bf16 path; maps compared on trained bundles elsewhere)
  compile    gd20 with torch.compile of the decode-classify step (compile time included)
  no_cl      gd20 without channels-last memory format
  no_fuse    gd20 without BatchNorm folding
  reference  the unbatched reference loop (one target at a time, weights trainable: the authors' way)
  ig50       Captum Integrated Gradients, 50 steps (our wrapper; internal batch 4)

Each row runs in a fresh process, one after the other in the same invocation (this machine is shared:
rows measured side by side see about the same load; the load average after each row is printed).
Seconds are wall time of the call (models built and warmed up before). Peak memory: the rise of the
process's peak RSS above the RSS just before the call. GFLOP/s: FLOPs counted by
``torch.utils.flop_counter`` on a 1-step and a 2-step run (setup + per step), times the steps run,
over the seconds; the ratio is to the fp32 (bf16 row: bf16) matmul peak. With ``--brain-steps N`` < 20
the brain's fixed-step rows run N steps and are extrapolated to 20 from the measured time per step
(marked ~); ``--lung-steps`` likewise. ``--device cuda``: the same rows on a GPU (peaks of its
matmuls, times after a synchronize, peak memory = torch.cuda.max_memory_allocated). Prints tables;
asserts nothing.
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
sys.path.insert(0, os.path.dirname(__file__))

from training.runtime import native_bf16  # noqa: E402

PAPER_STEPS = 20
EARLY_STOP = 0.9          # the early rows' target probability
SIZES = {"lung": (128, 128), "brain": (400, 500)}
QUICK_SIZES = {"lung": (64, 64), "brain": (96, 120)}
BASE = {"lung": "lung_resnet50", "brain": "brain_mtl"}
ROWS = ("gd20", "gd20_chunked", "fista", "early", "early_fista", "bf16", "compile", "no_cl", "no_fuse", "reference",
        "ig50")
DEFAULT_ROWS = ("gd20", "gd20_chunked", "fista", "early", "early_fista", "reference", "ig50")
STEPPED = ("gd20", "gd20_chunked", "fista", "bf16", "compile", "no_cl", "no_fuse", "reference")


# --------------------------------------------------------------------------------------- machine
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, seconds: float = 2.0, device: str = "cpu") -> tuple:
    """(GFLOP/s, n) of repeated n x n matmuls in ``dtype`` at the current thread count, best of 3
    runs; n is the largest of 256 .. 2048 (GPU: 8192) whose matmul takes under 0.2 s (a CPU without
    native bf16 emulates it, orders of magnitude slower)."""
    n, top = 256, 8192 if device.startswith("cuda") else 2048
    while n < top:
        a = torch.randn(2 * n, 2 * n, device=device).to(dtype)
        start = time.perf_counter()
        torch.mm(a, a)
        _sync(device)
        if time.perf_counter() - start > 0.2:
            break
        n *= 2
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = 0.0
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b)
            reps += 1
            if reps % 16 == 0:
                _sync(device)
        _sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9)
    return best, n


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measured(fn, device: str = "cpu"):
    """-> (result, seconds, peak MiB above the RSS at the start; on a GPU its peak allocation) of fn()."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                        # reset VmHWM to the current RSS
    except OSError:
        pass
    rss0 = _status_kb("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, max(0, _status_kb("VmHWM") - rss0) / 1024


# ------------------------------------------------------------------------------------ child side
def paper_models(task: str, size, channels_last: bool = True, device: str = "cpu"):
    """Paper-size classifier and autoencoder, random weights, BatchNorm statistics from ``x``."""
    from ACATCore.models import build_model
    torch.manual_seed(0)
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    head = ((yy ** 2 + xx ** 2) < 0.7).float() * 0.5
    x = (head + 0.1 * torch.rand(1, 11, 1, h, w)).clamp(0, 1)
    clf, ae = build_model(BASE[task]), build_model("autoencoder")
    for model, arg in ((clf, x[:, 4:7]), (ae, x[0, 4:7])):
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            model(arg)
        model.eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
    return clf.to(device), ae.to(device), x.to(device)


class _Timed(torch.nn.Module):
    """The classifier, with the time of each counterfactual evaluation recorded (in one list shared
    with the copies BatchNorm folding makes of it)."""

    def __init__(self, clf):
        super().__init__()
        self.clf, self.times = clf, []

    def __deepcopy__(self, memo):
        import copy
        new = _Timed(copy.deepcopy(self.clf, memo))
        new.times = self.times
        return new

    def forward(self, x):
        return self.clf(x)

    def counterfactual_logits(self, x):
        self.times.append(time.perf_counter())
        return self.clf.counterfactual_logits(x)


def row_options(row: str, steps: int, fista_steps: int, chunk) -> dict:
    from ACATCore.counterfactual_options import FAST_SEARCH, PAPER_SEARCH
    base = dict(steps=steps, decode_chunk=chunk)
    return {"gd20": base, "gd20_chunked": base, "no_cl": base, "no_fuse": {**base, "fuse": False},
            "bf16": {**base, "precision": "bf16"}, "compile": {**base, "compile": True},
            "fista": dict(base, steps=min(fista_steps, steps), **FAST_SEARCH),
            "early": dict(base, steps=PAPER_STEPS, stop_at=EARLY_STOP, **PAPER_SEARCH),
            "early_fista": dict(base, steps=PAPER_STEPS, stop_at=EARLY_STOP, **FAST_SEARCH)}[row]


class _FlopCount:
    """FLOPs of the aten ops run inside (torch.utils.flop_counter's formulas). FlopCounterMode itself
    tracks modules with hooks that fail under ``torch.autograd.grad`` on a leaf, which the engine uses."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                fn = flop_registry.get(func._overloadpacket)
                if fn is not None:
                    counter.total += fn(*args, **(kwargs or {}), out_val=out)
                return out

        self.total, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def count_flops(clf, ae, x, opts: dict) -> tuple:
    """(FLOPs outside the steps, FLOPs per step) of the search with ``opts``, from 1- and 2-step runs."""
    from ACATCore.counterfactual import generate
    totals = []
    for steps in (1, 2):
        with _FlopCount() as counter:
            generate(clf, ae, x, **{**opts, "steps": steps, "stop_at": None})
        totals.append(counter.total)
    per_step = totals[1] - totals[0]
    return totals[0] - per_step, per_step


def child(task: str, row: str, size, steps: int, fista_steps: int, flops: bool, device: str = "cpu") -> dict:
    from ACATCore.counterfactual import generate
    from ACATCore.pipeline import decode_chunk_for
    cuda = device.startswith("cuda")
    clf, ae, x = paper_models(task, size, channels_last=(row != "no_cl") and not cuda, device=device)
    chunk = None if cuda and row != "gd20_chunked" else decode_chunk_for(x)
    out = {"task": task, "row": row, "size": list(size), "decode_chunk": chunk, "device": device}
    generate(clf, ae, x[:, :2], steps=1)                      # warm-up: allocator, kernels
    if row == "reference":
        from bench_saliency import unbatched_reference
        step_times = []
        _, out["s"], out["peak_mib"] = measured(lambda: unbatched_reference(
            clf, ae, x, steps=steps, on_step=step_times.append), device)
        out["steps"], out["step_s"] = steps, sum(step_times) / max(1, len(step_times))
        out["step_s_per_target"] = True
    elif row == "ig50":
        from ACATCore.saliency import compute_saliency
        _, out["s"], out["peak_mib"] = measured(lambda: compute_saliency("integrated_gradients", clf, x), device)
    else:
        opts = row_options(row, steps, fista_steps, chunk)
        timed = _Timed(clf)
        res, out["s"], out["peak_mib"] = measured(lambda: generate(timed, ae, x, **opts), device)
        out["steps"] = opts["steps"]
        out["steps_taken"] = res.steps_taken.tolist()
        t = timed.times                    # evaluation k+1 starts one full step after evaluation k
        out["step_s"] = (t[-2] - t[1]) / (len(t) - 3) if len(t) > 3 else None
        if flops and row in STEPPED:
            out["flops_setup"], out["flops_step"] = count_flops(clf, ae, x, opts)
    out["load"] = os.getloadavg()[0]
    return out


# ------------------------------------------------------------------------------------ parent side
def run_child(task, row, size, steps, args) -> dict:
    cmd = [sys.executable, __file__, "--child", task, row, str(steps), "--size", f"{size[0]}x{size[1]}",
           "--threads", str(args.threads), "--fista-steps", str(args.fista_steps), "--device", args.device]
    cmd += ["--flops"] if not args.no_flops else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"task": task, "row": row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolated(r: dict, fista_steps: int) -> tuple:
    """(seconds at the row's full steps, extrapolated?): a fixed-step row run with fewer steps (the
    brain's ``--brain-steps``) is extended by its measured time per step."""
    full = fista_steps if r["row"] == "fista" else PAPER_STEPS
    if r["row"] not in STEPPED \
            or r.get("steps") == full or not r.get("step_s"):
        return r["s"], False
    targets = 2 if r["row"] == "reference" else 1        # the reference runs its targets one by one
    return r["s"] + targets * (full - r["steps"]) * r["step_s"], True


def print_task(task, size, rows, peaks, fista_steps):
    print(f"\n== {task}: 11 x {size[0]} x {size[1]}, {BASE[task]} + autoencoder, random weights")
    head = f"{'row':<12}{'s / volume':>12}{'steps':>8}{'s / step':>10}{'peak MiB':>10}{'GFLOP':>9}" \
           f"{'GFLOP/s':>9}{'of peak':>9}{'x gd20':>8}{'load':>6}"
    print(head)
    print("-" * len(head))
    by = {r["row"]: r for r in rows if "error" not in r}
    base = extrapolated(by["gd20"], fista_steps)[0] if "gd20" in by else None
    for r in rows:
        if "error" in r:
            print(f"{r['row']:<12} failed: {r['error']}")
            continue
        s, extra = extrapolated(r, fista_steps)
        full = fista_steps if r["row"] == "fista" else PAPER_STEPS
        mark = "~" if extra else " "
        steps = r.get("steps_taken")
        steps = f"{max(max(v) for v in steps)}" if steps else (f"{r['steps']}" if "steps" in r else "")
        gflop = gfs = ratio = ""
        if "flops_step" in r:
            total = r["flops_setup"] + full * r["flops_step"] if extra else \
                r["flops_setup"] + r["steps"] * r["flops_step"]
            peak = peaks["bf16" if r["row"] == "bf16" else "fp32"]
            gflop, gfs = f"{total / 1e9:.0f}", f"{total / 1e9 / s:.1f}"
            ratio = f"{total / 1e9 / s / peak:.2f}"
        step = f"{r['step_s']:.3f}" if r.get("step_s") else ""
        speed = f"{base / s:.2f}" if base else ""
        print(f"{r['row']:<12}{mark}{s:>11.2f}{steps:>8}{step:>10}{r['peak_mib']:>10.0f}{gflop:>9}{gfs:>9}"
              f"{ratio:>9}{speed:>8}{r['load']:>6.1f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: lung 64x64, brain 96x120")
    ap.add_argument("--tasks", default="lung,brain")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"any of {','.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lung-steps", type=int, default=PAPER_STEPS,
                    help="steps of the lung's fixed-step rows (fewer: extrapolated, marked ~)")
    ap.add_argument("--brain-steps", type=int, default=PAPER_STEPS,
                    help="steps of the brain's fixed-step rows (fewer: extrapolated to 20, marked ~)")
    ap.add_argument("--fista-steps", type=int, default=7, help="steps of the fista row (GD-20's objective)")
    ap.add_argument("--no-flops", action="store_true", help="skip FLOP counting (saves two short runs a row)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (a GPU: no channels-last, no decoder chunks)")
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        task, row, steps = args.child
        size = tuple(int(v) for v in args.size.split("x"))
        print(json.dumps(child(task, row, size, int(steps), args.fista_steps, args.flops, args.device)))
        return 0
    (fp32, n32), (bf16, n16) = [matmul_peak(t, device=args.device) for t in (torch.float32, torch.bfloat16)]
    peaks = {"fp32": fp32, "bf16": bf16}
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"# engine benchmark on {where}: torch {torch.__version__}, {args.threads} threads of {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start; rows one after the other, each a fresh process")
    print(f"# matmul peak: fp32 {fp32:.1f} GFLOP/s ({n32}^2), bf16 {bf16:.1f} GFLOP/s ({n16}^2); "
          f"native bf16 (AVX512-BF16/AMX): {'yes' if native_bf16() else 'no'}")
    report = {"peaks": peaks, "rows": []}
    for task in [t for t in args.tasks.split(",") if t]:
        size = (QUICK_SIZES if args.quick else SIZES)[task]
        rows = []
        for row in [r for r in args.rows.split(",") if r]:
            if row not in ROWS:
                ap.error(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
            steps = args.brain_steps if task == "brain" else args.lung_steps
            rows.append(run_child(task, row, size, steps, args))
            print(f"  done {task} {row}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
            if args.json:                   # after every row: a run cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump({**report, "rows": report["rows"] + rows}, f, indent=2)
        print_task(task, size, rows, peaks, args.fista_steps)
        report["rows"] += rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
