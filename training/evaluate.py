"""The paper's tables for a run of Algorithm 1, as Markdown and CSV.

    python -m training.evaluate --config training/configs/lung_synth_cpu.json

Reads every trained model of every seed under <out_dir> and writes into <out_dir>/tables/:
  table2_accuracy        Table 2: test accuracy, mean (standard error) over seeds, every model
  table1_by_size         Table 1: accuracy by infarct size (no lesion, IS-1..IS-4)
  table7_sens_spec       Table 7: accuracy, sensitivity, specificity (positive = any finding)
  sec44_hit_scores       Sec. 4.4: hit score of each saliency method on positive held-out scans
  table5_iou_dice        Table 5: IoU and Dice of each saliency method (dynamic percentile)
  saliency_energy        beyond the paper: share of each map's mass inside the lesion
  table3_variances       Table 3: pre-activation variance per layer, baseline vs ACAT, clean / noised
  sec47_dropout          Sec. 4.7: feature-dropout controls against baseline and ACAT
  table4_limited         Table 4: accuracy with limited training data
  tables.md              all of them in one file
and predictions/seed<seed>_<model>.csv (every test prediction) so the tables can be recomputed.

A table whose models were not trained (e.g. no competitors in the config) is left out. Standard
errors are over seeds (the paper's three runs); with a single seed the saliency tables give the
standard error over cases instead and say so.
"""
from __future__ import annotations

import copy
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.cards import load_final
from training.classifier import predict
from training.config import base_parser, config_from_args
from training.data import attach_saliency, load_splits, run_dir, saliency_done
from training.make_saliency import saliency_maps
from training.runtime import Runtime, derive_seed, run_main, started
from training.tables import (table_accuracy, table_by_size, table_dropout, table_limited,
                             table_saliency, table_sens_spec, table_variances, write_table)

SALIENCY_KEYS = ("hit", "iou", "dice", "energy", "chance")


# --------------------------------------------------------------------------------------------
# Test predictions of every trained classifier
# --------------------------------------------------------------------------------------------
def _model_dirs(root: Path):
    """(key, folder) of every trained classifier under a seed (or limited-data) folder."""
    for d in sorted(root.iterdir()) if root.exists() else []:
        if d.is_dir() and d.name != "autoencoder" and (d / "model.safetensors").exists():
            yield d.name, d


def predict_folder(cfg, rt, seed, root: Path, splits, out: Path, n_train=None) -> list:
    """Test-split records (model, seed, y, pred, size, n_train) of every classifier under `root`;
    rank 0 also writes each model's predictions to out/seed<seed>_<model>[_n<n>].csv."""
    records = []
    test = splits["test"]
    sizes = np.load(test.cache / "size.npy")
    for key, folder in _model_dirs(root):
        model, _ = load_final(folder / "model.safetensors", key)
        model = rt.place(model)
        needs = bool(getattr(model, "needs_saliency", False))
        if needs and test.saliency is None:
            attach_saliency(cfg, seed, splits, root=root)
        probs, y = predict(model, test, rt, needs)
        rec = {"model": key, "seed": seed, "y": y.numpy(), "pred": probs.argmax(1).numpy(),
               "size": sizes[test.indices], "n_train": n_train}
        records.append(rec)
        if rt.is_main:
            tag = f"seed{seed}_{key}" + (f"_n{n_train}" if n_train else "")
            _write_predictions(out / f"{tag}.csv", test.indices, rec, probs)
    return records


def _write_predictions(path: Path, indices, rec: dict, probs: torch.Tensor):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "size_group", "predicted",
                    *[f"p{c}" for c in range(probs.shape[1])]])
        for i in range(len(rec["y"])):
            w.writerow([int(indices[i]), int(rec["y"][i]), int(rec["size"][i]),
                        int(rec["pred"][i]), *[f"{float(p):.5f}" for p in probs[i]]])


# --------------------------------------------------------------------------------------------
# Saliency maps against lesion masks (Sec. 4.4, Table 5)
# --------------------------------------------------------------------------------------------
def lesion_region(mask: np.ndarray, regions, task: str) -> np.ndarray:
    """Where a hit counts: brain, the vascular territories holding the lesion (mask values are
    territory labels; 'both' has two); lung, the lesion mask itself (pointing game)."""
    if task == "brain" and regions is not None:
        labels = np.unique(mask[mask > 0])
        return np.isin(regions, labels) & (regions > 0)
    return mask > 0


