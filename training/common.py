"""What every training script shares: configuration, distributed set-up, data, the training loop,
checkpoints and logs.

Read it top to bottom once; the scripts (train_baseline.py, train_autoencoder.py, make_saliency.py,
train_acat.py, evaluate.py, run_algorithm1.py) are thin on top of it.

Run layout (one folder per run, ``out_dir`` of the config)::

    out_dir/config.json                       the resolved config
    out_dir/synth/                            ACAT-Synth volumes (data.source == "synth")
    out_dir/cache/<seed>/<split>_*.npy        prepared model inputs (memory-mapped)
    out_dir/seed<seed>/<stage>/               one training stage (baseline, autoencoder, acat, smic, ...)
        checkpoint_last.pt, checkpoint_best.pt    resume state (torch.save, loaded weights_only=True)
        model.safetensors + model.json            the final model for users (best on validation)
        log.csv, tensorboard/                     per-epoch logs
    out_dir/seed<seed>/saliency/<split>.npy   counterfactual saliency maps (make_saliency.py)
    out_dir/tables/                           evaluate.py's Markdown and CSV tables
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:          # scripts run as `python training/x.py` from a checkout
    sys.path.insert(0, str(REPO))

from ACATCore.errors import ACATError, ConfigError, ModelFileError  # noqa: E402

INTENDED_USE = ("Trained on synthetic lesions in real anatomy (ACAT-Synth), for demonstration, "
                "not for clinical use.")

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
# Defaults follow the paper (Appendix C) and the authors' code (shared/ANCHORS.md). A config file
# (JSON, or YAML when PyYAML is installed) overrides any of them; unknown keys are an error.
TASK_DEFAULTS = {
    "brain": {"baseline_model": "brain_mtl", "acat_model": "acat_brain", "backbone": "brain",
              "class_names": ["no lesion", "left", "right", "both"],
              # mirroring a brain left-right swaps the classes "left" and "right"
              "flip_label_map": [0, 2, 1, 3],
              "preprocessing": {"window": [0, 80], "slices": 11, "size": [400, 500],
                                "orientation": "LPS-axial", "midline": "center"}},
    "lung": {"baseline_model": "lung_resnet50", "acat_model": "acat_lung", "backbone": "lung",
             "class_names": ["normal", "findings"],     # like MosMed CT-0 vs CT-2..4
             "flip_label_map": [0, 1],
             "preprocessing": {"window": [-1000, 400], "slices": 11, "size": [128, 128],
                               "orientation": "LPS-axial", "midline": None}},
}

COMPETITORS = ["smic", "salclassnet", "hsm", "spatt", "seatt", "vit"]

DEFAULTS = {
    "name": "acat",
    "task": "lung",                      # "brain" | "lung"
    "out_dir": "runs/acat",
    "seeds": [0, 1, 2],                  # one run per seed: its own data split and initialisation
    "data": {
        "source": "synth",               # "synth" (ACAT-Synth, generated) | "datalist" (your data)
        "datalist": None,                # MONAI-style JSON {"training": [{"image", "label", ...}]}
        "n": 300,                        # synth: number of volumes
        "synth_seed": 0,                 # synth: generator seed (the same volumes for every run seed)
        "synth_options": {},             # synth: generator options (ACATCore.data.synth.DEFAULT_OPTIONS)
        "split": [0.7, 0.15, 0.15],      # train / validation / test, stratified, per run seed
        "preprocessing": None,           # None: the task's default (see TASK_DEFAULTS)
        "max_train": None,               # keep only this many training volumes (Table 4)
    },
    # micro_batches: split each (per-process) batch into this many sequential micro-batches with
    # accumulated gradients (less memory; 1 process x 2 micro-batches == 2 DDP processes)
    "baseline": {"model": None, "model_config": {}, "micro_batches": 1, "epochs": 200,
                 "lr": 1e-4, "weight_decay": 5e-5, "lr_min": 1e-7, "batch_size": 8,
                 "class_weighted": True, "flip": 0.5, "augment": None},
    "autoencoder": {"model": "autoencoder", "model_config": {}, "micro_batches": 1, "epochs": 100,
                    "lr": 1e-4,
                    "weight_decay": 0.0, "lr_min": 1e-7, "batch_size": 32, "flip": 0.5},
    "saliency": {"method": "counterfactual", "batch_size": 1,
                 "options": {"steps": 20, "alpha": 100.0}},
    "acat": {"model": None, "model_config": {}, "micro_batches": 1, "epochs": 100, "lr": 1e-5,
             "weight_decay": 5e-5,
             "lr_min": 1e-7, "batch_size": 8, "class_weighted": True, "flip": 0.5, "augment": None,
             "init_from_baseline": True},
    "competitors": [],                   # any of COMPETITORS, fine-tuned like ACAT (Table 2)
    "competitor_config": {},             # model name -> extra build_model config (e.g. vit sizes)
    "dropout_control": [],               # feature-dropout p values (Sec. 4.7), e.g. [0.2, 0.6]
    "limited_data": [],                  # training-set sizes (Table 4), e.g. [50, 100, 200]
    "evaluate": {"saliency_methods": ["counterfactual", "latent_shift", "gradient", "gradcam"],
                 "saliency_splits": ["test"],   # held-out splits whose positive cases are scored
                 "saliency_with_acat": True, "max_saliency_cases": 60, "noise_std": 1.0,
                 "variance_cases": 16},
    "runtime": {"device": "auto", "bf16": True, "num_workers": 0, "threads": None,
                "deterministic": True, "tensorboard": True, "progress": True},
}


def _merge(base: dict, override: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}'; known keys here: "
                              f"{', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key not in ("model_config", "options", "preprocessing",
                                                        "competitor_config", "synth_options") \
                and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> dict:
    """The defaults, overridden by the file at `path`, then by `key.sub=value` strings."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; pass an existing JSON file "
                              "(see training/configs/)")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                try:
                    import yaml
                except ImportError as e:
                    raise ConfigError(f"{p} is YAML but PyYAML is not installed; "
                                      "use a .json config or pip install pyyaml") from e
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except (json.JSONDecodeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"config file {p} is not valid JSON/YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of settings")
        cfg = _merge(cfg, data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        node = {}
        cur = node
        parts = key.split(".")
        for part in parts[:-1]:
            cur[part] = {}
            cur = cur[part]
        cur[parts[-1]] = _parse_value(value)
        cfg = _merge(cfg, node)
    return validate_config(cfg)


def validate_config(cfg: dict) -> dict:
    """Fill task-dependent defaults and check ranges; raise ConfigError naming the bad value."""
    task = cfg["task"]
    if task not in TASK_DEFAULTS:
        raise ConfigError(f"task must be 'brain' or 'lung', not {task!r}")
    td = TASK_DEFAULTS[task]
    if cfg["baseline"]["model"] is None:
        cfg["baseline"]["model"] = td["baseline_model"]
    if cfg["acat"]["model"] is None:
        cfg["acat"]["model"] = td["acat_model"]
    pre = dict(td["preprocessing"])
    pre.update(cfg["data"]["preprocessing"] or {})
    cfg["data"]["preprocessing"] = pre
    if not (isinstance(cfg["seeds"], list) and cfg["seeds"]
            and all(isinstance(s, int) for s in cfg["seeds"])):
        raise ConfigError(f"seeds must be a non-empty list of integers, not {cfg['seeds']!r}")
    src = cfg["data"]["source"]
    if src not in ("synth", "datalist"):
        raise ConfigError(f"data.source must be 'synth' or 'datalist', not {src!r}")
    if src == "datalist" and not cfg["data"]["datalist"]:
        raise ConfigError("data.source is 'datalist' but data.datalist names no file")
    if src == "synth":
        from ACATCore.data import synth
        synth.check_options(task, cfg["data"]["synth_options"])     # ConfigError names the bad option
    split = cfg["data"]["split"]
    if (not isinstance(split, list) or len(split) != 3 or any(not isinstance(v, (int, float))
                                                               or v <= 0 for v in split)
            or abs(sum(split) - 1) > 1e-6):
        raise ConfigError(f"data.split must be three positive fractions summing to 1, not {split!r}")
    for stage in ("baseline", "autoencoder", "acat"):
        s = cfg[stage]
        for key in ("epochs", "batch_size"):
            if not isinstance(s[key], int) or s[key] < 1:
                raise ConfigError(f"{stage}.{key} must be a positive integer, not {s[key]!r}")
        for key in ("lr", "lr_min", "weight_decay"):
            if not isinstance(s[key], (int, float)) or s[key] < 0:
                raise ConfigError(f"{stage}.{key} must be a non-negative number, not {s[key]!r}")
        if s["lr"] <= 0:
            raise ConfigError(f"{stage}.lr must be positive, not {s['lr']!r}")
        if not 0 <= s.get("flip", 0) <= 1:
            raise ConfigError(f"{stage}.flip is a probability in [0, 1], not {s['flip']!r}")
    for c in cfg["competitors"]:
        if c not in COMPETITORS:
            raise ConfigError(f"unknown competitor {c!r}; choose from {', '.join(COMPETITORS)}")
    for p in cfg["dropout_control"]:
        if not isinstance(p, (int, float)) or not 0 < p < 1:
            raise ConfigError(f"dropout_control values are probabilities in (0, 1), not {p!r}")
    for n in cfg["limited_data"]:
        if not isinstance(n, int) or n < 2:
            raise ConfigError(f"limited_data values are training-set sizes >= 2, not {n!r}")
    for name in cfg["evaluate"]["saliency_splits"]:
        if name not in ("val", "test"):
            raise ConfigError(f"evaluate.saliency_splits takes 'val' and/or 'test' (held-out "
                              f"data), not {name!r}")
    size = pre["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v % 4 == 0
                                                              and v > 0 for v in size)):
        raise ConfigError(f"data.preprocessing.size must be [H, W], both multiples of 4 "
                          f"(the autoencoder halves twice), not {size!r}")
    return cfg


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", help="JSON (or YAML) config file; see training/configs/")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set baseline.epochs=5 (repeatable)")
    ap.add_argument("--seed", type=int, default=None,
                    help="the run seed (default: the first of the config's seeds)")
    ap.add_argument("--out", help="override out_dir")
    return ap


