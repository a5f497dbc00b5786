"""Faithfulness of every saliency method on a trained run: deletion / insertion AUC and the
model-randomisation sanity check (issue 12, item 1). Prints tables; asserts nothing; writes nothing
unless --json is given.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_saliency_faithfulness.py \\
        --config training/configs/brain_synth_demo.json --seed 0 --cases 12 [--json s0.json]
    python bench/bench_saliency_faithfulness.py --combine s0.json s1.json s2.json   # one table over seeds

For the run's seed: the baseline classifier and the autoencoder of <out_dir>/seed<seed>/, the first
--cases positive test cases with a lesion mask (the cases, in the order, of training/evaluate.py's
saliency tables). Each map is made exactly as training/evaluate.py makes it (its ``_saliency_map``:
counterfactual with the config's saliency options and target 0, the negative counterfactual of
Sec. 4.4; every other method explains class 1, the lesion / findings class).

- Deletion AUC (Petsiuk et al. 2018): the most salient voxels are replaced first by a reference, in
  --steps equal steps of all model-input voxels (S x H x W), and the softmax probability of class 1
  of the head the maps explain (brain: the lesion head [no lesion, lesion]; lung: [normal, findings])
  is followed; area under it over the removed fraction [0, 1]. Lower is better. Insertion AUC: from
  the reference, the most salient voxels put back first; higher is better. Ties (e.g. a map's zeros)
  in a seeded random order. References (--reference, the first one gets the full table):
  "zero" (default first): 0, the window floor and the background value of the [0, 1] inputs (RISE's
  deletion choice); "blur": the input blurred in-plane (Gaussian, --blur-sigma px; RISE's insertion
  choice). Which one removes evidence is measured, not assumed: each table states the model's
  probability on the input and on the all-reference volume. On the brain demo model a blurred brain
  scores P(lesion) = 1.00 (blur reads as lesion), so blur cannot serve as "removed" there; zeros give
  0.30, below the negatives' typical 0.4-0.6. On lung both work (0.04 zero, 0.06 blur).
- Sanity check (Adebayo et al. 2018, model parameter randomisation, full, not cascading): Spearman
  rank correlation, over all voxels, between each method's map from the trained classifier and from
  a copy of it with every parameter re-initialised (PyTorch's default initialisation, the one training
  started from; fixed seed) and its BatchNorm statistics re-estimated on --bn-volumes training volumes
  (no labels). Without that re-estimation the re-initialised brain model is a constant function (its
  logits vary by ~1e-6 between inputs), so the latent-space methods return empty maps and the check
  compares with nothing (--bn-volumes 0 shows it). The autoencoder of counterfactual / latent shift /
  NoRec stays trained. Passes when the mean rho < 0.5. Also shown: rho over the foreground (x > 0)
  only, since maps that are (near) zero on the background with both models rank the background
  lowest in both, which alone makes rho high (the pass column gives both verdicts). A
  constant map (nothing to rank) gives no rho and is counted in the last column.
- Reference rows (no map to compute): "random" (uniform noise as the map: what no information gives)
  and "lesion mask" (the ground-truth mask, ties in random order: an oracle of localisation).
- Hit: the pointing game of training/evaluate.py (ACATCore.metrics.is_hit on
  training.evaluate.lesion_region), for context.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ACATCore import metrics                                             # noqa: E402
from ACATCore.counterfactual import steerable_logits                     # noqa: E402
from ACATCore.errors import ACATError                                    # noqa: E402
from ACATCore.saliency import METHODS                                    # noqa: E402
from ACATCore.models import calibrate_batchnorm                          # noqa: E402
from ACATCore.saliency.faithfulness import (blurred_reference, deletion_insertion,  # noqa: E402
                                            randomised_copy, spearman)
from training.cards import load_final                                    # noqa: E402
from training.config import load_config                                  # noqa: E402
from training.data import cache_key, load_splits, run_dir               # noqa: E402
from training.evaluate import SaliencyModels, _positive_cases, _saliency_map, lesion_region  # noqa: E402
from training.runtime import keep_freed_memory, setup_runtime            # noqa: E402

NAMES = {"counterfactual": "Counterfactual (ours, target 0)", "latent_shift": "Latent shift",
         "norec": "NoRec", "gradient": "Gradient", "integrated_gradients": "Integrated Gradients",
         "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM",
         "random": "(reference) random map", "mask": "(reference) lesion mask"}
PASS_RHO = 0.5


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="the run's training config (training/configs/...); needed unless --combine")
    ap.add_argument("--out-dir", help="the run's out_dir (default: the config's)")
    ap.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    ap.add_argument("--cases", type=int, default=12, help="positive test cases (default 12)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="saliency methods (default: all)")
    ap.add_argument("--steps", type=int, default=20, help="deletion / insertion steps (default 20)")
    ap.add_argument("--reference", nargs="+", choices=("zero", "blur"), default=["zero", "blur"],
                    help="what a removed voxel becomes; the first gets the full table (default zero blur)")
    ap.add_argument("--blur-sigma", type=float, default=None,
                    help="in-plane Gaussian sigma in pixels of the blur reference (default W / 8)")
    ap.add_argument("--no-sanity", action="store_true", help="skip the randomisation check (half the time)")
    ap.add_argument("--bn-volumes", type=int, default=16,
                    help="training volumes to re-estimate the randomised model's BatchNorm statistics "
                         "on (default 16; 0: keep the freshly reset statistics)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", help="also write every per-case number to this JSON file")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="print one table over the seeds of these --json files (runs nothing)")
    args = ap.parse_args(argv)
    if not args.config and not args.combine:
        ap.error("--config is needed (or --combine with --json files of earlier runs)")
    return args


def load_run(args):
    """(cfg, runtime, splits, positive test positions, baseline, autoencoder); never writes."""
    overrides = [f"out_dir={json.dumps(args.out_dir)}"] if args.out_dir else []
    cfg = load_config(args.config, overrides)
    meta = Path(cfg["out_dir"]) / "cache" / "meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("key") != cache_key(cfg):
        raise ACATError(f"{meta.parent} is missing or was prepared with other settings; this benchmark "
                        "reads a finished run and never (re)writes its cache")
    cfg["runtime"]["threads"] = args.threads
    rt = setup_runtime(cfg)
    splits = load_splits(cfg, rt, args.seed)
    sub = copy.deepcopy(cfg)
    sub["evaluate"]["saliency_splits"] = ["test"]
    sub["evaluate"]["max_saliency_cases"] = int(args.cases)
    cases = [p for _, p in _positive_cases(sub, splits, rt)]
    root = run_dir(cfg, args.seed)
    base, _ = load_final(root / "baseline" / "model.safetensors", "baseline")
    ae, _ = load_final(root / "autoencoder" / "model.safetensors", "autoencoder")
    return cfg, rt, splits, cases, base.to(rt.device).eval(), ae.to(rt.device).eval()


def prob_fn(classifier):
    """Batch (n, S, 1, H, W) -> (n,) softmax probability of class 1 of the steered head."""
    return lambda v: F.softmax(steerable_logits(classifier, v).float(), 1)[:, 1]


def random_model(base, train, args, device):
    """The fully re-initialised copy of `base` (BatchNorm statistics re-estimated unless
    --bn-volumes 0) and the fraction of its parameter values that changed."""
    rnd, changed = randomised_copy(base, seed=args.seed + 12345)
    n = min(int(args.bn_volumes), len(train))
    if n > 0:
        pos = np.random.default_rng(args.seed).permutation(len(train))[:n]
        batches = [train.get(pos[i:i + 4])["x"].to(device) for i in range(0, n, 4)]
        calibrate_batchnorm(rnd, batches, forward=steerable_logits)
    return rnd.eval(), changed


def make_reference(kind, x, sigma):
    return blurred_reference(x, sigma) if kind == "blur" else torch.zeros_like(x)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    cfg, rt, splits, cases, base, ae = load_run(args)
    test = splits["test"]
    W = cfg["data"]["preprocessing"]["size"][1]
    sigma = args.blur_sigma if args.blur_sigma is not None else W / 8
    rnd, changed = (None, float("nan")) if args.no_sanity else random_model(base, splits["train"], args,
                                                                              rt.device)
    models, rmodels = SaliencyModels(base, ae), SaliencyModels(rnd, ae)
    p_base, p_rnd = prob_fn(base), (prob_fn(rnd) if rnd is not None else None)
    rows = list(args.methods) + ["random", "mask"]
    keys = ["rho", "rho_fg", "hit", "seconds"] + [f"{k}_{r}" for r in args.reference
                                                    for k in ("deletion", "insertion")]
    res = {m: {k: [] for k in keys} for m in rows}
    info = {"task": cfg["task"], "config": args.config, "out_dir": cfg["out_dir"], "seed": args.seed,
            "cases": [int(test.indices[p]) for p in cases], "steps": args.steps,
            "references": list(args.reference), "blur_sigma": sigma, "bn_volumes": args.bn_volumes,
            "randomised_fraction": changed, "p_input": [], "p_input_random_model": [],
            **{f"p_reference_{r}": [] for r in args.reference}}
    masks, regions = test.array("mask"), test.array("regions")
    t_start = time.time()
    for i, p in enumerate(cases):
        g = int(test.indices[p])
        x = test.get([p])["x"].to(rt.device)                           # (1, S, 1, H, W)
        refs = {r: make_reference(r, x, sigma) for r in args.reference}
        mask = np.asarray(masks[g])
        region = lesion_region(mask, None if regions is None else np.asarray(regions[g]), cfg["task"])
        fg = (x[0, :, 0] > 0).cpu().numpy()
        with torch.no_grad():
            pr = p_base(torch.cat([x, *refs.values()]))
            info["p_input"].append(float(pr[0]))
            for j, r in enumerate(refs):
                info[f"p_reference_{r}"].append(float(pr[j + 1]))
            if p_rnd is not None:
                info["p_input_random_model"].append(float(p_rnd(x)[0]))
        for m in rows:
            if m == "random":
                s = np.random.default_rng(g).random(mask.shape)
            elif m == "mask":
                s = (mask > 0).astype(np.float32)
            else:
                t0 = time.perf_counter()
                s = _saliency_map(m, models, {"x": x}, cfg, rt)               # (S, H, W)
                res[m]["seconds"].append(time.perf_counter() - t0)
                res[m]["hit"].append(float(metrics.is_hit(s, region)))
                if rnd is not None:
                    sr = _saliency_map(m, rmodels, {"x": x}, cfg, rt)
                    res[m]["rho"].append(spearman(s, sr))
                    res[m]["rho_fg"].append(spearman(s, sr, where=fg))
            for r, ref in refs.items():
                di = deletion_insertion(p_base, x[0], s, ref[0], steps=args.steps,
                                        batch_size=(args.steps + 2) // 2, seed=g)
                res[m][f"deletion_{r}"].append(di["deletion"])
                res[m][f"insertion_{r}"].append(di["insertion"])
        print(f"[faithfulness] {cfg['task']}: case {i + 1}/{len(cases)} (index {g}) done, "
              f"{time.time() - t_start:.0f} s", file=sys.stderr, flush=True)
    info["wall_seconds"] = time.time() - t_start
    return {"info": info, "results": res}


def _fmt(v, se=None, pct=False):
    if not np.isfinite(v):
        return "n/a"
    f = (lambda a: f"{100 * a:.0f}%") if pct else (lambda a: f"{a:.3f}")
    return f(v) + (f" ({f(se)})" if se is not None and np.isfinite(se) else "")


def _ref_words(info, r):
    return (f"the input blurred in-plane (Gaussian, sigma {info['blur_sigma']:g} px)" if r == "blur"
            else "zeros (window floor = background)")


def _passes(rhos):
    if not rhos:
        return ""
    m = metrics.mean_sem(rhos)[0]
    if not np.isfinite(m):
        return "n/a (maps constant)"
    return "yes" if m < PASS_RHO else "NO"


def table(out: dict) -> str:
    info, res = out["info"], out["results"]
    refs = info["references"]
    r0 = refs[0]
    n = len(info["cases"])
    lines = [f"### {info['task']}: saliency faithfulness, seed {info['seed']}, {n} positive test cases",
             "",
             f"| Method | Deletion AUC, {r0} (lower better) | Insertion AUC, {r0} (higher better) | "
             "Randomisation Spearman rho | rho, foreground only | Passes sanity (rho < 0.5): all / fg | "
             "Hit | Seconds per map | Constant randomised maps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in res.items():
        d, i = metrics.mean_sem(r[f"deletion_{r0}"]), metrics.mean_sem(r[f"insertion_{r0}"])
        rho, rfg = metrics.mean_sem(r["rho"]), metrics.mean_sem(r["rho_fg"])
        ref_row = m in ("random", "mask")
        n_const = sum(1 for v in r["rho"] if not np.isfinite(v))
        lines.append(" | ".join([
            f"| {NAMES.get(m, m)}", _fmt(d[0], d[1]), _fmt(i[0], i[1]),
            "" if ref_row else _fmt(rho[0], rho[1]), "" if ref_row else _fmt(rfg[0], rfg[1]),
            "" if ref_row else f"{_passes(r['rho'])} / {_passes(r['rho_fg'])}",
            "" if ref_row else _fmt(*metrics.mean_sem(r["hit"]), pct=True),
            "" if ref_row else f"{metrics.mean_sem(r['seconds'])[0]:.2f}",
            "" if ref_row or not r["rho"] else f"{n_const}/{len(r['rho'])}"]) + " |")
    pin = metrics.mean_sem(info["p_input"])
    pref = metrics.mean_sem(info[f"p_reference_{r0}"])
    lines += ["", f"Mean (SE over cases). Removed voxels become {_ref_words(info, r0)}; {info['steps']} "
              f"steps of {100 / info['steps']:g}% of all S x H x W model-input voxels; P = softmax "
              f"probability of class 1 (brain: lesion head; lung: findings): {_fmt(*pin[:2])} on the "
              f"inputs, {_fmt(*pref[:2])} on the all-{r0} volume."]
    if info["p_input_random_model"]:
        prm = metrics.mean_sem(info["p_input_random_model"])
        bn = (f"BatchNorm statistics re-estimated on {info['bn_volumes']} training volumes"
              if info["bn_volumes"] else "BatchNorm statistics reset, not re-estimated")
        lines.append(f"Randomised classifier: every parameter re-initialised ({100 * info['randomised_fraction']:.1f}% "
                     f"of the values changed), {bn}; its P on the inputs {_fmt(*prm[:2])}.")
    lines.append(f"Wall time {info['wall_seconds']:.0f} s on a shared CPU (seconds per map: the trained "
                 "model's map of one volume).")
    for r in refs[1:]:
        pref = metrics.mean_sem(info[f"p_reference_{r}"])
        lines += ["", f"Deletion / insertion with removed voxels set to {_ref_words(info, r)}; P on the "
                  f"all-{r} volume {_fmt(*pref[:2])} (on the inputs {_fmt(*pin[:2])}).", "",
                  f"| Method | Deletion AUC, {r} | Insertion AUC, {r} |", "|---|---|---|"]
        for m, v in res.items():
            lines.append(f"| {NAMES.get(m, m)} | {_fmt(*metrics.mean_sem(v[f'deletion_{r}']))} | "
                         f"{_fmt(*metrics.mean_sem(v[f'insertion_{r}']))} |")
    return "\n".join(lines)


def combined_table(outs: list) -> str:
    """One table over several seeds' --json files: each seed's mean over its cases, then the mean
    (SE over seeds) of those; the sanity verdict on the mean rho over seeds."""
    refs = outs[0]["info"]["references"]
    kinds = {(o["info"]["task"], tuple(o["info"]["references"]), tuple(o["results"])) for o in outs}
    if len(kinds) > 1:
        raise SystemExit("--combine: the files differ in task, references or methods; combine runs of one "
                         "bench command that differ only in --seed")
    keys = [f"{k}_{r}" for r in refs for k in ("deletion", "insertion")] + ["rho", "rho_fg", "hit"]
    seeds = [o["info"]["seed"] for o in outs]
    cases = sum(len(o["info"]["cases"]) for o in outs)
    head = [f"Deletion AUC, {r}" if k == "deletion" else f"Insertion AUC, {r}"
            for r in refs for k in ("deletion", "insertion")] + ["Randomisation rho", "rho, foreground",
                                                                  "Passes sanity: all / fg", "Hit"]
    lines = [f"### {outs[0]['info']['task']}: saliency faithfulness over seeds {', '.join(map(str, seeds))} "
             f"({cases} positive test cases)", "", "| Method | " + " | ".join(head) + " |",
             "|---|" + "---|" * len(head)]
    for m in outs[0]["results"]:
        per_seed = {k: [float(np.nanmean(o["results"][m][k])) if o["results"][m][k] else float("nan")
                        for o in outs] for k in keys}
        cells = [_fmt(*metrics.mean_sem(per_seed[k])[:2]) for k in keys[:-3]]
        if m in ("random", "mask"):
            cells += ["", "", "", ""]
        else:
            cells += [_fmt(*metrics.mean_sem(per_seed["rho"])[:2]), _fmt(*metrics.mean_sem(per_seed["rho_fg"])[:2]),
                      f"{_passes(per_seed['rho'])} / {_passes(per_seed['rho_fg'])}",
                      _fmt(*metrics.mean_sem(per_seed["hit"])[:2], pct=True)]
        lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "Mean (SE over seeds) of each seed's mean over its cases; deletion lower is better, insertion "
              "higher; sanity passes when the mean rho < 0.5."]
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    if args.combine:
        print(combined_table([json.loads(Path(p).read_text()) for p in args.combine]))
        return
    keep_freed_memory()                     # half the time otherwise goes to page faults (docs/TRAINING.md)
    try:
        out = run(args)
    except ACATError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