def energy_in(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the saliency map's total mass inside the lesion mask (the energy-based pointing
    game of Wang et al. 2020, Score-CAM); a uniform map scores the mask's volume fraction."""
    total = float(np.abs(saliency).sum())
    return float(np.abs(saliency)[mask].sum() / total) if total > 0 else 0.0


def _positive_cases(cfg, splits, rt) -> list:
    """(split, position) of the positive held-out cases with a lesion mask, at most
    evaluate.max_saliency_cases; [] when the data has no masks."""
    cases = []
    for name in cfg["evaluate"]["saliency_splits"]:
        ds = splits[name]
        masks = ds.array("mask")
        if masks is None:
            rt.log("[evaluate] the data has no lesion masks: no saliency tables")
            return []
        cases += [(name, p) for p in np.flatnonzero(ds.labels > 0) if masks[ds.indices[p]].any()]
    return cases[: int(cfg["evaluate"]["max_saliency_cases"])]


@dataclass
class SaliencyModels:
    """The models the saliency methods explain with (acat: None when not used)."""
    baseline: torch.nn.Module
    autoencoder: torch.nn.Module
    acat: torch.nn.Module = None
    methods: list = field(default_factory=list)


def _saliency_models(cfg, rt, seed, root: Path, have_maps: bool) -> SaliencyModels:
    """The baseline, the autoencoder, ACAT (if evaluate.saliency_with_acat) and the methods:
    the configured ones, plus ACAT's training maps and ACAT as classifier when the maps exist."""
    base, _ = load_final(root / "baseline" / "model.safetensors", "baseline")
    ae, _ = load_final(run_dir(cfg, seed) / "autoencoder" / "model.safetensors", "autoencoder")
    models = SaliencyModels(rt.place(base).eval(), rt.place(ae).eval(),
                            methods=list(cfg["evaluate"]["saliency_methods"]))
    if cfg["evaluate"]["saliency_with_acat"] and (root / "acat" / "model.safetensors").exists():
        acat, _ = load_final(root / "acat" / "model.safetensors", "acat")
        models.acat = rt.place(acat).eval()
    if have_maps:
        models.methods.append("counterfactual_agnostic")
        if models.acat is not None:
            models.methods.append("counterfactual_acat")
    return models


def _saliency_map(method: str, models: SaliencyModels, batch: dict, cfg, rt) -> np.ndarray:
    """(S, H, W) map of one case by `method` (batch["x"] on the device)."""
    x = batch["x"]
    if method == "counterfactual_agnostic":          # the maps ACAT is trained with
        s = batch["saliency"]
    elif method == "counterfactual_acat":
        s = saliency_maps(models.acat, models.autoencoder, x, cfg, "counterfactual",
                          saliency=batch["saliency"].to(rt.device))
    elif method == "counterfactual":                 # Sec. 4.4: negative counterfactuals
        s = saliency_maps(models.baseline, models.autoencoder, x, cfg, "counterfactual", target=0)
    else:                                            # explain the positive class
        s = saliency_maps(models.baseline, models.autoencoder, x, cfg, method, target=1)
    return s.detach().float().cpu().numpy()[0, :, 0]


def smoothed(s: np.ndarray, sigma: float) -> np.ndarray:
    """The (S, H, W) map ``s`` smoothed in-plane by ``sigma`` model-grid pixels, as ``analyze`` smooths the map
    it shows (``ACATCore.analysis_maps.shown_saliency``; analyze also bounds it to the organ first and, for lung,
    drops an edge band: bench/bench_lung_shown_maps.py scores that); ``s`` itself for 0."""
    from ACATCore.analysis_maps import shown_saliency
    return shown_saliency(torch.from_numpy(s)[None, :, None], float(sigma))[0, :, 0].numpy() if sigma else s


def _scores(s: np.ndarray, mask: np.ndarray, region: np.ndarray) -> dict:
    """Hit, IoU, Dice, energy in the lesion and the lesion's volume fraction of one map."""
    from ACATCore import metrics
    i, d = metrics.iou_dice(s, mask > 0)
    return {"hit": float(metrics.is_hit(s, region)), "iou": float(i), "dice": float(d),
            "energy": energy_in(s, mask > 0), "chance": float((mask > 0).mean())}