def config_from_args(args) -> dict:
    overrides = list(args.set)
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    cfg = load_config(args.config, overrides)
    if args.seed is None:
        args.seed = cfg["seeds"][0]
    return cfg


# --------------------------------------------------------------------------------------------
# Runtime: devices, distributed, seeds
# --------------------------------------------------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    bf16: bool = False
    progress: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def log(self, *msg):
        if self.is_main:
            print(*msg, flush=True)


def setup_runtime(cfg: dict) -> Runtime:
    """Device, threads, determinism and (under torchrun) the process group.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then join a process group with NCCL on GPUs
    and gloo on CPUs. Without torchrun this is a single process.
    """
    rt_cfg = cfg["runtime"]
    if rt_cfg["threads"]:
        torch.set_num_threads(int(rt_cfg["threads"]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = rt_cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device asks for CUDA but no GPU is visible; "
                              "use runtime.device=cpu or auto")
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rt_cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return Runtime(device=device, rank=rank, world_size=world, local_rank=local,
                   bf16=bool(rt_cfg["bf16"]) and device.type == "cuda",
                   progress=bool(rt_cfg["progress"]) and rank == 0 and sys.stderr.isatty())


def shutdown(rt: Runtime):
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (run seed, epoch, rank, ...): stable across runs and platforms."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, as plain tensors/lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Data: from ACAT-Synth or a datalist to memory-mapped, prepared model inputs
# --------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


def synth_dir(cfg: dict) -> Path:
    return Path(cfg["out_dir"]) / "synth"


def datalist_path(cfg: dict) -> Path:
    """The datalist of the run's data; generates ACAT-Synth first when data.source == 'synth'."""
    data = cfg["data"]
    if data["source"] == "datalist":
        p = Path(data["datalist"])
        if not p.is_file():
            raise ACATError(f"datalist {p} not found; set data.datalist to your MONAI-style "
                            "JSON file, or use data.source=synth")
        return p
    path = synth_dir(cfg) / "datalist.json"        # written last by the generator
    from ACATCore.data import synth
    options = {k: v for k, v in synth.check_options(cfg["task"], data["synth_options"]).items()
               if v is not None}
    want = (cfg["task"], int(data["n"]), int(data["synth_seed"]), options, synth.GENERATOR_VERSION)
    if path.exists():
        have = json.loads(path.read_text())
        if (have.get("task"), have.get("n"), have.get("seed"), have.get("options", {}),
                have.get("version")) == want:
            return path
    synth.generate(*want[:3], out_dir=synth_dir(cfg), options=options)
    return path


def read_datalist(path: Path) -> list:
    """All entries of a MONAI-style datalist (every section), paths resolved against its folder."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ACATError(f"datalist {path} is not valid JSON: {e}") from e
    if isinstance(data, list):
        entries = data
    else:
        entries = []
        for key, value in data.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                entries.extend(value)
    if not entries:
        raise ACATError(f"datalist {path} lists no volumes")
    base = Path(path).parent
    out = []
    for e in entries:
        e = dict(e)
        if "image" not in e or "label" not in e:
            raise ACATError(f"datalist {path}: every entry needs 'image' and 'label'; got {sorted(e)}")
        for key in ("image", "mask", "regions", "region", "territories"):
            if isinstance(e.get(key), str) and not Path(e[key]).is_absolute():
                e[key] = str(base / e[key])
        if not Path(e["image"]).exists():
            raise ACATError(f"image {e['image']} listed in {path} does not exist")
        out.append(e)
    return out


def split_indices(labels: np.ndarray, fractions, seed: int) -> dict:
    """Stratified train/val/test volume indices for one run seed (ACATCore.data.splits)."""
    from ACATCore.data.splits import stratified_split
    items = [{"label": int(v), "index": i} for i, v in enumerate(labels)]
    parts = stratified_split(items, fractions, seed=seed)
    return {s: np.array(sorted(it["index"] for it in parts[name]), dtype=np.int64)
            for s, name in zip(SPLITS, ("training", "validation", "test"))}


def _region_key(entry: dict):
    for key in ("regions", "region", "territories"):
        if key in entry and isinstance(entry[key], str):
            return key
    return None


def _size_group(entry: dict) -> int:
    """Lesion-size group k of 'IS-k' (brain) or 'LS-k' (lung); the largest for several lesions
    ('IS-2+IS-3' -> 3); 0 for none or unknown."""
    for key in ("size_group", "infarct_size", "size"):
        v = entry.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v:
            groups = [int(t.split("-")[-1]) for t in v.split("+") if t.split("-")[-1].isdigit()]
            if groups:
                return max(groups)
    return 0


def prepare_dataset(cfg: dict, rt: Runtime) -> Path:
    """Prepare every volume of the data once into memory-mapped arrays; returns the cache folder.

    Arrays: x.npy (N, S, 1, H, W) float16 in [0, 1]; y.npy (N,); size.npy (N,) infarct-size group
    (0 when unknown or no lesion); mask.npy / regions.npy (N, S, H, W) uint8 when the data has them;
    meta.json (ids, spec). Rank 0 writes, the others wait.
    """
    pre = cfg["data"]["preprocessing"]
    cache = Path(cfg["out_dir"]) / "cache"
    meta_path = cache / "meta.json"
    from ACATCore.data.synth import GENERATOR_VERSION
    key = hashlib.sha256(json.dumps([pre, cfg["data"]["source"], cfg["data"]["datalist"],
                                     cfg["data"]["n"], cfg["data"]["synth_seed"],
                                     cfg["data"]["synth_options"] or {}, GENERATOR_VERSION],
                                    sort_keys=True).encode()).hexdigest()[:16]
    if rt.is_main:
        ok = meta_path.exists() and json.loads(meta_path.read_text()).get("key") == key
        if not ok:
            _write_cache(cfg, cache, key)
    rt.barrier()
    return cache


def _write_cache(cfg: dict, cache: Path, key: str):
    from ACATCore.io import read_volume
    from ACATCore.preprocessing import prepare
    from tqdm import tqdm

    pre = cfg["data"]["preprocessing"]
    entries = read_datalist(datalist_path(cfg))
    cache.mkdir(parents=True, exist_ok=True)
    n, s = len(entries), int(pre["slices"])
    h, w = pre["size"]
    x = np.lib.format.open_memmap(cache / "x.npy.tmp", mode="w+", dtype=np.float16,
                                  shape=(n, s, 1, h, w))
    has_mask = all(isinstance(e.get("mask"), str) for e in entries)
    has_regions = all(_region_key(e) for e in entries)
    mask = np.zeros((n, s, h, w), np.uint8) if has_mask else None
    regions = np.zeros((n, s, h, w), np.uint8) if has_regions else None
    y = np.array([int(e["label"]) for e in entries], dtype=np.int64)
    size = np.array([_size_group(e) if e["label"] else 0 for e in entries], dtype=np.int64)
    for i, e in enumerate(tqdm(entries, desc="prepare", disable=not sys.stderr.isatty())):
        vol = read_volume(e["image"])
        prep = prepare(vol, pre)
        x[i] = prep.tensor.numpy().astype(np.float16)
        if has_mask:
            mask[i] = prep.to_model_grid(read_volume(e["mask"]), mode="nearest")
        if has_regions:
            regions[i] = prep.to_model_grid(read_volume(e[_region_key(e)]), mode="nearest")
    x.flush()
    del x
    os.replace(cache / "x.npy.tmp", cache / "x.npy")
    np.save(cache / "y.npy", y)
    np.save(cache / "size.npy", size)
    if has_mask:
        np.save(cache / "mask.npy", mask)
    if has_regions:
        np.save(cache / "regions.npy", regions)
    meta = {"key": key, "preprocessing": pre, "n": n,
            "ids": [str(e.get("id", Path(e["image"]).name)) for e in entries],
            "has_mask": has_mask,
            "has_regions": has_regions}
    (cache / "meta.json").write_text(json.dumps(meta, indent=1))


@dataclass
class DataSet:
    """A split of the prepared data: memory-mapped arrays and the volume indices of this split."""
    cache: Path
    indices: np.ndarray
    saliency: Optional[np.ndarray] = None          # (len(indices), S, 1, H, W), split order
    _arrays: dict = field(default_factory=dict)

    def array(self, name: str) -> Optional[np.ndarray]:
        if name not in self._arrays:
            p = self.cache / f"{name}.npy"
            self._arrays[name] = np.load(p, mmap_mode="r") if p.exists() else None
        return self._arrays[name]

    def __len__(self):
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.array("y")[self.indices]

    def get(self, positions, with_saliency=False) -> dict:
        """The batch at split positions `positions` (not global indices): tensors."""
        positions = np.asarray(positions)
        g = self.indices[positions]
        order = np.argsort(g)                 # memmap fancy indexing wants sorted indices
        inv = np.argsort(order)
        out = {"x": torch.from_numpy(self.array("x")[g[order]][inv].astype(np.float32)),
               "y": torch.from_numpy(self.array("y")[g]), "index": torch.from_numpy(g)}
        if with_saliency:
            if self.saliency is None:
                raise ACATError("this model needs saliency maps; run make_saliency.py first")
            out["saliency"] = torch.from_numpy(np.asarray(self.saliency[positions], np.float32))
        return out


def load_splits(cfg: dict, rt: Runtime, seed: int) -> dict:
    """The run seed's train/val/test DataSets (training set cut to data.max_train if set)."""
    cache = prepare_dataset(cfg, rt)
    y = np.load(cache / "y.npy")
    parts = split_indices(y, cfg["data"]["split"], seed)
    m = cfg["data"]["max_train"]
    if m:
        if m > len(parts["train"]):
            raise ConfigError(f"data.max_train={m} exceeds the {len(parts['train'])} training "
                              "volumes available")
        rng = np.random.default_rng(derive_seed("limited", seed, m))
        keep = _stratified_subset(y[parts["train"]], m, rng)
        parts["train"] = parts["train"][keep]
    return {s: DataSet(cache, parts[s]) for s in SPLITS}


def _stratified_subset(labels, m, rng) -> np.ndarray:
    n = len(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(m * len(idx) / n)))
        chosen += rng.permutation(idx)[:k].tolist()
    chosen = rng.permutation(np.array(chosen))[:m]
    return np.sort(chosen)


