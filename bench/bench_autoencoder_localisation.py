"""How the autoencoder, the classifier and the search's options limit where the counterfactual map points.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_autoencoder_localisation.py \
        --config training/configs/brain_synth_demo.json --out runs/brain_n960_a1 --seed 0 \
        --split train --cases 96 --autoencoders own runs/other/seed0/autoencoder/model.safetensors ckpt.pt \
        [--classifiers own runs/ft/checkpoint_best.pt] [--searches config 'a1000={"alpha": 1000}']

For one run seed and the positive cases of one split, every combination of an autoencoder in
``--autoencoders`` ("own": the seed's; a model.safetensors; or a training checkpoint .pt of the seed's
architecture, e.g. a copy of checkpoint_last.pt taken after an early epoch), a classifier in
``--classifiers`` ("own": the seed's baseline; or a training checkpoint .pt of its architecture, e.g. a
fine-tuned copy; heads used only in training are dropped) and a search in ``--searches`` ("config": the
config's saliency options; NAME=JSON: those options updated by the JSON, e.g. ``'t0={"target": 0}'``) makes
the class-agnostic counterfactual maps as ``training/make_saliency.py`` does. Per row: reconstruction MSE
on those cases' slices, the share of the lesions' contrast against a 3-pixel ring that the
reconstruction keeps (median), and the maps' hit score (SE over cases), IoU and Dice, raw and smoothed
by 2 px (the engine's default for the reported peak), and seconds a volume. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACATCore import metrics                                   # noqa: E402
from ACATCore.errors import ACATError                          # noqa: E402
from ACATCore.filters import gaussian_smooth                   # noqa: E402
from training.cards import load_final                          # noqa: E402
from training.checkpointing import load_checkpoint             # noqa: E402
from training.config import load_config                        # noqa: E402
from training.data import load_splits, run_dir                 # noqa: E402
from training.evaluate import lesion_region                    # noqa: E402
from training.make_saliency import saliency_maps, search_precision  # noqa: E402
from training.runtime import started                           # noqa: E402

SIGMAS = (0.0, 2.0)


def load_autoencoder(source: str, own: Path):
    """The autoencoder named by ``source`` ("own", a model file, or a checkpoint .pt of own's shape)."""
    if source == "own":
        return load_final(own, "autoencoder")[0].eval()
    if source.endswith(".pt"):
        ae = load_final(own, "autoencoder")[0]
        ae.load_state_dict(load_checkpoint(Path(source))["model"])
        return ae.eval()
    return load_final(Path(source), "autoencoder")[0].eval()


def load_classifier(source: str, own: Path):
    """The baseline named by ``source`` ("own", or a training checkpoint .pt of own's architecture; weights of
    heads that exist only in training, e.g. the lesion-cell head, are dropped)."""
    clf = load_final(own, "baseline classifier")[0]
    if source != "own":
        weights = load_checkpoint(Path(source))["model"]
        keys = clf.state_dict().keys()
        try:
            clf.load_state_dict({k: v for k, v in weights.items() if k in keys})
        except RuntimeError as e:
            raise SystemExit(f"error: {source} is not a checkpoint of this run's baseline ({str(e)[:200]})")
    return clf.eval()


def search_options(spec: str, config_options: dict) -> tuple:
    """(name, options) of one ``--searches`` entry: "config" or NAME=JSON (updates of the config's options)."""
    if spec == "config":
        return spec, dict(config_options)
    name, sep, text = spec.partition("=")
    if not sep:
        raise SystemExit(f"error: a search is 'config' or NAME=JSON, not {spec!r}")
    try:
        updates = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: search {name!r}: {text!r} is not JSON ({e})")
    if not isinstance(updates, dict):
        raise SystemExit(f"error: search {name!r}: give a JSON object of options, not {text!r}")
    return name, {**config_options, **updates}


def contrast_kept(x: np.ndarray, rec: np.ndarray, lesion: np.ndarray) -> float:
    """(S, H, W) input, reconstruction, lesion: the reconstruction's lesion contrast over the input's."""
    ring = ndimage.binary_dilation(lesion, np.ones((1, 3, 3)), iterations=3) & ~lesion & (x > 0.05)
    cx = x[ring].mean() - x[lesion].mean()
    return float((rec[ring].mean() - rec[lesion].mean()) / cx) if ring.any() and cx > 0 else float("nan")


def scores(cfg, clf, ae, ds, cases, masks, regions) -> dict:
    """Per-case MSE, contrast kept and (hit, IoU, Dice) per sigma of one autoencoder's maps."""
    out = {"mse": [], "kept": [], **{s: [] for s in SIGMAS}}
    bs = int(cfg["saliency"]["batch_size"])
    for start in range(0, len(cases), bs):
        pos = cases[start:start + bs]
        x = ds.get(pos)["x"]
        with torch.no_grad():
            rec = ae(x).float()
        maps = saliency_maps(clf, ae, x, cfg).float().numpy()[:, :, 0]
        for i, p in enumerate(pos):
            g = ds.indices[p]
            labels, xi, ri = np.asarray(masks[g]), x[i, :, 0].numpy(), rec[i, :, 0].numpy()
            out["mse"].append(float(((ri - xi) ** 2).mean()))
            out["kept"].append(contrast_kept(xi, ri, labels > 0))
            region = lesion_region(labels, np.asarray(regions[g]), cfg["task"])
            for s in SIGMAS:
                m = torch.from_numpy(np.ascontiguousarray(maps[i]))[None, :, None]
                m = gaussian_smooth(m, s)[0, :, 0].numpy() if s else maps[i]
                out[s].append((metrics.is_hit(m, region), *metrics.iou_dice(m, labels > 0)))
    return out


def row(source: str, clf_source: str, search: str, r: dict, seconds: float) -> str:
    """One table row: the models' and search's names, then the scores of :func:`scores` and the time a volume."""
    line = f"{source[-27:]:<28}{clf_source[-27:]:<28}{search[:9]:<10}"
    line += f"{np.mean(r['mse']):>10.2e}{np.nanmedian(r['kept']):>7.2f}"
    for s in SIGMAS:
        a = np.array(r[s], float)
        se = 100 * a[:, 0].std(ddof=1) / np.sqrt(len(a))
        line += f"{100 * a[:, 0].mean():>9.1f}%{se:>6.1f}{np.nanmean(a[:, 1]):>7.3f}{np.nanmean(a[:, 2]):>7.3f}"
    return line + f"{seconds:>7.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="training/configs/brain_synth_demo.json")
    ap.add_argument("--out", help="the Algorithm 1 run folder (its seed's baseline); default: the config's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="train", choices=["train", "val", "test"])
    ap.add_argument("--cases", type=int, default=96, help="positive cases (the split's first)")
    ap.add_argument("--autoencoders", nargs="+", default=["own"])
    ap.add_argument("--classifiers", nargs="+", default=["own"])
    ap.add_argument("--searches", nargs="+", default=["config"])
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cfg["out_dir"], cfg["runtime"]["progress"] = args.out or cfg["out_dir"], False
    with started(cfg) as rt:
        cfg["saliency"]["options"] = {**cfg["saliency"]["options"], **search_precision(cfg, rt)}  # as make_saliency
        root = run_dir(cfg, args.seed)
        ds = load_splits(cfg, rt, args.seed)[args.split]
        masks, regions = ds.array("mask"), ds.array("regions")
        cases = [p for p in np.flatnonzero(ds.labels > 0) if masks[ds.indices[p]].any()][:args.cases]
        searches = [search_options(s, cfg["saliency"]["options"]) for s in args.searches]
        print(f"{len(cases)} positive {args.split} cases of run seed {args.seed}, "
              f"config's search {cfg['saliency']['options']}")
        print(f"{'autoencoder':<28}{'classifier':<28}{'search':<10}{'MSE':>10}{'kept':>7}" + "".join(
            f"{'hit s' + format(s, 'g'):>10}{'(SE)':>6}{'IoU':>7}{'Dice':>7}" for s in SIGMAS) + f"{'s/vol':>7}")
        classifiers = [(c, load_classifier(c, root / "baseline" / "model.safetensors")) for c in args.classifiers]
        for source in args.autoencoders:
            ae = load_autoencoder(source, root / "autoencoder" / "model.safetensors")
            for clf_source, clf in classifiers:
                for name, options in searches:
                    t0 = time.perf_counter()
                    r = scores({**cfg, "saliency": {**cfg["saliency"], "options": options}}, clf, ae, ds, cases,
                               masks, regions)
                    print(row(source, clf_source, name, r, (time.perf_counter() - t0) / len(cases)), flush=True)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ACATError as e:                      # no trained run here: say which file is missing
        raise SystemExit(f"error: {e}")
