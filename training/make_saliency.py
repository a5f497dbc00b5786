"""Steps 2-4 of Algorithm 1: counterfactual saliency maps for every volume of the data set.

    python -m training.make_saliency --config training/configs/lung_synth_cpu.json --seed 0
    torchrun --nproc_per_node 4 -m training.make_saliency --config ... --seed 0

For each volume x: z = E(x); minimise g(z) = CE(f(D(z)), t) + alpha |z - E(x)|_1 by gradient
descent towards each class t (20 steps, alpha 100 by default); the map is the mean over classes of
|D(E(x)) - D(z')|, each normalised to [0, 1] (ACATCore.saliency, method "counterfactual").
Maps are class-agnostic: no label is used, so the same maps serve training and test.

Work is sharded across ranks (volume i goes to rank i % world_size). Each map is written as its own
file as soon as it is done (parts/<split>/<index>.npy, atomically), and maps already on disk are
skipped: an interrupted run simply continues. When all parts exist, rank 0 assembles
saliency/<split>.npy (float16, the split's volume order) and <split>_index.npy.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from training.cards import load_final
from training.config import base_parser, config_from_args
from training.data import DataSet, load_splits, run_dir
from training.runtime import Runtime, cpu_bf16_here, run_main, started


def saliency_maps(classifier, autoencoder, x: torch.Tensor, cfg: dict, method: str = None,
                  **extra) -> torch.Tensor:
    """(B, S, 1, H, W) maps in [0, 1] by `method` (default: saliency.method, with its options)."""
    from ACATCore.saliency import compute_saliency
    scfg = cfg["saliency"]
    method = method or scfg["method"]
    opts = dict(scfg["options"]) if method == scfg["method"] else {}
    opts.update(extra)
    return compute_saliency(method, classifier, x, autoencoder=autoencoder, **opts)


def search_precision(cfg: dict, rt: Runtime) -> dict:
    """{"precision": "bf16"} when saliency.cpu_bf16 takes effect here (runtime.cpu_bf16_here: a CPU with
    native bf16; the maps' search about 1.3x faster, still decoded in float32); {} otherwise."""
    return {"precision": "bf16"} if cpu_bf16_here(cfg["saliency"]["cpu_bf16"], rt, "saliency.cpu_bf16") else {}


def write_parts(clf, ae, ds: DataSet, parts: Path, cfg: dict, rt: Runtime, precision: dict):
    """This rank's maps of `ds` not yet on disk, one parts/<index>.npy each, written atomically;
    precision: search_precision's, recorded by a marker file beside the parts (see maps_precision)."""
    from tqdm import tqdm
    bs = int(cfg["saliency"]["batch_size"])
    mine = [p for p in range(len(ds)) if p % rt.world_size == rt.rank]
    todo = [p for p in mine if not (parts / f"{ds.indices[p]}.npy").exists()]
    rt.log(f"[saliency] {parts.name}: {len(ds)} volumes, {len(mine) - len(todo)} already done "
           f"(rank 0), {rt.world_size} process(es)")
    if todo:
        (parts.parent / f"made_in_{precision.get('precision', 'fp32')}").touch()
    for start in tqdm(range(0, len(todo), bs), desc=f"saliency {parts.name}", leave=False,
                      disable=not rt.progress):
        pos = [p for p in todo[start:start + bs] if not (parts / f"{ds.indices[p]}.npy").exists()]
        if not pos:                                # another process made them meanwhile
            continue
        x = ds.get(pos)["x"].to(rt.device)
        maps = saliency_maps(clf, ae, x, cfg, **precision)   # decoded in float32 whatever the search's
        maps = maps.float().cpu().numpy().astype(np.float16)
        for p, m in zip(pos, maps):
            tmp = parts / f".{ds.indices[p]}.tmp{os.getpid()}.npy"
            np.save(tmp, m)
            os.replace(tmp, parts / f"{ds.indices[p]}.npy")


def maps_precision(folder: Path):
    """The precision the search of the maps in `folder` (a saliency folder) ran in, as the model card
    records it: "fp32", "bf16", "bf16 and fp32" (a run resumed on another CPU), or None where no
    make_saliency recorded it (control maps, maps made before it did)."""
    made = sorted(p.name[len("made_in_"):] for p in (Path(folder) / "parts").glob("made_in_*"))
    return " and ".join(made) or None


def assemble(ds: DataSet, parts: Path, out: Path, name: str):
    """out/<name>.npy (the split's maps in its volume order) and out/<name>_index.npy."""
    first = np.load(parts / f"{ds.indices[0]}.npy")
    arr = np.lib.format.open_memmap(out / f".{name}.tmp.npy", mode="w+", dtype=np.float16,
                                    shape=(len(ds), *first.shape))
    for p, g in enumerate(ds.indices):
        arr[p] = np.load(parts / f"{g}.npy")
    arr.flush()
    del arr
    np.save(out / f"{name}_index.npy", ds.indices)
    os.replace(out / f".{name}.tmp.npy", out / f"{name}.npy")


def make_saliency(cfg: dict, seed: int, rt: Runtime, root=None, classifier_path=None,
                  autoencoder_path=None, splits=None) -> Path:
    """The maps of every split under <root>/saliency (root: the seed's folder); returns that folder.
    The classifier defaults to root's baseline, the autoencoder to the seed's."""
    root = Path(root) if root else run_dir(cfg, seed)
    out = root / "saliency"
    classifier_path = classifier_path or root / "baseline" / "model.safetensors"
    autoencoder_path = autoencoder_path or run_dir(cfg, seed) / "autoencoder" / "model.safetensors"
    clf, _ = load_final(classifier_path, "baseline classifier")
    ae, _ = load_final(autoencoder_path, "autoencoder")
    clf, ae = rt.place(clf).eval(), rt.place(ae).eval()
    splits = splits or load_splits(cfg, rt, seed)
    precision = search_precision(cfg, rt)
    for name, ds in splits.items():
        parts = out / "parts" / name
        parts.mkdir(parents=True, exist_ok=True)
        write_parts(clf, ae, ds, parts, cfg, rt, precision)
        rt.barrier()
        if rt.is_main:
            assemble(ds, parts, out, name)
        rt.barrier()
    rt.log(f"[saliency] wrote {out}")
    return out


def main(argv=None):
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = config_from_args(args)
    with started(cfg) as rt:
        make_saliency(cfg, args.seed, rt)


if __name__ == "__main__":
    run_main(main)
