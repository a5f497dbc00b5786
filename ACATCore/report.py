"""Writing an :class:`~ACATCore.result.AnalysisResult`: maps, JSON and a visual report.

Output folder layout (``save_result``)::

    result.json                    probabilities and everything else, schema: schemas/analysis_result.schema.json
    saliency.nrrd                  counterfactual saliency in [0, 1] on the input grid
    attention_<early|middle|late|fused>.nrrd
    counterfactual_<class>.nrrd    the scan as the model would see it for <class>, in HU
    report/index.html              the visual report, tying together:
    report/figure2_attention.png   paper Fig. 2: CT, saliency >= 95th percentile, early/middle/late/fused masks
    report/figure3_saliency.png    paper Fig. 3: CT, saliency averaged over slices, saliency at the peak slice
    report/counterfactuals.png     CT, each counterfactual, and the change (counterfactual - CT)
    report/slice_weights.png       ACAT slice attention weight per input slice
    report/panels/*.png            every panel alone, pixel-aligned with report/panels/ct.png

(``.nii.gz`` instead of ``.nrrd`` with ``fmt="nifti"``.) The folder is written atomically
(:mod:`ACATCore.outputs`): never half-written, a symbolic link stays a link.
The report always shows axial slices, whatever plane the volume was stored in.
"""
from __future__ import annotations

import csv
import html
import io as _io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import ACATError, ConfigError
from .file_checks import display_path
from .outputs import AtomicFolder, atomic_write_text
from .result import ATTENTION_NAMES, SAME_AS_BASELINE_NOTE, AnalysisResult
from .volume import Volume

JSON_SCHEMA_VERSION = "1.0"
FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "analysis_result.schema.json"


def load_matplotlib(agg: bool = False):
    """matplotlib (``agg``: switched to its file-only backend); an ACATError naming the ``report`` extra
    when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ACATError("the report needs matplotlib: pip install 'ACATCore[report]', or analyse without "
                        "a report (--no-report, report=False)") from None
    if agg:
        matplotlib.use("Agg", force=False)
    return matplotlib


# ----------------------------------------------------------------------------------- saving
def slug(name: str) -> str:
    s = "".join(c.lower() if c.isalnum() else "_" for c in str(name)).strip("_")
    while "__" in s:
        s = s.replace("__", "_")
    return s or "class"


def map_files(result: AnalysisResult, fmt: str = "nrrd") -> dict:
    """key -> (relative file name, Volume) of every map written."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    ext = FORMATS[fmt]
    files = {"saliency": (f"saliency{ext}", result.saliency)}
    for name in ATTENTION_NAMES:
        files[f"attention_{name}"] = (f"attention_{name}{ext}", result.attention[name])
    for name, vol in result.counterfactuals.items():
        files[f"counterfactual_{slug(name)}"] = (f"counterfactual_{slug(name)}{ext}", vol)
    return files


def save_result(result: AnalysisResult, out, fmt: str = "nrrd", overwrite: bool = False,
                report: bool = True, check=None) -> Path:
    """Write maps, ``result.json`` and (``report``) the visual report into folder ``out``, atomically.

    ``check``: optional callable run between files (raises to cancel). Returns ``out``.
    """
    from .io import write_volume
    check = check or (lambda: None)
    out = Path(out)
    files = map_files(result, fmt)
    with AtomicFolder(out, overwrite) as tmp:
        for key, (name, vol) in files.items():
            write_volume(_as_float32(vol), tmp / name)
            check()
        rel = {key: name for key, (name, _) in files.items()}
        if report:
            make_report(result, tmp / "report", files=rel)
            rel["report"] = "report/index.html"
            check()
        doc = result_to_json(result, files=rel)
        atomic_write_text(tmp / "result.json", json.dumps(doc, indent=2) + "\n")
    return out


def _as_float32(vol: Volume) -> Volume:
    return vol.with_array(np.asarray(vol.array, dtype=np.float32))


# ----------------------------------------------------------------------------------- JSON
def _floats(a):
    return [None if (v is None or not math.isfinite(float(v))) else float(v) for v in np.ravel(a)]