def attach_saliency(cfg: dict, seed: int, splits: dict, root=None):
    """Memory-map make_saliency.py's maps onto the splits (a clear error when missing)."""
    sdir = Path(root or run_dir(cfg, seed)) / "saliency"
    for name, ds in splits.items():
        p = sdir / f"{name}.npy"
        if not p.exists():
            raise ACATError(f"saliency maps {p} not found; run training/make_saliency.py with the "
                            "same config and seed first")
        sal = np.load(p, mmap_mode="r")
        idx = np.load(sdir / f"{name}_index.npy")
        if len(idx) != len(ds) or set(idx.tolist()) != set(ds.indices.tolist()):
            raise ACATError(f"saliency maps {p} were made for another split; rerun make_saliency.py")
        pos = {int(g): i for i, g in enumerate(idx)}
        ds.saliency = _Reindexed(sal, np.array([pos[int(g)] for g in ds.indices]))


class _Reindexed:
    """Index an array through a permutation without copying it (for memmaps)."""

    def __init__(self, arr, order):
        self.arr, self.order = arr, order

    def __getitem__(self, positions):
        rows = self.order[np.asarray(positions)]
        srt = np.argsort(rows)
        return np.asarray(self.arr[rows[srt]])[np.argsort(srt)]

    def __len__(self):
        return len(self.order)


