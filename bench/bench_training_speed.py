"""Seconds per training step of each stage of Algorithm 1, and per saliency map, by memory format.

    PYTHONPATH=. python bench/bench_training_speed.py --config runs/probe_s22/config.json --seed 1 [--threads 2]

For a trained run (the config's out_dir, run seed ``--seed``: its baseline, autoencoder, ACAT and maps),
each stage's real training step (``training.loop.train_step``: the stage's batch with its flips and
augmentation, forward, backward, Adam) on the first batches of the training split, and the maps
``training/make_saliency.py`` makes (the config's saliency options, its batch size, test volumes), once
with the nets in contiguous (NCHW) memory format and once in channels-last (``runtime.channels_last``;
a net with a strided 1x1 convolution trains contiguous, as ``Runtime.place`` says why).
The two formats run in turn, ``--repeats`` times each, so that both see about the same load; the table
gives the median seconds, the stage's minutes projected from the config (steps x epochs; validation
not counted), and the maps' Pearson correlation between the formats. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from training.cards import load_final
from training.classifier import classifier_stage
from training.config import TASK_DEFAULTS, HyperParams, load_config
from training.data import attach_saliency, load_splits, run_dir
from training.loop import train_step
from training.make_saliency import saliency_maps, search_precision
from training.runtime import has_strided_1x1, started
from training.train_autoencoder import SliceSet, autoencoder_stage

FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def stage_steps(cfg, splits, rt, root, seed):
    """(name, model, stage, data, hyper-parameters, optimiser steps in all) of the three trained stages."""
    train, label_map = splits["train"], TASK_DEFAULTS[cfg["task"]]["flip_label_map"]

    def classifier_row(name):
        model = load_final(root / name / "model.safetensors", name)[0]
        hp = HyperParams.from_config(cfg[name])
        stage = classifier_stage(name, hp, train, seed=seed, num_classes=model.num_classes,
                                 needs_saliency=name == "acat", label_map=label_map, rt=rt)
        return name, model, stage, train, hp, -(-len(train) // hp.batch_size) * hp.epochs

    hp, slices = HyperParams.from_config(cfg["autoencoder"]), SliceSet(train)
    autoencoder = ("autoencoder", load_final(root / "autoencoder" / "model.safetensors", "autoencoder")[0],
                   autoencoder_stage(hp, seed), slices, hp, -(-len(slices) // hp.batch_size) * hp.epochs)
    return [classifier_row("baseline"), autoencoder, classifier_row("acat")]


def time_step(model, stage, data, hp, rt, fmt, batches=2) -> float:
    """Median seconds of one optimiser step (after one warm-up step) with `model` in format `fmt`."""
    model = copy.deepcopy(model).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    times = []
    for b in range(batches + 1):
        pos = np.arange(b * hp.batch_size, (b + 1) * hp.batch_size)
        t = time.perf_counter()
        train_step(model, opt, stage, data, [pos], 0, rt)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def time_maps(clf, ae, x, cfg, fmt):
    """(seconds a volume, maps) of make_saliency's maps of `x` with the nets in format `fmt`."""
    clf, ae = copy.deepcopy(clf).to(memory_format=fmt).eval(), copy.deepcopy(ae).to(memory_format=fmt).eval()
    bs = int(cfg["saliency"]["batch_size"])
    t, maps = time.perf_counter(), []
    for s in range(0, len(x), bs):
        maps.append(saliency_maps(clf, ae, x[s:s + bs], cfg).float())
    return (time.perf_counter() - t) / len(x), torch.cat(maps)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="training/configs/brain_synth_demo.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--volumes", type=int, default=8, help="test volumes for the maps")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cfg["runtime"].update(progress=False, threads=args.threads)
    with started(cfg) as rt:
        cfg["saliency"]["options"] = {**cfg["saliency"]["options"], **search_precision(cfg, rt)}  # as make_saliency
        torch.set_num_threads(args.threads)
        root = run_dir(cfg, args.seed)
        splits = load_splits(cfg, rt, args.seed)
        attach_saliency(cfg, args.seed, splits, root=root)
        print(f"{cfg['name']} seed {args.seed}: {len(splits['train'])} training volumes, {args.threads} thread(s)")
        print(f"{'stage':<13}{'format':<15}{'s / step':>10}{'projected min':>15}")
        for name, model, stage, data, hp, steps in stage_steps(cfg, splits, rt, root, args.seed):
            for fname, fmt in FORMATS.items():
                if fmt == torch.channels_last and has_strided_1x1(model):   # Runtime.place keeps it contiguous
                    print(f"{name:<13}{fname:<15}{'-':>10}{'-':>15}  (strided 1x1 convolution: trains contiguous)")
                    continue
                s = np.median([time_step(model, stage, data, hp, rt, fmt) for _ in range(args.repeats)])
                print(f"{name:<13}{fname:<15}{s:>10.3f}{s * steps / 60:>15.1f}", flush=True)
        clf = load_final(root / "baseline" / "model.safetensors", "baseline")[0]
        ae = load_final(root / "autoencoder" / "model.safetensors", "autoencoder")[0]
        x = splits["test"].get(np.arange(args.volumes))["x"]
        maps = {}
        for fname, fmt in FORMATS.items():
            s, maps[fname] = min((time_maps(clf, ae, x, cfg, fmt) for _ in range(args.repeats)), key=lambda r: r[0])
            n = sum(len(d) for d in splits.values())
            print(f"{'maps':<13}{fname:<15}{s:>10.3f}{s * n / 60:>15.1f}  (s a volume; all splits)", flush=True)
        print(f"maps: Pearson between the formats {pearson(maps['contiguous'], maps['channels-last']):.5f}, "
              f"largest difference {float((maps['contiguous'] - maps['channels-last']).abs().max()):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