def result_to_json(result: AnalysisResult, files: dict | None = None) -> dict:
    """The JSON document of an analysis (schema: ``schemas/analysis_result.schema.json``)."""
    from . import __version__
    card = result.model_card or {}
    settings = dict(result.settings)
    vol = result.input
    probs = {n: float(p) for n, p in zip(result.class_names, result.probabilities)}
    base = None
    if result.baseline_probabilities is not None:
        base = {n: float(p) for n, p in zip(result.class_names, result.baseline_probabilities)}
    peak = None
    if result.peak_index is not None:
        ras = vol.ijk_to_ras() @ np.array([*result.peak_index, 1.0])
        peak = {"index_ijk": [int(v) for v in result.peak_index],
                "lps_mm": [float(v) for v in result.peak_lps],
                "ras_mm": [float(v) for v in ras[:3]],
                "value": float(result.saliency.array[result.peak_index[2], result.peak_index[1],
                                                     result.peak_index[0]]),
                "territory": result.peak_territory}
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "acat_version": __version__,
        "input": {
            "path": _display(settings.get("input_path") or vol.metadata.get("source")),
            "shape_kji": [int(v) for v in vol.shape],
            "spacing_mm": [float(v) for v in vol.spacing],
            "origin_lps_mm": [float(v) for v in vol.origin],
            "direction": [float(v) for v in np.ravel(vol.direction)],
        },
        "model": {
            "task": card.get("task"),
            "model_name": card.get("model_name"),
            "sha256": card.get("sha256"),
            "acat_version": card.get("acat_version"),
            "preprocessing": card.get("preprocessing"),
        },
        "class_names": list(result.class_names),
        "probabilities": probs,
        "baseline_probabilities": base,
        "same_as_baseline": result.same_as_baseline,
        "predicted_class": result.predicted_class,
        "predicted_probability": float(result.probabilities[result.predicted_index]),
        "counterfactual_classes": list(result.counterfactuals.keys()),
        "coverage": settings.get("coverage"),
        "slices_seen": [int(k) for k in result.slices_seen],
        "slice_weights": _floats(result.slice_weights),
        "peak": peak,
        "settings": {k: settings.get(k) for k in ("steps", "alpha", "early_stop", "device", "offsets", "search",
                                                  "smoothing")},
        "files": dict(files or {}),
        "timings_s": {k: float(v) for k, v in (result.timings or {}).items()},
        "warnings": [str(w) for w in result.warnings],
    }


def _display(path):
    return None if path is None else display_path(path)


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_json(doc, schema: dict | None = None) -> list:
    """Errors of ``doc`` against the result JSON Schema (or ``schema``), one message each, each naming
    the path of the offending value; empty when valid. Needs ``jsonschema`` (the ``report`` extra);
    writing result.json does not."""
    try:
        import jsonschema
    except ImportError:
        raise ACATError("validating result.json needs jsonschema: pip install 'ACATCore[report]'") from None
    schema = load_schema() if schema is None else schema
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def write_summary_csv(rows: list, path) -> Path:
    """The batch summary: one row per case, the union of all keys as columns (atomic)."""
    columns = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: display_path(row.get(k, "")) if isinstance(row.get(k), str) else row.get(k, "")
                         for k in columns})
    return atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------------- images
def display_slice(vol: Volume, k: int, array=None) -> np.ndarray:
    """Axial slice ``k`` of ``array`` (default: the volume's) in the radiological view: rows from
    anterior to posterior, patient's right on the image's left (flips from the direction matrix)."""
    a = np.asarray(vol.array if array is None else array)[k]
    d = vol.direction
    if d[0, 0] < 0:      # i runs towards patient right: flip so columns run right -> left(+x)
        a = a[:, ::-1]
    if d[1, 1] < 0:      # j runs towards anterior: flip so rows run anterior -> posterior(+y)
        a = a[::-1, :]
    return np.ascontiguousarray(a)


