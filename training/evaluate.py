"""The paper's tables for a run of Algorithm 1, as Markdown and CSV.

    python training/evaluate.py --config training/configs/lung_synth_cpu.json

Reads every trained model of every seed under <out_dir> and writes into <out_dir>/tables/:
  table2_accuracy        Table 2: test accuracy, mean (standard error) over seeds, every model
  table1_by_size         Table 1: accuracy by infarct size (no lesion, IS-1..IS-4)
  table7_sens_spec       Table 7: accuracy, sensitivity, specificity (positive = any finding)
  sec44_hit_scores       Sec. 4.4: hit score of each saliency method on positive test scans
  table5_iou_dice        Table 5: IoU and Dice of each saliency method (dynamic percentile)
  table3_variances       Table 3: pre-activation variance per layer, baseline vs ACAT, clean / noised
  sec47_dropout          Sec. 4.7: feature-dropout controls against baseline and ACAT
  table4_limited         Table 4: accuracy with limited training data
  tables.md              all of them in one file
and predictions/<seed>_<model>.csv (every test prediction) so the tables can be recomputed.

A table whose models were not trained (e.g. no competitors in the config) is left out. Standard
errors are over seeds (the paper's three runs); with a single seed the saliency tables give the
standard error over cases instead and say so.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

DISPLAY = {"baseline": "Baseline", "smic": "SMIC", "salclassnet": "SalClassNet", "hsm": "HSM",
           "spatt": "SpAtt", "seatt": "SeAtt", "vit": "ViT", "acat": "ACAT"}
ORDER = ["baseline", "smic", "salclassnet", "hsm", "spatt", "seatt", "vit", "acat"]
SALIENCY_DISPLAY = {"counterfactual": "Counterfactual (ours, negative target)",
                    "counterfactual_agnostic": "Counterfactual (ours, class-agnostic)",
                    "counterfactual_acat": "Counterfactual (ours, ACAT as classifier)",
                    "latent_shift": "Latent shift", "norec": "NoRec", "gradient": "Gradient",
                    "integrated_gradients": "Integrated gradients", "gradcam": "Grad-CAM",
                    "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM"}


# --------------------------------------------------------------------------------------------
# Statistics and formatting (pure functions: tested on known inputs)
# --------------------------------------------------------------------------------------------
def mean_se(values) -> tuple:
    """Mean and standard error over runs (ACATCore.metrics.mean_sem), ignoring NaN runs (e.g. a
    seed whose test split has no case of a size group)."""
    from ACATCore.metrics import mean_sem
    return mean_sem([v for v in values if v is not None and not math.isnan(v)])


def fmt_pct(mean: float, se: float) -> str:
    """'71.39% (0.23)' like the paper; '-' when there is nothing to show."""
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}%" + ("" if math.isnan(se) else f" ({100 * se:.2f})")


def fmt_num(mean: float, se: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ({se:.{digits}f})")


def accuracy(y, pred) -> float:
    from ACATCore.metrics import accuracy as acc
    return acc(y, pred)


def sens_spec(y, pred) -> tuple:
    """Positive = any class but 0 (lesion / findings); a brain scan called 'left' with a right
    lesion still counts as detected (ACATCore.metrics.sensitivity_specificity)."""
    from ACATCore.metrics import sensitivity_specificity
    return sensitivity_specificity(y, pred)


def _by_model(records, key="model"):
    out = {}
    for r in records:
        out.setdefault(r[key], []).append(r)
    return out


def _model_order(names):
    known = [m for m in ORDER if m in names]
    return known + sorted(n for n in names if n not in ORDER)


def table_accuracy(records) -> tuple:
    """Table 2. records: dicts with model, seed, y, pred."""
    groups = _by_model(records)
    rows = []
    for m in _model_order(groups):
        mean, se = mean_se([accuracy(r["y"], r["pred"]) for r in groups[m]])
        rows.append([DISPLAY.get(m, m), fmt_pct(mean, se), str(len(groups[m]))])
    return ["Model", "Accuracy", "Seeds"], rows


def table_by_size(records, groups=("No lesion", "IS-1", "IS-2", "IS-3", "IS-4")) -> tuple:
    """Table 1: accuracy per infarct-size group (records carry `size`: 0 = no lesion, k = IS-k)."""
    by = _by_model(records)
    rows = []
    for m in _model_order(by):
        cells = [DISPLAY.get(m, m)]
        for g in range(len(groups)):
            accs = []
            for r in by[m]:
                sel = np.asarray(r["size"]) == g
                accs.append(accuracy(np.asarray(r["y"])[sel], np.asarray(r["pred"])[sel])
                            if sel.any() else math.nan)
            cells.append(fmt_pct(*mean_se(accs)))
        rows.append(cells)
    return ["Model", *groups], rows


def table_sens_spec(records) -> tuple:
    """Table 7."""
    by = _by_model(records)
    rows = []
    for m in _model_order(by):
        acc = [accuracy(r["y"], r["pred"]) for r in by[m]]
        ss = [sens_spec(r["y"], r["pred"]) for r in by[m]]
        rows.append([DISPLAY.get(m, m), fmt_pct(*mean_se(acc)),
                     fmt_pct(*mean_se([s for s, _ in ss])), fmt_pct(*mean_se([p for _, p in ss]))])
    return ["Model", "Accuracy", "Sensitivity", "Specificity"], rows


def table_limited(records) -> tuple:
    """Table 4: records carry model and n_train (limited-data runs)."""
    sizes = sorted({r["n_train"] for r in records})
    by = _by_model(records)
    rows = []
    for m in _model_order(by):
        cells = [DISPLAY.get(m, m)]
        for n in sizes:
            cells.append(fmt_pct(*mean_se([accuracy(r["y"], r["pred"]) for r in by[m]
                                           if r["n_train"] == n])))
        rows.append(cells)
    return ["Model", *[f"{n} scans" for n in sizes]], rows


def table_dropout(records) -> tuple:
    """Sec. 4.7: baseline, ACAT and the baseline with feature dropout p."""
    by = _by_model(records)
    names = [m for m in ("baseline", "acat") if m in by]
    names += sorted((m for m in by if m.startswith("dropout")), key=lambda m: float(m[7:]))
    rows = []
    for m in names:
        label = f"Baseline + feature dropout p={m[7:]}" if m.startswith("dropout") else DISPLAY[m]
        rows.append([label, fmt_pct(*mean_se([accuracy(r["y"], r["pred"]) for r in by[m]]))])
    return ["Model", "Accuracy"], rows


def table_saliency(records, metric_keys=("hit",), pct=True) -> tuple:
    """Sec. 4.4 / Table 5. records: dicts with method, seed, and per-case lists under metric_keys.
    SE over seeds when there are several, else over cases."""
    by = _by_model(records, "method")
    seeds = {r["seed"] for r in records}
    rows = []
    for method in by:
        cells = [SALIENCY_DISPLAY.get(method, method)]
        for key in metric_keys:
            if len(seeds) > 1:
                mean, se = mean_se([float(np.mean(r[key])) for r in by[method] if len(r[key])])
            else:
                mean, se = mean_se([v for r in by[method] for v in r[key]])
            cells.append(fmt_pct(mean, se) if pct else fmt_num(mean, se))
        cells.append(str(sum(len(r[metric_keys[0]]) for r in by[method])))
        rows.append(cells)
    names = {"hit": "Hit score", "iou": "IoU", "dice": "Dice", "energy": "Energy in lesion",
             "chance": "Lesion volume fraction (chance)"}
    return ["Method", *[names.get(k, k) for k in metric_keys], "Cases"], rows


def table_variances(records) -> tuple:
    """Table 3. records: dicts with model ("baseline"/"acat"), noised (bool), seed, variances
    (list per layer)."""
    layers = max((len(r["variances"]) for r in records), default=0)
    cols = [("baseline", False), ("acat", False), ("baseline", True), ("acat", True)]
    rows = []
    for i in range(layers):
        cells = [f"sigma^2,{i + 1}"]
        for model, noised in cols:
            vals = [r["variances"][i] for r in records
                    if r["model"] == model and r["noised"] == noised and len(r["variances"]) > i]
            cells.append(fmt_num(*mean_se(vals), digits=3) if vals else "-")
        rows.append(cells)
    return ["Layer", "Baseline (original)", "ACAT (original)", "Baseline (noised)",
            "ACAT (noised)"], rows


def to_markdown(title: str, header, rows, note: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_table(out: Path, name: str, title: str, table, note: str = "") -> str:
    header, rows = table
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(title, header, rows, note)
    (out / f"{name}.md").write_text(md)
    with (out / f"{name}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return md


# --------------------------------------------------------------------------------------------
# Collecting predictions and saliency metrics from a run
# --------------------------------------------------------------------------------------------
def _model_dirs(root: Path):
    """(key, folder) of every trained classifier under a seed (or limited-data) folder."""
    for d in sorted(root.iterdir()) if root.exists() else []:
        if d.is_dir() and d.name != "autoencoder" and (d / "model.safetensors").exists():
            yield d.name, d


def predict_folder(cfg, rt, seed, root: Path, splits, out: Path, n_train=None) -> list:
    records = []
    sizes = np.load(splits["test"].cache / "size.npy")
    for key, folder in _model_dirs(root):
        model, card = C.load_final(folder / "model.safetensors", key)
        model = model.to(rt.device)
        needs = bool(getattr(model, "needs_saliency", False))
        if needs and splits["test"].saliency is None:
            C.attach_saliency(cfg, seed, splits, root=root)
        probs, y = C.predict(model, splits["test"], rt, needs)
        pred = probs.argmax(1).numpy()
        rec = {"model": key, "seed": seed, "y": y.numpy(), "pred": pred,
               "size": sizes[splits["test"].indices], "n_train": n_train}
        records.append(rec)
        if rt.is_main:
            tag = f"seed{seed}_{key}" + (f"_n{n_train}" if n_train else "")
            out.mkdir(parents=True, exist_ok=True)
            with (out / f"{tag}.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["index", "label", "size_group", "predicted",
                            *[f"p{c}" for c in range(probs.shape[1])]])
                for i in range(len(y)):
                    w.writerow([int(splits["test"].indices[i]), int(y[i]), int(rec["size"][i]),
                                int(pred[i]), *[f"{float(p):.5f}" for p in probs[i]]])
    return records


def lesion_region(mask: np.ndarray, regions, task: str) -> np.ndarray:
    """Where a hit counts: brain, the vascular territories holding the lesion (mask values are
    territory labels; 'both' has two); lung, the lesion mask itself (pointing game)."""
    if task == "brain" and regions is not None:
        labels = np.unique(mask[mask > 0])
        return np.isin(regions, labels) & (regions > 0)
    return mask > 0


SALIENCY_KEYS = ("hit", "iou", "dice", "energy", "chance")


def energy_in(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the saliency map's total mass inside the lesion mask (the energy-based pointing
    game of Wang et al. 2020, Score-CAM); a uniform map scores the mask's volume fraction."""
    total = float(np.abs(saliency).sum())
    return float(np.abs(saliency)[mask].sum() / total) if total > 0 else 0.0


