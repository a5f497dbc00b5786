"""Seconds per training step of each stage of Algorithm 1 at a config's sizes, without data or a finished run.

    PYTHONPATH=. python bench/bench_stage_steps.py --config training/configs/brain_synth_demo.json [--procs 2]

The config's nets, untrained (weights do not change the cost), in the memory format ``Runtime.place`` gives a
training net, on random inputs of the config's shape (``data.preprocessing``): one optimiser step (forward,
backward, Adam) of the baseline and of ACAT on one process's share of ``batch_size`` volumes, of the autoencoder
on its share of ``batch_size`` slices, and the counterfactual maps of ``saliency.batch_size`` volumes (searched
in bf16 when ``saliency.cpu_bf16`` and this CPU has native bf16, as training/make_saliency.py does). The table
gives the median seconds and each stage's minutes projected for ``--procs`` one-thread processes (training steps
x epochs over the training split, maps over every split; validation, data preparation and start-up not counted).
bench/bench_training_speed.py times the same on a finished run's real batches. Compare two versions of the code
by running it on each, one after the other on an idle machine. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from training.cards import build
from training.config import TASK_DEFAULTS, load_config
from training.make_saliency import saliency_maps, search_precision
from training.runtime import Runtime, keep_freed_memory
from training.train_acat import build_from_baseline


def median_seconds(step, repeats: int) -> float:
    """Median seconds of `step()` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def optimiser_step(model, loss_of):
    """A step function: zero the gradients, backward `loss_of(model)`, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(model).backward()
        opt.step()
    return step


def stage_rows(cfg: dict, procs: int, repeats: int) -> list:
    """(stage, seconds a step or a volume, projected minutes) for baseline, autoencoder, maps and ACAT."""
    rt = Runtime(device=torch.device("cpu"), channels_last=bool(cfg["runtime"]["channels_last"]))
    task, pre = cfg["task"], cfg["data"]["preprocessing"] or TASK_DEFAULTS[cfg["task"]]["preprocessing"]
    shape = (int(pre["slices"]), 1, *pre["size"])
    n = int(cfg["data"]["n"])
    train = int(round(n * cfg["data"]["split"][0]))
    for stage in ("baseline", "acat"):
        cfg[stage]["model"] = cfg[stage]["model"] or TASK_DEFAULTS[task][f"{stage}_model"]
    baseline = build(cfg["baseline"]["model"], cfg["baseline"]["model_config"], task)
    nets = {"baseline": baseline, "acat": build_from_baseline(cfg, "acat", baseline, {})[0],
            "autoencoder": build(cfg["autoencoder"]["model"], cfg["autoencoder"]["model_config"], task)}
    maps_nets = [rt.place(copy.deepcopy(nets[s])).eval() for s in ("baseline", "autoencoder")]   # as make_saliency
    nets = {s: rt.place(net, trains=True).train() for s, net in nets.items()}

    def share(stage):
        return max(1, int(cfg[stage]["batch_size"]) // procs)

    x, y = torch.rand(share("baseline"), *shape), torch.zeros(share("baseline"), dtype=torch.long)
    xs = torch.rand(share("acat"), *shape)
    slices = torch.rand(share("autoencoder"), *shape[1:])
    steps = {"baseline": optimiser_step(nets["baseline"], lambda m: F.cross_entropy(m(x), y)),
             "autoencoder": optimiser_step(nets["autoencoder"], lambda m: F.mse_loss(m(slices), slices)),
             "acat": optimiser_step(nets["acat"], lambda m: F.cross_entropy(m(xs, torch.rand_like(xs)), y[:len(xs)]))}
    per_epoch = {s: -(-train // int(cfg[s]["batch_size"])) for s in ("baseline", "acat")}
    per_epoch["autoencoder"] = -(-train * shape[0] // int(cfg["autoencoder"]["batch_size"]))
    rows = []
    for stage in ("baseline", "autoencoder"):
        s = median_seconds(steps[stage], repeats)
        rows.append((stage, s, s * per_epoch[stage] * int(cfg[stage]["epochs"]) / 60))
    clf, ae = maps_nets
    vols = torch.rand(int(cfg["saliency"]["batch_size"]), *shape)
    precision = search_precision(cfg, rt)                                                # saliency.cpu_bf16
    s = median_seconds(lambda: saliency_maps(clf, ae, vols, cfg, **precision), max(1, repeats // 4)) / len(vols)
    rows.append(("maps", s, s * n / procs / 60))
    s = median_seconds(steps["acat"], repeats)
    rows.append(("acat", s, s * per_epoch["acat"] * int(cfg["acat"]["epochs"]) / 60))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="training/configs/brain_synth_demo.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--procs", type=int, default=2, help="one-thread training processes (torchrun's nproc)")
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = stage_rows(cfg, args.procs, args.repeats)
    print(f"{cfg['name']}: {cfg['data']['n']} volumes, {args.procs} one-thread process(es)")
    print(f"| stage | seconds (a step; maps: a volume) | projected minutes |\n|---|---|---|")
    for stage, s, minutes in rows:
        print(f"| {stage} | {s:.3f} | {minutes:.1f} |")
    print(f"| total | | {sum(r[2] for r in rows):.1f} |")
    return 0


if __name__ == "__main__":
    keep_freed_memory()          # as every training script does
    raise SystemExit(main())
