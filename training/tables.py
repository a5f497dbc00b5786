"""The paper's tables from predictions and saliency scores: pure functions, tested on known inputs.

Each table_* function takes records (dicts, see each docstring) and returns (header, rows) of
strings; write_table writes one as Markdown and CSV. Means and standard errors are over seeds.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

DISPLAY = {"baseline": "Baseline", "smic": "SMIC", "salclassnet": "SalClassNet", "hsm": "HSM",
           "spatt": "SpAtt", "seatt": "SeAtt", "vit": "ViT", "acat": "ACAT"}
ORDER = ["baseline", "smic", "salclassnet", "hsm", "spatt", "seatt", "vit", "acat"]
SALIENCY_DISPLAY = {"counterfactual": "Counterfactual (ours, negative target)",
                    "counterfactual_agnostic": "Counterfactual (ours, class-agnostic)",
                    "counterfactual_acat": "Counterfactual (ours, ACAT as classifier)",
                    "latent_shift": "Latent shift", "norec": "NoRec", "gradient": "Gradient",
                    "integrated_gradients": "Integrated gradients", "gradcam": "Grad-CAM",
                    "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM"}


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