def saliency_records(cfg, rt, seed, root: Path, splits) -> list:
    """Hit score, IoU and Dice of every configured saliency method on positive held-out cases
    (the splits in evaluate.saliency_splits: never the training split)."""
    from ACATCore import metrics
    from make_saliency import saliency_maps
    cases = []                                        # (split, position) of positive cases
    for name in cfg["evaluate"]["saliency_splits"]:
        ds = splits[name]
        masks = ds.array("mask")
        if masks is None:
            rt.log("[evaluate] the data has no lesion masks: no saliency tables")
            return []
        cases += [(name, p) for p in np.flatnonzero(ds.labels > 0) if masks[ds.indices[p]].any()]
    cases = cases[: int(cfg["evaluate"]["max_saliency_cases"])]
    if not cases:
        return []
    base, _ = C.load_final(root / "baseline" / "model.safetensors", "baseline")
    ae, _ = C.load_final(C.run_dir(cfg, seed) / "autoencoder" / "model.safetensors", "autoencoder")
    base, ae = base.to(rt.device).eval(), ae.to(rt.device).eval()
    acat = None
    if cfg["evaluate"]["saliency_with_acat"] and (root / "acat" / "model.safetensors").exists():
        acat, _ = C.load_final(root / "acat" / "model.safetensors", "acat")
        acat = acat.to(rt.device).eval()
    have_maps = all(splits[n].saliency is not None for n in cfg["evaluate"]["saliency_splits"])
    methods = list(cfg["evaluate"]["saliency_methods"])
    if have_maps:
        methods.append("counterfactual_agnostic")
        if acat is not None:
            methods.append("counterfactual_acat")
    results = {m: {k: [] for k in SALIENCY_KEYS} for m in methods}
    from tqdm import tqdm
    for name, p in tqdm(cases[rt.rank::rt.world_size], desc="saliency metrics", leave=False,
                        disable=not rt.progress):
        ds = splits[name]
        b = ds.get([p], with_saliency=have_maps)
        x = b["x"].to(rt.device)
        g = ds.indices[p]
        mask = np.asarray(ds.array("mask")[g])
        regions = ds.array("regions")
        region = lesion_region(mask, None if regions is None else np.asarray(regions[g]),
                               cfg["task"])
        for m in methods:
            if m == "counterfactual_agnostic":
                s = b["saliency"]
            elif m == "counterfactual_acat":
                s = saliency_maps(acat, ae, x, cfg, "counterfactual",
                                  saliency=b["saliency"].to(rt.device))
            elif m == "counterfactual":      # Sec. 4.4: negative counterfactuals
                s = saliency_maps(base, ae, x, cfg, "counterfactual", target=0)
            else:                           # explain the positive class
                s = saliency_maps(base, ae, x, cfg, m, target=1)
            s = s.detach().float().cpu().numpy()[0, :, 0]
            results[m]["hit"].append(float(metrics.is_hit(s, region)))
            i, d = metrics.iou_dice(s, mask > 0)
            results[m]["iou"].append(float(i))
            results[m]["dice"].append(float(d))
            results[m]["energy"].append(energy_in(s, mask > 0))
            results[m]["chance"].append(float((mask > 0).mean()))
    if rt.distributed:
        import torch.distributed as dist
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, results)
        results = {m: {k: [v for r in gathered for v in r[m][k]] for k in SALIENCY_KEYS}
                   for m in methods}
    return [{"method": m, "seed": seed, **results[m]} for m in methods]


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
        model, _ = C.load_final(root / key / "model.safetensors", key)
        model = model.to(rt.device).eval()
        batches = []
        for start in range(0, n, 4):
            b = test.get(np.arange(start, min(n, start + 4)), with_saliency=key == "acat")
            batches.append((b["x"].to(rt.device), b["saliency"].to(rt.device)) if key == "acat"
                           else (b["x"].to(rt.device),))
        for noised in (False, True):
            v = preactivation_variance(model, batches, layers=variance_layers(model),
                                       noise_std=float(cfg["evaluate"]["noise_std"]) if noised
                                       else 0.0, seed=C.derive_seed("noise", seed) % 2 ** 31)
            out.append({"model": key, "noised": noised, "seed": seed,
                        "variances": list(v.values())})
    return out