def run_dir(cfg: dict, seed: int) -> Path:
    return Path(cfg["out_dir"]) / f"seed{seed}"


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to mean 1 over the training samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = w / (w[labels].mean() if len(labels) else 1.0)
    return torch.tensor(w, dtype=torch.float32)


def flip_batch(batch: dict, flips: torch.Tensor, label_map: Optional[list], keys=("x", "saliency")):
    """Mirror the volumes where `flips` is True, left-right (last axis); swap labels by label_map."""
    if not bool(flips.any()):
        return batch
    for key in keys:
        if key in batch:
            t = batch[key].clone()
            t[flips] = t[flips].flip(-1)
            batch[key] = t
    if label_map is not None and "y" in batch:
        lm = torch.tensor(label_map)
        y = batch["y"].clone()
        y[flips] = lm[y[flips]]
        batch["y"] = y
    return batch


def augment_batch(batch: dict, aug: Optional[dict], positions, seed: int, epoch: int,
                  keys=("x", "saliency")) -> dict:
    """Random in-plane affine (rotation, scale, shift: the same for every slice of a volume and for its
    saliency map) and, inside the image (x > 0: outside the brain stays the fixed 0), an intensity gain
    and offset and Gaussian noise. ``aug``: {"prob", "rotate_deg", "scale", "translate", "gain",
    "offset", "noise"} (None: nothing). Seeded by (seed, epoch, the batch's samples), so resumable.

    One batched ``grid_sample`` rather than MONAI's RandAffined, which costs ~0.2 s a volume here."""
    if not aug:
        return batch
    n = batch["x"].shape[0]
    g = torch.Generator().manual_seed(derive_seed("augment", seed, epoch, *map(int, positions)))
    u = lambda *shape: 2 * torch.rand(*shape, generator=g) - 1                        # noqa: E731
    on = (torch.rand(n, generator=g) < float(aug.get("prob", 0.8))).float()
    angle = u(n) * np.deg2rad(float(aug.get("rotate_deg", 0.0))) * on
    zoom = 1 + u(n) * float(aug.get("scale", 0.0)) * on
    shift = u(n, 2) * 2 * float(aug.get("translate", 0.0)) * on[:, None]             # in [-1, 1] units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
    for key in [k for k in keys if k in batch]:
        t = batch[key]                                                                 # (B, S, 1, H, W)
        grid = F.affine_grid(theta, (n, t.shape[1], *t.shape[-2:]), align_corners=False)
        moved = F.grid_sample(t[:, :, 0], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)[:, :, None]
        batch[key] = torch.where(on.reshape(-1, 1, 1, 1, 1) > 0, moved, t)      # untouched: bit-exact
    x = batch["x"]
    gain = 1 + u(n, 1, 1, 1, 1) * float(aug.get("gain", 0.0))
    offset = u(n, 1, 1, 1, 1) * float(aug.get("offset", 0.0))
    noise = torch.randn(x.shape, generator=g) * float(aug.get("noise", 0.0))
    batch["x"] = torch.where(x > 0, (x * gain + offset + noise).clamp(0, 1), x)
    return batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rt: Runtime,
                  micro_batches: int = 1, shuffle: bool = True) -> list:
    """This rank's share of every optimiser step of an epoch: a list (one per step) of
    `micro_batches` lists of split positions.

    The global batch order depends only on (seed, epoch). Each global batch of `batch_size` is cut
    into world_size * micro_batches interleaved shares (padded by wrapping around when it does not
    divide); rank r takes shares r, r + world_size, ... So 2 processes x 1 micro-batch and
    1 process x 2 micro-batches see exactly the same groups of samples (and BatchNorm statistics).
    """
    parts = rt.world_size * micro_batches
    if batch_size % parts:
        raise ConfigError(f"batch_size {batch_size} must be a multiple of processes x micro_batches "
                          f"({rt.world_size} x {micro_batches})")
    if shuffle:
        g = torch.Generator().manual_seed(derive_seed("order", seed, epoch))
        order = torch.randperm(n, generator=g).numpy()
    else:
        order = np.arange(n)
    steps = []
    for start in range(0, n, batch_size):
        b = order[start:start + batch_size]
        if len(b) % parts:
            b = np.concatenate([b, np.resize(order, parts - len(b) % parts)])
        steps.append([b[rt.rank + rt.world_size * m::parts] for m in range(micro_batches)])
    return steps


