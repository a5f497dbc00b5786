"""End-to-end ``acat analyze`` per stage, at the paper's model sizes, on this machine's CPU.

Models: lung = ResNet-50 baseline + ACAT (11 x 128 x 128), brain = MTL CNN + ACAT (11 x 400 x 500),
and the paper's autoencoder; randomly initialised (BatchNorm statistics set from the input so the nets
respond to it) unless ``--bundle-dir`` holds shipped bundles ``lung/`` and ``brain/``.
Inputs: lung = slicerio's real chest CT (34 slices); brain = an ACAT-Synth head CT (34 slices).

Each configuration runs in a fresh process (so peak memory is its own): per-stage seconds from
``AnalysisResult.timings`` and the process's peak RSS. Configurations:
  sampled   the paper's single sampling of 11 slices (the unit the targets are about), analyze's
            defaults (early stop at target probability 0.9, BatchNorm folded, decoder chunked)
  fixed     sampled, no early stop: the paper's fixed 2 targets x 20 steps
  full      every slice seen (several offset samplings), analyze's defaults
  bf16      sampled, counterfactual search in bf16 (precision="bf16"; maps compared with fp32 by
            bf16_check, and on the trained demo bundles by the report's check)
  reference the unbatched reference loop of the counterfactual search (one target at a time,
            weights not frozen so parameter gradients are computed too, fp32, as the authors' code)
A profile (top operators of one counterfactual step) is printed per task.
With ``--steps N`` < 20 the counterfactual stage is run with N steps and extrapolated to 20
(marked ``~``) from the measured time per step (progress events at each classifier evaluation);
the rest is measured. Prints tables; asserts nothing.

    python bench/bench_analyze.py [--tasks lung,brain] [--configs sampled,fixed,bf16,reference,profile]
                                  [--steps 20] [--brain-steps 3] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

PAPER_STEPS = 20
TARGETS = {"lung": (5.0, 2.5), "brain": (30.0, 2.5)}   # seconds, GB
SPECS = {
    "lung": {"window": [-1000.0, 400.0], "slices": 11, "size": [128, 128], "orientation": "LPS-axial",
             "midline": None},
    "brain": {"window": [0.0, 80.0], "slices": 11, "size": [400, 500], "orientation": "LPS-axial",
              "midline": "center"},
}


# ------------------------------------------------------------------------------------ child side
def input_path(task: str, folder: Path) -> Path:
    if task == "lung":
        import slicerio
        return Path(os.path.dirname(slicerio.__file__)) / "data" / "CTChest4.nrrd"
    path = folder / "bench_head.nrrd"
    if not path.exists():
        from ACATCore.data.synth import make_case
        from ACATCore.io import write_volume
        from ACATCore.volume import Volume
        case = make_case("brain", seed=7, index=0, label=1, size_group="IS-3")
        write_volume(Volume(case["image"], spacing=case["spacing"], origin=case["origin"]), path)
    return path


def paper_bundle(task: str, path: Path, bundle_dir: str | None):
    """The shipped bundle if asked for and present, else paper-size models with random weights."""
    import torch
    if bundle_dir and (Path(bundle_dir) / task / "acat.safetensors").exists():
        from ACATCore.checkpoint import load_bundle
        return load_bundle(Path(bundle_dir) / task), "shipped weights"
    from ACATCore.io import read_volume
    from ACATCore.models import build_model, calibrate_batchnorm
    from ACATCore.preprocessing import prepare
    from ACATCore.tasks import CLASS_NAMES
    torch.manual_seed(0)
    base = "lung_resnet50" if task == "lung" else "brain_mtl"
    classifier = build_model(base)
    acat = build_model(f"acat_{task}")
    autoencoder = build_model("autoencoder")
    # BatchNorm statistics from 3 slices of the input (few, to keep this set-up out of the peak memory)
    x = prepare(read_volume(path), SPECS[task]).tensor[None, 4:7]
    for model, args in ((classifier, (x,)), (autoencoder, (x[0],)), (acat, (x, torch.rand_like(x)))):
        calibrate_batchnorm(model, [args])
    card = {"task": task, "model_name": f"acat_{task}", "class_names": list(CLASS_NAMES[task]),
            "preprocessing": SPECS[task], "sha256": None}
    return types.SimpleNamespace(classifier=classifier, autoencoder=autoencoder, acat=acat, card=card), \
        "random weights"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # Linux: kB


def reference_loop(bundle, x, steps: int, alpha: float, step_size: float = 0.1) -> tuple:
    """The unbatched reference of bench_saliency (one target at a time, weights not frozen, fp32);
    returns (seconds, seconds per step, targets)."""
    import torch
    from bench_saliency import unbatched_reference
    with torch.no_grad():
        n_targets = bundle.classifier.counterfactual_logits(x).shape[1]
    step_times = []
    start = time.perf_counter()
    unbatched_reference(bundle.classifier, bundle.autoencoder, x, steps=steps, alpha=alpha,
                        step_size=step_size, on_step=step_times.append)
    return time.perf_counter() - start, sum(step_times) / max(len(step_times), 1), n_targets


def profile_step(bundle, x, top: int = 8) -> str:
    """Top operators (self CPU time) of two counterfactual steps."""
    from torch.profiler import ProfilerActivity, profile
    from ACATCore.counterfactual import generate
    from ACATCore.pipeline import decode_chunk_for, load_models
    bundle = load_models(bundle, "cpu")            # frozen, channels-last: as analyze runs it
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(bundle.classifier, bundle.autoencoder, x, steps=2, decode_chunk=decode_chunk_for(x))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


def bf16_equivalence(bundle, x, steps: int) -> dict:
    """fp32 vs bf16-autocast counterfactual saliency on the same input."""
    from ACATCore.counterfactual import generate
    from ACATCore.pipeline import counterfactual_saliency
    maps = {}
    for name in ("fp32", "bf16"):
        start = time.perf_counter()
        res = generate(bundle.classifier, bundle.autoencoder, x, steps=steps, precision=name)
        seconds = time.perf_counter() - start
        cf = res.counterfactuals.float().transpose(0, 1)
        maps[name] = (counterfactual_saliency(cf, res.reconstruction.float())[0, :, 0].numpy(), seconds,
                      res.final_probabilities.float().numpy())
    import numpy as np
    a, b = maps["fp32"][0], maps["bf16"][0]
    top_a, top_b = a >= np.percentile(a, 95), b >= np.percentile(b, 95)
    peak_a = np.array(np.unravel_index(a.argmax(), a.shape))
    peak_b = np.array(np.unravel_index(b.argmax(), b.shape))
    return {"pearson": float(np.corrcoef(a.ravel(), b.ravel())[0, 1]),
            "top5_iou": float((top_a & top_b).sum() / max((top_a | top_b).sum(), 1)),
            "peak_same_slice": bool(peak_a[0] == peak_b[0]),
            "peak_distance_px": float(np.linalg.norm(peak_a[1:] - peak_b[1:])),
            "fp32_s": maps["fp32"][1], "bf16_s": maps["bf16"][1],
            "target_prob_fp32": maps["fp32"][2].round(3).tolist(),
            "target_prob_bf16": maps["bf16"][2].round(3).tolist()}


def step_cost(times: list, steps: int) -> dict:
    """Seconds per counterfactual step from the progress events of the counterfactual stage: two
    at its start, then one per classifier evaluation (steps + 2 per engine run), one at its end.
    Within a run, evaluations 1 .. steps+1 are one full step apart (backward, update, decode,
    classify)."""
    calls = times[2:-1]
    runs = len(calls) // (steps + 2) if steps > 0 else 0
    if runs == 0 or len(calls) != runs * (steps + 2):
        return {}
    per_step = [(calls[r * (steps + 2) + steps + 1] - calls[r * (steps + 2) + 1]) / steps for r in range(runs)]
    return {"cf_runs": runs, "cf_step_s": sum(per_step) / runs}


def child(task: str, config: str, steps: int, threads: int, bundle_dir, workdir: Path) -> dict:
    import torch
    torch.set_num_threads(threads)
    from ACATCore.pipeline import analyze
    from ACATCore.preprocessing import prepare
    from ACATCore.io import read_volume
    path = input_path(task, workdir)
    bundle, weights = paper_bundle(task, path, bundle_dir)
    row = {"task": task, "config": config, "steps": steps, "weights": weights, "threads": threads,
           "rss_before_gb": peak_rss_gb()}
    x = prepare(read_volume(path), bundle.card["preprocessing"]).tensor[None]
    if config == "reference":
        cpu0 = time.process_time()
        row["counterfactuals_s"], row["cf_step_s"], row["cf_runs"] = reference_loop(bundle, x, steps, 100.0)
        row["cpu_s"] = time.process_time() - cpu0
    elif config == "profile":
        row["profile"] = profile_step(bundle, x)
    elif config == "bf16_check":
        row.update(bf16_equivalence(bundle, x, steps))
    else:
        out = workdir / f"out_{task}_{config}"
        kwargs = dict(model=bundle, coverage="full" if config == "full" else "sampled", steps=steps,
                      device="cpu", out=out, overwrite=True)
        if config == "fixed":
            kwargs["early_stop"] = None
        if config == "bf16":
            kwargs["counterfactual_options"] = {"precision": "bf16"}
        events = []
        kwargs["progress"] = lambda stage, fraction: events.append((stage, time.perf_counter()))
        start, cpu0 = time.perf_counter(), time.process_time()
        result = analyze(path, **kwargs)
        row["total_s"] = time.perf_counter() - start
        row["cpu_s"] = time.process_time() - cpu0
        row["early_stop"] = result.settings.get("early_stop")
        row.update(step_cost([t for stage, t in events if stage == "counterfactuals"], steps))
        row.update({f"{k}_s": v for k, v in result.timings.items()})
        row["samplings"] = len(result.settings["offsets"])
        row["slices_seen"] = f"{len(result.slices_seen)}/{result.input.shape[0]}"
    row["peak_rss_gb"] = peak_rss_gb()
    row["load_avg"] = os.getloadavg()[0]
    return row


# ------------------------------------------------------------------------------------ parent side
STAGE_COLS = ["read", "preprocess", "classify", "counterfactuals", "attention", "map back", "write"]


def run_child(task, config, steps, args) -> dict:
    cmd = [sys.executable, __file__, "--child", task, config, str(steps), "--threads", str(args.threads),
           "--workdir", args.workdir] + (["--bundle-dir", args.bundle_dir] if args.bundle_dir else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"task": task, "config": config, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolate(row: dict) -> dict:
    """The counterfactual stage extrapolated from ``steps`` to 20 steps."""
    steps = row.get("steps", PAPER_STEPS)
    if steps == PAPER_STEPS or "counterfactuals_s" not in row or row.get("early_stop") is not None:
        return row
    new = dict(row)
    if "cf_step_s" in row:        # measured cost per step x the steps not run
        new["counterfactuals_s"] = row["counterfactuals_s"] + row["cf_runs"] * (PAPER_STEPS - steps) * row["cf_step_s"]
    else:                         # crude: the whole stage scaled
        new["counterfactuals_s"] = row["counterfactuals_s"] * (PAPER_STEPS + 1) / (steps + 1)
    if "total_s" in row:
        new["total_s"] = row["total_s"] + new["counterfactuals_s"] - row["counterfactuals_s"]
    new["extrapolated"] = True
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="lung,brain")
    ap.add_argument("--configs", default="sampled,fixed,bf16,reference,profile",
                    help="any of sampled,fixed,full,bf16,bf16_check,reference,profile (full costs "
                    "samplings x sampled: opt in)")
    ap.add_argument("--steps", type=int, default=PAPER_STEPS, help="counterfactual steps for lung")
    ap.add_argument("--brain-steps", type=int, default=3, help="counterfactual steps for brain (extrapolated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bundle-dir", default=None, help="folder with lung/ and brain/ bundles (default: random)")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "results" / "analyze_work"))
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=3, metavar=("TASK", "CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.child:
        task, config, steps = args.child
        row = child(task, config, int(steps), args.threads, args.bundle_dir, Path(args.workdir))
        print(json.dumps(row))
        return 0

    import torch
    print(f"acat analyze benchmark: torch {torch.__version__}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs ({platform.machine()}), load average {os.getloadavg()[0]:.1f}")
    rows = []
    for task in [t for t in args.tasks.split(",") if t]:
        steps = args.steps if task == "lung" else args.brain_steps
        size = SPECS[task]["size"]
        card = Path(args.bundle_dir or "") / task / "acat.json"
        if args.bundle_dir and card.exists():       # shipped weights: their own input size
            size = json.loads(card.read_text())["preprocessing"]["size"]
        print(f"\n== {task}: 11 x {size[0]} x {size[1]} model input, "
              f"{steps} counterfactual steps{' (stage extrapolated to 20: ~)' if steps != PAPER_STEPS else ''}")
        head = f"{'config':<11}" + "".join(f"{c[:8]:>9}" for c in STAGE_COLS) + \
            f"{'total s':>9}{'CPU s':>9}{'peak GB':>9}{'load':>6}  note"
        print(head)
        print("-" * len(head))
        task_rows = {}
        for config in [c for c in args.configs.split(",") if c]:
            if config in ("sampled", "full", "bf16") and steps != PAPER_STEPS:
                print(f"{config:<11}(early stop at 0.9 by default: {steps} steps are not extrapolated)")
            if config == "early" and steps != PAPER_STEPS:
                print(f"{config:<11}skipped: early stopping needs the full {PAPER_STEPS} steps (--steps/--brain-steps)")
                continue
            raw = run_child(task, config, steps, args)
            row = extrapolate(raw)
            rows.append(row)
            task_rows[config] = row
            if "error" in row:
                print(f"{config:<11}failed: {row['error']}")
                continue
            if config == "profile":
                print(f"{config:<11}(top operators of 2 counterfactual steps below)")
                continue
            if config == "bf16_check":
                print(f"{config:<11}bf16 vs fp32 saliency: pearson {row['pearson']:.3f}, top-5% IoU "
                      f"{row['top5_iou']:.2f}, peak same slice {row['peak_same_slice']}, peak moved "
                      f"{row['peak_distance_px']:.0f} px; cf search {row['fp32_s']:.1f} s -> {row['bf16_s']:.1f} s "
                      f"({steps} steps)")
                continue
            mark = "~" if row.get("extrapolated") else " "
            cells = "".join(f"{row[c + '_s']:>9.2f}" if f"{c}_s" in row else f"{'':>9}" for c in STAGE_COLS)
            cells = cells if config != "reference" else \
                f"{'':>36}{mark}{row['counterfactuals_s']:>8.2f}{'':>27}"
            total = f"{mark}{row['total_s']:>8.2f}" if "total_s" in row else f"{'':>9}"
            total += f"{row['cpu_s']:>9.2f}" if "cpu_s" in row else f"{'':>9}"
            note = row.get("weights", "")
            if config != "reference":
                note += f", early stop {row.get('early_stop')}"
            if "samplings" in row:
                note += f", {row['samplings']} sampling(s), slices seen {row['slices_seen']}"
            print(f"{config:<11}{cells}{total}{row['peak_rss_gb']:>9.2f}{row.get('load_avg', 0):>6.1f}  {note}",
                  flush=True)
        ref, samp = task_rows.get("reference"), task_rows.get("fixed") or task_rows.get("sampled")
        if ref and samp and "error" not in ref and "error" not in samp:
            print(f"counterfactual search, unbatched reference / ours ({samp['config']}): "
                  f"{ref['counterfactuals_s']:.1f} s / {samp['counterfactuals_s']:.1f} s = "
                  f"{ref['counterfactuals_s'] / samp['counterfactuals_s']:.2f}x")
        if samp and "error" not in samp:
            target_s, target_gb = TARGETS[task]
            ok_s = "met" if samp["total_s"] <= target_s else "NOT met"
            ok_gb = "met" if samp["peak_rss_gb"] <= target_gb else "NOT met"
            print(f"target {target_s:.0f} s per volume (sampled): {ok_s} ({samp['total_s']:.1f} s); "
                  f"peak memory {target_gb} GB: {ok_gb} ({samp['peak_rss_gb']:.2f} GB)")
        prof = task_rows.get("profile")
        if prof and "profile" in prof:
            print(prof["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