def ct_rgb(ct_slice: np.ndarray, window) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    g = np.clip((np.asarray(ct_slice, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def overlay(rgb: np.ndarray, values: np.ndarray, cmap: str = "jet", alpha: float = 0.45,
            vmin: float = 0.0, vmax: float = 1.0, mask=None) -> np.ndarray:
    """``rgb`` with ``values`` blended on top in colour map ``cmap`` (where ``mask``, default everywhere)."""
    colours = load_matplotlib().colormaps[cmap]
    v = np.clip((np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    col = colours(v)[..., :3]
    a = np.full(v.shape, alpha, dtype=np.float32) if mask is None else np.where(mask, alpha, 0.0)
    return np.clip(rgb * (1 - a[..., None]) + col * a[..., None], 0, 1)


def _window(result: AnalysisResult):
    spec = (result.model_card or {}).get("preprocessing") or {}
    win = spec.get("window")
    if win and len(win) == 2:
        return float(win[0]), float(win[1])
    return -1000.0, 400.0


def report_slice(result: AnalysisResult) -> int:
    """The slice the report shows: the saliency peak's, else the seen slice with most saliency."""
    if result.peak_index is not None:
        return int(result.peak_index[2])
    if len(result.slices_seen):
        return int(result.slices_seen[len(result.slices_seen) // 2])
    return result.input.shape[0] // 2


def axial_view(result: AnalysisResult) -> AnalysisResult:
    """``result`` with every volume turned to axial slices (``to_canonical``) when the input was
    stored as coronal or sagittal planes; slice indices, slice weights and the peak follow. An
    axially stored result comes back as it is (the display flips rows and columns itself)."""
    from .preprocessing import canonical_axes, to_canonical
    vol = result.input
    perm, flip = canonical_axes(vol.direction)
    if tuple(perm) == (0, 1, 2):
        return result
    n = vol.shape[perm[0]]
    seen = np.asarray(result.slices_seen, dtype=int)
    seen = np.sort(n - 1 - seen) if flip[0] else seen
    weights = np.asarray(result.slice_weights, dtype=float)
    if flip[0]:
        weights = weights[::-1]
    peak = None
    if result.peak_index is not None:
        i, j, k = result.peak_index
        kji = (k, j, i)
        c = [kji[perm[a]] for a in range(3)]
        shape = [vol.shape[perm[a]] for a in range(3)]
        c = [shape[a] - 1 - c[a] if flip[a] else c[a] for a in range(3)]
        peak = (int(c[2]), int(c[1]), int(c[0]))
    return replace(result, input=to_canonical(vol), saliency=to_canonical(result.saliency),
                   attention={n_: to_canonical(v) for n_, v in result.attention.items()},
                   counterfactuals={n_: to_canonical(v) for n_, v in result.counterfactuals.items()},
                   slices_seen=seen, slice_weights=weights, peak_index=peak)


def make_panels(result: AnalysisResult, k: int | None = None) -> dict:
    """name -> RGB float array (H, W, 3), all pixel-aligned with "ct": the report's panels (axial
    slice ``k`` of the axial view, :func:`axial_view`)."""
    result = axial_view(result)
    k = report_slice(result) if k is None else k
    vol = result.input
    win = _window(result)
    ct = display_slice(vol, k)
    base = ct_rgb(ct, win)
    panels = {"ct": base}
    sal = result.saliency.array
    seen = sal[result.slices_seen] if len(result.slices_seen) else sal
    positive = seen[seen > 0]
    thr = float(np.percentile(positive, 95)) if positive.size else 1.0
    s_k = display_slice(vol, k, sal)
    panels["saliency_p95"] = overlay(base, s_k, "autumn", 0.75, vmin=thr, vmax=max(float(seen.max()), thr + 1e-6),
                                     mask=s_k >= thr)
    for name in ATTENTION_NAMES:
        # colour range: the mask's own range over the seen slices (an untrained or flat mask would
        # otherwise be one colour); the HTML page states it
        a = result.attention[name].array
        a_seen = a[result.slices_seen] if len(result.slices_seen) else a
        lo, hi = float(a_seen.min()), float(a_seen.max())
        panels[f"attention_{name}"] = overlay(base, display_slice(vol, k, a), "jet", 0.45,
                                              vmin=lo, vmax=max(hi, lo + 1e-6))
    mean_sal = sal[result.slices_seen].mean(axis=0) if len(result.slices_seen) else sal.mean(axis=0)
    mean_sal_d = display_slice(vol, 0, mean_sal[None])
    panels["saliency_mean"] = overlay(base, mean_sal_d, "Reds", 0.6, vmin=0.0, vmax=max(float(mean_sal.max()), 1e-6))
    panels["saliency"] = overlay(base, s_k, "Reds", 0.6, vmin=0.0, vmax=max(float(sal.max()), 1e-6))
    for name, cf in result.counterfactuals.items():
        c = display_slice(vol, k, cf.array)
        panels[f"counterfactual_{slug(name)}"] = ct_rgb(c, win)
        diff = c - ct
        lim = max(float(np.abs(diff).max()), 1e-6)
        panels[f"change_{slug(name)}"] = overlay(base, diff, "coolwarm", 0.7, vmin=-lim, vmax=lim,
                                                 mask=np.abs(diff) > 0.1 * lim)
    return panels


def _save_rgb(path: Path, rgb: np.ndarray):
    load_matplotlib()
    import matplotlib.pyplot as plt
    plt.imsave(str(path), np.clip(rgb, 0, 1))


def make_report(result: AnalysisResult, folder, files: dict | None = None) -> Path:
    """PNG figures (paper Fig. 2/3 style) and ``index.html`` in ``folder``. Returns the HTML path."""
    load_matplotlib(agg=True)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    (folder / "panels").mkdir(parents=True, exist_ok=True)
    original = result
    result = axial_view(result)
    k = report_slice(result)
    panels = make_panels(result, k)
    for name, rgb in panels.items():
        _save_rgb(folder / "panels" / f"{name}.png", rgb)
    sx, sy = result.input.spacing[0], result.input.spacing[1]
    aspect = sy / sx

    def figure(names_titles, path, title):
        n = len(names_titles)
        fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
        for ax, (name, caption) in zip(axes[0], names_titles):
            ax.imshow(panels[name], aspect=aspect, interpolation="nearest")
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / path, dpi=110)
        plt.close(fig)

    letters = "abcdefghij"
    fig2 = [("ct", "CT"), ("saliency_p95", "saliency >= 95th pct")] + \
           [(f"attention_{n}", f"{n} attention") for n in ATTENTION_NAMES]
    figure([(n, f"({letters[i]}) {t}") for i, (n, t) in enumerate(fig2)], "figure2_attention.png",
           f"Saliency and attention masks, slice k={k}")
    fig3 = [("ct", "CT"), ("saliency_mean", "saliency, mean over slices"), ("saliency", f"saliency, slice {k}")]
    figure([(n, f"({letters[i]}) {t}") for i, (n, t) in enumerate(fig3)], "figure3_saliency.png",
           "Counterfactual saliency")
    cfs = [("ct", "CT")]
    for name in result.counterfactuals:
        cfs.append((f"counterfactual_{slug(name)}", f"counterfactual: {name}"))
    for name in result.counterfactuals:
        cfs.append((f"change_{slug(name)}", f"change to {name} (blue -, red +)"))
    figure(cfs, "counterfactuals.png", f"Counterfactuals, slice k={k}")

    w = np.asarray(result.slice_weights, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.12 * len(w) + 2)), 2.6))
    ks = np.arange(len(w))
    ok = np.isfinite(w)
    ax.bar(ks[ok], w[ok], color=["tab:red" if kk == k else "tab:blue" for kk in ks[ok]], width=0.8)
    ax.set_xlabel("input slice k")
    ax.set_ylabel("ACAT slice weight")
    ax.set_xlim(-1, len(w))
    ax.set_title(f"slice attention ({int(ok.sum())} of {len(w)} slices seen; red: shown slice)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "slice_weights.png", dpi=110)
    plt.close(fig)

    page = _html(original, k, files or {})
    atomic_write_text(folder / "index.html", page)
    return folder / "index.html"


def _html(result: AnalysisResult, k: int, files: dict) -> str:
    e = html.escape
    card = result.model_card or {}
    settings = result.settings
    rows = []
    for i, name in enumerate(result.class_names):
        b = "" if result.baseline_probabilities is None else f"{result.baseline_probabilities[i]:.3f}"
        strong = " style='font-weight:bold'" if i == result.predicted_index else ""
        rows.append(f"<tr{strong}><td>{e(name)}</td><td>{result.probabilities[i]:.3f}</td><td>{b}</td></tr>")
    peak = "none (the saliency map is empty)"
    if result.peak_index is not None:
        i, j, kk = result.peak_index
        peak = (f"voxel (i, j, k) = ({i}, {j}, {kk}); LPS = ({result.peak_lps[0]:.1f}, "
                f"{result.peak_lps[1]:.1f}, {result.peak_lps[2]:.1f}) mm")
        if card.get("task") == "brain":
            peak += f"; vascular territory: {e(str(result.peak_territory or 'not determined'))}"
    file_items = "".join(f"<li><a href='../{e(v)}'>{e(v)}</a> ({e(key)})</li>"
                         for key, v in files.items() if key != "report")
    warns = "".join(f"<li>{e(str(w))}</li>" for w in result.warnings) or "<li>none</li>"
    ranges = []
    view = axial_view(result)
    for name in ATTENTION_NAMES:
        a = view.attention[name].array
        a = a[view.slices_seen] if len(view.slices_seen) else a
        ranges.append(f"{name} {float(a.min()):.3f}..{float(a.max()):.3f}")
    attention_ranges = "; ".join(ranges)
    src = settings.get("input_path") or result.input.metadata.get("source") or "array"
    same = f"\n<p><b>{e(SAME_AS_BASELINE_NOTE)}.</b></p>" if result.same_as_baseline else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ACAT analysis</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}img{{max-width:100%}}</style>
</head><body>
<h1>ACAT analysis</h1>
<p><b>Research software, not a medical device: not for diagnosis.</b></p>
<p>Input: {e(str(src))} &mdash; {result.input.shape[2]} x {result.input.shape[1]} x {result.input.shape[0]} voxels,
spacing {", ".join(f"{s:.3g}" for s in result.input.spacing)} mm.<br>
Model: {e(str(card.get("model_name")))} ({e(str(card.get("task")))}), weights sha256 {e(str(card.get("sha256", ""))[:16])}&hellip;<br>
Coverage: {e(str(settings.get("coverage")))}; the model saw {len(result.slices_seen)} of {len(result.slice_weights)} slices.
Counterfactual search: {e(str((settings.get("search") or {}).get("optimizer", "")))} {e(str(settings.get("steps")))} steps,
alpha {e(str(settings.get("alpha")))}, early stop {e(str(settings.get("early_stop")))};
saliency shown smoothed in-plane by {e(str(settings.get("smoothing")))} model-grid pixels.</p>
<h2>Prediction: {e(result.predicted_class)} ({result.probabilities[result.predicted_index]:.1%})</h2>
<table><tr><th>class</th><th>ACAT</th><th>baseline</th></tr>{''.join(rows)}</table>{same}
<p>Saliency peak: {peak}</p>
<h2>Saliency and attention (slice k = {k})</h2>
<p>(a) CT, (b) voxels at or above the 95th percentile of the saliency map, (c)-(f) ACAT spatial
attention masks after the early, middle and late layers and their fusion (cf. paper Fig. 2), each
coloured over its own range (blue: its minimum, red: its maximum): {attention_ranges}.</p>
<img src="figure2_attention.png" alt="saliency and attention masks">
<h2>Counterfactual saliency</h2><img src="figure3_saliency.png" alt="saliency">
<h2>Counterfactuals</h2>
<p>The scan changed the way the classifier would need it to be for each class (in the autoencoder
latent space), and the change itself.</p>
<img src="counterfactuals.png" alt="counterfactuals">
<h2>Slice attention</h2><img src="slice_weights.png" alt="slice weights">
<h2>Files</h2><ul>{file_items}<li><a href='../result.json'>result.json</a></li></ul>
<h2>Warnings</h2><ul>{warns}</ul>
</body></html>
"""