def flip_decisions(positions, p: float, seed: int, epoch: int) -> torch.Tensor:
    """Whether each sample is mirrored this epoch: a function of (seed, epoch, sample) only, so
    the same on any number of ranks and after a resume."""
    if p <= 0:
        return torch.zeros(len(positions), dtype=torch.bool)
    g = torch.Generator().manual_seed(derive_seed("flip", seed, epoch))
    # one draw per position of the whole split, indexed by the sample's position
    n = int(max(positions)) + 1 if len(positions) else 0
    draws = torch.rand(n, generator=g)
    return draws[torch.as_tensor(np.asarray(positions))] < p


# --------------------------------------------------------------------------------------------
# Models and model files
# --------------------------------------------------------------------------------------------
def build(name: str, model_config: dict, cfg: dict):
    from ACATCore.models import build_model, MODEL_NAMES
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; ACATCore.models.MODEL_NAMES has "
                          f"{', '.join(MODEL_NAMES)}")
    kwargs = dict(model_config)
    if name in COMPETITORS:
        kwargs.setdefault("backbone", TASK_DEFAULTS[cfg["task"]]["backbone"])
    try:
        return build_model(name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not accept config {kwargs}: {e}") from e


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_card(cfg: dict, stage: str, seed: int, splits: dict, metrics: dict, extra=None) -> dict:
    task = cfg["task"]
    data = cfg["data"]
    if data["source"] == "synth":
        options = {k: v for k, v in (data.get("synth_options") or {}).items() if v is not None}
        description = (f"ACAT-Synth {task}: {data['n']} synthetic-lesion volumes in real anatomy "
                       f"(generator seed {data['synth_seed']}"
                       + (f", options {json.dumps(options)}" if options else "") + "), "
                       + ("hypodense ischaemic infarcts of 4 sizes in 6 vascular territories "
                          "inserted into deformed copies of a CT brain atlas" if task == "brain" else
                          "ground-glass / consolidation patches inserted into the lungs of a real "
                          "chest CT"))
    else:
        description = f"datalist {data['datalist']}"
    training = {"stage": stage, "seed": seed, "hyperparameters": cfg.get(stage_key(stage), {}),
                "config_name": cfg["name"], "torch": torch.__version__, **(extra or {})}
    return {
        "task": task,
        "class_names": TASK_DEFAULTS[task]["class_names"] if stage != "autoencoder" else [],
        "preprocessing": data["preprocessing"],
        "data": {"description": description, "source": data["source"],
                 "split_seed": seed, "split_fractions": data["split"],
                 "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                 "n_test": len(splits["test"]), "training": training},
        "metrics": metrics,
        "intended_use": INTENDED_USE,
    }


def stage_key(stage: str) -> str:
    if stage.startswith("baseline") or stage.startswith("dropout"):
        return "baseline"
    if stage == "autoencoder":
        return "autoencoder"
    return "acat"


def save_final(model, path: Path, card: dict):
    from ACATCore.checkpoint import save_model
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(path), card)


def load_final(path: Path, what: str):
    from ACATCore.checkpoint import load_model
    if not Path(path).exists():
        raise ModelFileError(f"{what} model {path} not found; train it first (see docs/TRAINING.md)")
    return load_model(str(path))


# --------------------------------------------------------------------------------------------
# Checkpoints (resume state) and logs
# --------------------------------------------------------------------------------------------
def atomic_save(obj, path: Path):
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ModelFileError(f"resume checkpoint {path} cannot be read ({e}); delete it to start "
                             "over") from e


class Logger:
    """CSV log (always) and TensorBoard (when installed and enabled), rank 0 only."""

    def __init__(self, folder: Path, enabled: bool, tensorboard: bool, start_epoch: int):
        self.enabled = enabled
        self.path = folder / "log.csv"
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():          # keep the rows of epochs the checkpoint covers
            rows = list(csv.DictReader(self.path.open()))
            rows = [r for r in rows if int(r["epoch"]) < start_epoch]
            self._rewrite(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start_epoch)
            except ImportError:
                self.writer = None

    def _rewrite(self, rows):
        if not rows:
            self.path.unlink()
            return
        with self.path.open("w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)

    def log(self, epoch: int, values: dict):
        if not self.enabled:
            return
        row = {"epoch": epoch, **{k: (f"{v:.6g}" if isinstance(v, float) else v)
                                  for k, v in values.items()}}
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(row))
            if new:
                wr.writeheader()
            wr.writerow(row)
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, epoch)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """What differs between training stages: how a batch becomes a loss and how to validate."""
    name: str
    loss: Callable            # (model, batch, runtime) -> scalar loss (mean over the rank's batch)
    validate: Callable        # (model, DataSet, runtime) -> metrics dict with "score" (higher better)
    get_batch: Callable       # (DataSet, positions, epoch) -> batch dict on CPU