def saliency_records(cfg, rt, seed, root: Path, splits) -> list:
    """Hit score, IoU and Dice of every configured saliency method on positive held-out cases
    (the splits in evaluate.saliency_splits: never the training split)."""
    from tqdm import tqdm
    cases = _positive_cases(cfg, splits, rt)
    if not cases:
        return []
    have_maps = all(splits[n].saliency is not None for n in cfg["evaluate"]["saliency_splits"])
    models = _saliency_models(cfg, rt, seed, root, have_maps)
    results = {m: {k: [] for k in SALIENCY_KEYS} for m in models.methods}
    for name, p in tqdm(cases[rt.rank::rt.world_size], desc="saliency metrics", leave=False,
                        disable=not rt.progress):
        ds = splits[name]
        batch = ds.get([p], with_saliency=have_maps)
        batch["x"] = batch["x"].to(rt.device)
        g = ds.indices[p]
        mask = np.asarray(ds.array("mask")[g])
        regions = ds.array("regions")
        region = lesion_region(mask, None if regions is None else np.asarray(regions[g]),
                               cfg["task"])
        for m in models.methods:
            s = smoothed(_saliency_map(m, models, batch, cfg, rt), cfg["evaluate"]["smooth_sigma"])
            for k, v in _scores(s, mask, region).items():
                results[m][k].append(v)
    if rt.distributed:
        import torch.distributed as dist
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, results)
        results = {m: {k: [v for r in gathered for v in r[m][k]] for k in SALIENCY_KEYS}
                   for m in models.methods}
    return [{"method": m, "seed": seed, **results[m]} for m in models.methods]


# --------------------------------------------------------------------------------------------
# Pre-activation variances (Table 3)
# --------------------------------------------------------------------------------------------
def variance_layers(model) -> dict:
    """Table 3's layers: the last convolution of each stage of the image branch (brain MTL: its 7
    conv layers; ResNet-50: the stem and the 4 blocks), the same names in baseline and ACAT."""
    layers = {}
    for i, stage in enumerate(model.trunk):
        convs = [m for m in stage.modules() if isinstance(m, torch.nn.Conv2d)]
        if convs:
            layers[f"layer {i + 1}"] = convs[-1]
    return layers


def variance_records(cfg, rt, seed, root: Path, splits) -> list:
    """Pre-activation variance per layer on test volumes, clean and with N(0, noise_std) noise."""
    from ACATCore.metrics import preactivation_variance
    test = splits["test"]
    n = min(len(test), int(cfg["evaluate"]["variance_cases"]))
    if not n or not (root / "acat" / "model.safetensors").exists() or test.saliency is None:
        return []
    out = []
    for key in ("baseline", "acat"):
        model, _ = load_final(root / key / "model.safetensors", key)
        model = rt.place(model).eval()
        batches = []
        for start in range(0, n, 4):
            b = test.get(np.arange(start, min(n, start + 4)), with_saliency=key == "acat")
            batches.append((b["x"].to(rt.device), b["saliency"].to(rt.device)) if key == "acat"
                           else (b["x"].to(rt.device),))
        for noised in (False, True):
            v = preactivation_variance(model, batches, layers=variance_layers(model),
                                       noise_std=float(cfg["evaluate"]["noise_std"]) if noised
                                       else 0.0, seed=derive_seed("noise", seed) % 2 ** 31)
            out.append({"model": key, "noised": noised, "seed": seed,
                        "variances": list(v.values())})
    return out


# --------------------------------------------------------------------------------------------
# All records of a run, and the tables they allow
# --------------------------------------------------------------------------------------------
@dataclass
class Records:
    """What the tables are made from, over all seeds."""
    predictions: list = field(default_factory=list)    # main runs (incl. dropout controls)
    saliency: list = field(default_factory=list)
    variances: list = field(default_factory=list)
    limited: list = field(default_factory=list)        # limited-data runs (Table 4)


def collect(cfg: dict, rt: Runtime, seeds=None) -> Records:
    """Predict, score saliency maps and measure variances for every trained seed."""
    out = Path(cfg["out_dir"]) / "tables" / "predictions"
    rec = Records()
    for seed in seeds or cfg["seeds"]:
        root = run_dir(cfg, seed)
        if not (root / "baseline" / "model.safetensors").exists():
            rt.log(f"[evaluate] seed {seed}: no baseline yet, skipped")
            continue
        splits = load_splits(cfg, rt, seed)
        if saliency_done(root):
            attach_saliency(cfg, seed, splits, root=root)
        rec.predictions += predict_folder(cfg, rt, seed, root, splits, out)
        rec.saliency += saliency_records(cfg, rt, seed, root, splits)
        rec.variances += variance_records(cfg, rt, seed, root, splits)
        for n in cfg["limited_data"]:
            sroot = root / f"limited{n}"
            if sroot.exists():
                sub = copy.deepcopy(cfg)
                sub["data"]["max_train"] = n
                ssplits = load_splits(sub, rt, seed)
                rec.limited += predict_folder(sub, rt, seed, sroot, ssplits, out, n)
    return rec