def evaluate(cfg: dict, rt: C.Runtime, seeds=None) -> dict:
    """Write every table the run's models allow; returns {name: markdown}."""
    out = Path(cfg["out_dir"]) / "tables"
    preds, sal, var, limited = [], [], [], []
    for seed in seeds or cfg["seeds"]:
        root = C.run_dir(cfg, seed)
        if not (root / "baseline" / "model.safetensors").exists():
            rt.log(f"[evaluate] seed {seed}: no baseline yet, skipped")
            continue
        splits = C.load_splits(cfg, rt, seed)
        if all((root / "saliency" / f"{n}.npy").exists() for n in C.SPLITS):
            C.attach_saliency(cfg, seed, splits, root=root)
        preds += predict_folder(cfg, rt, seed, root, splits, out / "predictions")
        sal += saliency_records(cfg, rt, seed, root, splits)
        var += variance_records(cfg, rt, seed, root, splits)
        for n in cfg["limited_data"]:
            sroot = root / f"limited{n}"
            if sroot.exists():
                import copy
                sub = copy.deepcopy(cfg)
                sub["data"]["max_train"] = n
                ssplits = C.load_splits(sub, rt, seed)
                limited += predict_folder(sub, rt, seed, sroot, ssplits, out / "predictions", n)
    written = {}
    if not rt.is_main:
        return written
    main = [r for r in preds if not r["model"].startswith("dropout")]
    task = cfg["task"]
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
    nseeds = len({r["seed"] for r in sal})
    se_note = ("SE over seeds." if nseeds > 1 else
               "One seed: SE over cases.")
    if sal:
        written["sec44_hit_scores"] = write_table(
            out, "sec44_hit_scores", "Sec. 4.4: hit score of saliency maps on positive test scans",
            table_saliency(sal, ("hit",)),
            ("A hit: the saliency arg-max lies in the lesion's vascular territory."
             if task == "brain" else "A hit: the saliency arg-max lies inside the lesion mask.")
            + " " + se_note)
        written["table5_iou_dice"] = write_table(
            out, "table5_iou_dice", "Table 5: IoU and Dice of saliency maps (dynamic percentile)",
            table_saliency(sal, ("iou", "dice"), pct=False), se_note)
        written["saliency_energy"] = write_table(
            out, "saliency_energy", "Beyond the paper: share of saliency mass inside the lesion",
            table_saliency(sal, ("energy", "chance")),
            "A map with no preference scores the lesion's volume fraction (last column). " + se_note)
    if var:
        written["table3_variances"] = write_table(
            out, "table3_variances", "Table 3: pre-activation variances, original and noised inputs",
            table_variances(var),
            f"Noise: N(0, {cfg['evaluate']['noise_std']}^2) added to the [0, 1] input.")
    if any(r["model"].startswith("dropout") for r in preds):
        written["sec47_dropout"] = write_table(
            out, "sec47_dropout", "Sec. 4.7: feature dropout at ACAT's attention stages",
            table_dropout(preds))
    if limited:
        written["table4_limited"] = write_table(
            out, "table4_limited", "Table 4: test accuracy with limited training data",
            table_limited(limited))
    if written:
        (out / "tables.md").write_text(f"# {cfg['name']}: tables\n\n" + "\n".join(written.values()))
        rt.log(f"[evaluate] wrote {len(written)} tables into {out}")
    return written


def main(argv=None):
    ap = C.base_parser(__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the config's)")
    args = ap.parse_args(argv)
    cfg = C.config_from_args(args)
    rt = C.setup_runtime(cfg)
    try:
        written = evaluate(cfg, rt, seeds=args.seeds)
        if rt.is_main:
            print("\n".join(written.values()))
    finally:
        C.shutdown(rt)


if __name__ == "__main__":
    C.run_main(main)