def autocast(rt: Runtime):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.bf16) if rt.device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)


def fit(model, stage: Stage, splits: dict, hp: dict, cfg: dict, rt: Runtime, folder: Path,
        seed: int, resume: bool = False):
    """Train `model` for hp['epochs'] epochs; checkpoint every epoch; keep best and last.

    Adam (lr, weight_decay), cosine annealing per epoch down to lr_min. With resume=True the state
    of checkpoint_last.pt (model, optimiser, scheduler, epoch, best score, RNG states) is restored
    and training continues with the next epoch, reproducing an uninterrupted run exactly: every
    random choice (batch order, flips, dropout) is seeded from (seed, epoch, rank).
    Returns the best model (loaded from checkpoint_best.pt) and its validation metrics.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    folder.mkdir(parents=True, exist_ok=True)
    model = model.to(rt.device)
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["epochs"], eta_min=hp["lr_min"])
    last, best_path = folder / "checkpoint_last.pt", folder / "checkpoint_best.pt"
    start, best_score, best_epoch = 0, -math.inf, -1
    if resume and last.exists():
        ck = load_checkpoint(last)
        if ck.get("stage") != stage.name or ck.get("seed") != seed:
            raise ConfigError(f"{last} belongs to stage {ck.get('stage')} seed {ck.get('seed')}, "
                              f"not {stage.name} seed {seed}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, best_score, best_epoch = ck["epoch"] + 1, ck["best_score"], ck["best_epoch"]
        set_rng_state(ck["rng"])
        rt.log(f"[{stage.name}] resumed from {last} at epoch {start}")
    elif resume:
        rt.log(f"[{stage.name}] --resume given but {last} does not exist: starting from epoch 0")
    ddp = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
              find_unused_parameters=False) if rt.distributed else model
    logger = Logger(folder, rt.is_main, cfg["runtime"]["tensorboard"], start)
    from tqdm import tqdm
    train = splits["train"]
    for epoch in range(start, hp["epochs"]):
        t0 = time.time()
        seed_everything(derive_seed("epoch", seed, epoch, rt.rank))
        ddp.train()
        batches = epoch_batches(len(train), hp["batch_size"], seed, epoch, rt,
                                micro_batches=int(hp.get("micro_batches", 1)))
        total, count = torch.zeros((), dtype=torch.float64), 0
        for chunks in tqdm(batches, desc=f"{stage.name} {epoch + 1}/{hp['epochs']}", leave=False,
                           disable=not rt.progress):
            opt.zero_grad(set_to_none=True)
            for m, pos in enumerate(chunks):
                batch = stage.get_batch(train, pos, epoch)
                batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
                # gradients are averaged over ranks by DDP (synchronised on the last micro-batch)
                sync = not rt.distributed or m == len(chunks) - 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()):
                    with autocast(rt):
                        loss = stage.loss(ddp, batch, rt)
                    (loss / len(chunks)).backward()
                total += loss.detach().double().cpu() * len(pos)
                count += len(pos)
            opt.step()
        if rt.distributed:
            t = torch.tensor([float(total), float(count)], dtype=torch.float64,
                             device=rt.device)
            dist.all_reduce(t)
            total, count = t[0].cpu(), int(t[1])
        lr = opt.param_groups[0]["lr"]
        sched.step()
        metrics = stage.validate(ddp, splits["val"], rt)
        metrics = {k: float(v) for k, v in metrics.items()}
        improved = metrics["score"] > best_score
        if improved:
            best_score, best_epoch = metrics["score"], epoch
        if rt.is_main:
            state = {"stage": stage.name, "seed": seed, "epoch": epoch,
                     "model": unwrap(ddp).state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "best_score": best_score,
                     "best_epoch": best_epoch, "rng": rng_state(), "metrics": metrics}
            # the log row and the best model first, checkpoint_last last: it is the commit point
            # (a run killed in between redoes this epoch, identically, and rewrites the row)
            logger.log(epoch, {"train_loss": float(total) / max(count, 1), "lr": lr,
                               **{f"val_{k}": v for k, v in metrics.items()},
                               "seconds": time.time() - t0})
            if improved:
                atomic_save({"stage": stage.name, "seed": seed, "epoch": epoch,
                             "model": state["model"], "metrics": metrics}, best_path)
            atomic_save(state, last)
            print(f"[{stage.name}] epoch {epoch + 1}/{hp['epochs']} loss "
                  f"{float(total) / max(count, 1):.4f} " +
                  " ".join(f"val_{k} {v:.4f}" for k, v in metrics.items()) +
                  (" *" if improved else ""), flush=True)
        rt.barrier()
    logger.close()
    rt.barrier()
    model = unwrap(ddp)
    best = load_checkpoint(best_path) if best_path.exists() else None
    if best is not None:
        model.load_state_dict(best["model"])
    return model, (best or {}).get("metrics", {}), (best or {}).get("epoch", -1)


# --------------------------------------------------------------------------------------------
# Classification stages
# --------------------------------------------------------------------------------------------
def classifier_stage(name: str, cfg: dict, hp: dict, splits: dict, seed: int, num_classes: int,
                     needs_saliency: bool, rt: Runtime) -> Stage:
    """Class-weighted cross-entropy (normalised by the number of samples, so that averaging
    over DDP ranks equals the global mean) with random left-right flips."""
    weights = class_weights(splits["train"].labels, num_classes) if hp.get("class_weighted") \
        else torch.ones(num_classes)
    weights = weights.to(rt.device)
    label_map = TASK_DEFAULTS[cfg["task"]]["flip_label_map"]

    def get_batch(ds, pos, epoch):
        b = ds.get(pos, with_saliency=needs_saliency)
        b = flip_batch(b, flip_decisions(pos, hp.get("flip", 0.0), seed, epoch), label_map)
        b = augment_batch(b, hp.get("augment"), pos, seed, epoch)
        b.pop("index")
        return b

    def loss(model, batch, rt):
        logits = forward(model, batch, needs_saliency)
        per = F.cross_entropy(logits.float(), batch["y"], reduction="none")
        return (per * weights[batch["y"]]).mean()

    def validate(model, ds, rt):
        probs, y = predict(model, ds, rt, needs_saliency)
        acc = float((probs.argmax(1) == y).float().mean()) if len(y) else 0.0
        nll = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y)) if len(y) else 0.0
        return {"score": acc, "accuracy": acc, "loss": nll}

    return Stage(name, loss, validate, get_batch)


def forward(model, batch, needs_saliency):
    """Logits; the brain MTL model's are 4-class log-probabilities, so cross-entropy on them is
    the negative log-likelihood and softmax gives back the probabilities."""
    if needs_saliency:
        return model(batch["x"], batch["saliency"])
    return model(batch["x"])


def probabilities(logits: torch.Tensor, model) -> torch.Tensor:
    m = unwrap(model)
    if hasattr(m, "softmax"):
        return m.softmax(logits)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict(model, ds: DataSet, rt: Runtime, needs_saliency: bool, batch_size: int = 8):
    """Class probabilities of every volume of `ds` (sharded across ranks, gathered on all)."""
    m = unwrap(model)
    was_training = m.training
    m.eval()
    n = len(ds)
    mine = np.arange(rt.rank, n, rt.world_size)
    out = torch.zeros(n, getattr(m, "num_classes", 2))
    got = torch.zeros(n)
    for start in range(0, len(mine), batch_size):
        pos = mine[start:start + batch_size]
        b = ds.get(pos, with_saliency=needs_saliency)
        b = {k: v.to(rt.device) for k, v in b.items()}
        with autocast(rt):
            logits = forward(m, b, needs_saliency)
        p = probabilities(logits.float(), m).float().cpu()
        if p.shape[1] != out.shape[1]:
            out = torch.zeros(n, p.shape[1])
        out[torch.as_tensor(pos)] = p
        got[torch.as_tensor(pos)] = 1
    if rt.distributed:
        out, got = out.to(rt.device), got.to(rt.device)
        dist.all_reduce(out)
        dist.all_reduce(got)
        out, got = out.cpu(), got.cpu()
    m.train(was_training)
    return out, torch.from_numpy(np.asarray(ds.labels))


def run_main(main):
    """Run a script's main(): user-fixable errors print one line and exit with code 2."""
    try:
        main()
    except ACATError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