def classification_tables(rec: Records, task: str, out: Path) -> dict:
    """Tables 2, 1 (brain), 7, Sec. 4.7 and Table 4: {name: markdown}."""
    written = {}
    main = [r for r in rec.predictions if not r["model"].startswith("dropout")]
    if main:
        written["table2_accuracy"] = write_table(
            out, "table2_accuracy", f"Table 2: test accuracy ({task}), mean (SE) over seeds",
            table_accuracy(main))
        if task == "brain":
            written["table1_by_size"] = write_table(
                out, "table1_by_size", "Table 1: test accuracy by infarct size",
                table_by_size(main))
        written["table7_sens_spec"] = write_table(
            out, "table7_sens_spec", f"Table 7: sensitivity and specificity ({task})",
            table_sens_spec(main))
    if any(r["model"].startswith("dropout") for r in rec.predictions):
        written["sec47_dropout"] = write_table(
            out, "sec47_dropout", "Sec. 4.7: feature dropout at ACAT's attention stages",
            table_dropout(rec.predictions))
    if rec.limited:
        written["table4_limited"] = write_table(
            out, "table4_limited", "Table 4: test accuracy with limited training data",
            table_limited(rec.limited))
    return written


def held_out_names(cfg: dict) -> str:
    """The splits whose positive cases the saliency tables score, in words: "test", "validation and test"."""
    return " and ".join({"val": "validation", "test": "test"}[s] for s in cfg["evaluate"]["saliency_splits"])


def saliency_tables(rec: Records, cfg: dict, out: Path) -> dict:
    """Sec. 4.4 hit scores, Table 5, the energy table and Table 3: {name: markdown}."""
    written = {}
    sal = rec.saliency
    se_note = "SE over seeds." if len({r["seed"] for r in sal}) > 1 else "One seed: SE over cases."
    sigma = float(cfg["evaluate"]["smooth_sigma"])
    if sigma:
        se_note = f"Every method's map smoothed in-plane by {sigma:g} pixels before scoring. " + se_note
    if sal:
        written["sec44_hit_scores"] = write_table(
            out, "sec44_hit_scores",
            f"Sec. 4.4: hit score of saliency maps on positive {held_out_names(cfg)} scans",
            table_saliency(sal, ("hit",)),
            ("A hit: the saliency arg-max lies in the lesion's vascular territory."
             if cfg["task"] == "brain" else "A hit: the saliency arg-max lies inside the lesion mask.")
            + " " + se_note)
        written["table5_iou_dice"] = write_table(
            out, "table5_iou_dice", "Table 5: IoU and Dice of saliency maps (dynamic percentile)",
            table_saliency(sal, ("iou", "dice"), pct=False), se_note)
        written["saliency_energy"] = write_table(
            out, "saliency_energy", "Beyond the paper: share of saliency mass inside the lesion",
            table_saliency(sal, ("energy", "chance")),
            "A map with no preference scores the lesion's volume fraction (last column). " + se_note)
    if rec.variances:
        written["table3_variances"] = write_table(
            out, "table3_variances", "Table 3: pre-activation variances, original and noised inputs",
            table_variances(rec.variances),
            f"Noise: N(0, {cfg['evaluate']['noise_std']}^2) added to the [0, 1] input.")
    return written


TABLE_ORDER = ("table2_accuracy", "table1_by_size", "table7_sens_spec", "sec44_hit_scores",
               "table5_iou_dice", "saliency_energy", "table3_variances", "sec47_dropout",
               "table4_limited")


def evaluate(cfg: dict, rt: Runtime, seeds=None) -> dict:
    """Write every table the run's models allow; returns {name: markdown} (empty off rank 0)."""
    rec = collect(cfg, rt, seeds)
    if not rt.is_main:
        return {}
    out = Path(cfg["out_dir"]) / "tables"
    tables = {**classification_tables(rec, cfg["task"], out), **saliency_tables(rec, cfg, out)}
    written = {name: tables[name] for name in TABLE_ORDER if name in tables}
    if written:
        (out / "tables.md").write_text(f"# {cfg['name']}: tables\n\n" + "\n".join(written.values()))
        rt.log(f"[evaluate] wrote {len(written)} tables into {out}")
    return written


def main(argv=None):
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the config's)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        written = evaluate(cfg, rt, seeds=args.seeds)
        if rt.is_main:
            print("\n".join(written.values()))


if __name__ == "__main__":
    run_main(main)
