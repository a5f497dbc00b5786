"""The run's configuration: defaults, a config file over them, `--set` overrides, validation.

Defaults follow the paper (Appendix C) and the authors' public code. A config file (JSON, or YAML
when PyYAML is installed) overrides any of them; an unknown key is an error, so a typo never falls
back to a default silently.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ACATCore.errors import ConfigError

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
    # accumulated gradients (less memory; 1 process x 2 micro-batches == 2 DDP processes).
    # Every stage: cpu_bf16 (its training steps under bf16 autocast on the CPU too; runtime.bf16 is the
    # GPU's), patience (stop after this many epochs without a new best on validation; null: all epochs)
    "baseline": {"model": None, "model_config": {}, "micro_batches": 1, "epochs": 200,
                 "lr": 1e-4, "weight_decay": 5e-5, "lr_min": 1e-7, "batch_size": 8,
                 "class_weighted": True, "flip": 0.5, "augment": None,
                 # lesion_loss: weight of the lesion-cell loss (training/lesion_loss.py; 0 = the paper's loss);
                 # lesion_layer: the conv layer (1-7) whose cells it supervises, null = the last
                 "lesion_loss": 0.0, "lesion_layer": None, "cpu_bf16": False, "patience": None,
                 # insert_lesions: small faint lesions drawn into the training batches (training/lesion_insertion.py)
                 "insert_lesions": None},
    "autoencoder": {"model": "autoencoder", "model_config": {}, "micro_batches": 1, "epochs": 100,
                    "lr": 1e-4,
                    "weight_decay": 0.0, "lr_min": 1e-7, "batch_size": 32, "flip": 0.5,
                    "cpu_bf16": False, "patience": None},
    # cpu_bf16: make_saliency's search under bf16 autocast on a CPU with native bf16 (fp32 on one without)
    "saliency": {"method": "counterfactual", "batch_size": 1, "cpu_bf16": False,
                 "options": {"steps": 20, "alpha": 100.0}},
    "acat": {"model": None, "model_config": {}, "micro_batches": 1, "epochs": 100, "lr": 1e-5,
             "weight_decay": 5e-5,
             "lr_min": 1e-7, "batch_size": 8, "class_weighted": True, "flip": 0.5, "augment": None,
             "init_from_baseline": True, "new_lr": None,   # new_lr: lr of the tensors not from the baseline
             # validate_start: the start (identity-start ACAT = its baseline) is kept if no epoch beats it
             "validate_start": False, "start_margin": 0.0, "cpu_bf16": False, "patience": None},
    "competitors": [],                   # any of COMPETITORS, fine-tuned like ACAT (Table 2)
    "competitor_config": {},             # model name -> extra build_model config (e.g. vit sizes)
    "dropout_control": [],               # feature-dropout p values (Sec. 4.7), e.g. [0.2, 0.6]
    "limited_data": [],                  # training-set sizes (Table 4), e.g. [50, 100, 200]
    "evaluate": {"saliency_methods": ["counterfactual", "latent_shift", "gradient", "gradcam"],
                 "saliency_splits": ["test"],   # held-out splits whose positive cases are scored
                 "saliency_with_acat": True, "max_saliency_cases": 60, "noise_std": 1.0,
                 "variance_cases": 16,
                 # smooth_sigma: every method's map smoothed in-plane (model-grid pixels) before it is
                 # scored, as analyze smooths the map it shows (not its organ bound and lung edge band:
                 # bench/bench_lung_shown_maps.py); 0 = the paper's maps as they are
                 "smooth_sigma": 0.0},
    "runtime": {"device": "auto", "bf16": True, "channels_last": True, "num_workers": 0, "threads": None,
                "deterministic": True, "tensorboard": True, "progress": True},
}

# values that are replaced whole by an override, never merged key by key
OPAQUE_KEYS = ("model_config", "options", "preprocessing", "competitor_config", "synth_options")
TRAINED_STAGES = ("baseline", "autoencoder", "acat")


@dataclass(frozen=True)
class HyperParams:
    """One training stage's optimisation settings (a `baseline` / `autoencoder` / `acat` section)."""
    epochs: int
    lr: float
    weight_decay: float
    lr_min: float
    batch_size: int                      # volumes (slices for the autoencoder), over all processes
    micro_batches: int = 1
    flip: float = 0.0                    # probability of a left-right mirror per sample and epoch
    class_weighted: bool = False
    augment: Optional[dict] = None       # see training.augment.augment_batch
    new_lr: Optional[float] = None       # lr of the tensors a fine-tuned model did not take from the baseline
    validate_start: bool = False         # the weights before training compete for the best on validation
    start_margin: float = 0.0            # ... and an epoch replaces them only if it scores more than this higher
    lesion_loss: float = 0.0             # weight of the lesion-cell loss (training.lesion_loss); 0: off
    lesion_layer: Optional[int] = None   # the conv layer whose cells it supervises (None: the last)
    cpu_bf16: bool = False               # training steps under bf16 autocast on the CPU too (GPUs: runtime.bf16)
    patience: Optional[int] = None       # stop after this many epochs without a new best on validation
    insert_lesions: Optional[dict] = None  # see training.lesion_insertion.insert_lesions (brain only)

    @classmethod
    def from_config(cls, section: dict) -> "HyperParams":
        """The fields of a config section (its other keys, e.g. `model`, are not hyper-parameters)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


def merge(base: dict, override: dict, where: str = "") -> dict:
    """`base` with `override`'s values; nested sections merge key by key; unknown keys raise."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}'; known keys here: "
                              f"{', '.join(sorted(base))}")
        if isinstance(base[key], dict) and key not in OPAQUE_KEYS and isinstance(value, dict):
            out[key] = merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Optional[str] = None, overrides: Optional[list] = None) -> dict:
    """The defaults, overridden by the file at `path`, then by `key.sub=value` strings."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        cfg = merge(cfg, read_config_file(Path(path)))
    for item in overrides or []:
        cfg = merge(cfg, override_tree(item, cfg))
    return validate_config(cfg)


def read_config_file(p: Path) -> dict:
    """The mapping in a JSON or YAML file (ConfigError when missing, unreadable or not a mapping)."""
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
    return data


def override_tree(item: str, cfg: dict) -> dict:
    """'a.b=1' -> {"a": {"b": 1}}; the value is JSON when it parses, else the plain string.

    A key inside a section that is replaced whole (OPAQUE_KEYS), e.g. 'saliency.options.steps=7', sets
    that one entry of `cfg`'s section and keeps its others ('saliency.options={...}' replaces it)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, text = item.split("=", 1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    parts = key.split(".")
    inside = next((i + 1 for i, part in enumerate(parts[:-1]) if part in OPAQUE_KEYS), None)
    if inside is not None:
        section = opaque_section(cfg, parts[:inside])
        leaf = section
        for part in parts[inside:-1]:
            leaf = leaf.setdefault(part, {})
            if not isinstance(leaf, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
        leaf[parts[-1]] = value
        parts, value = parts[:inside], section
    for part in reversed(parts):
        value = {part: value}
    return value


def opaque_section(cfg: dict, path: list) -> dict:
    """A copy of the whole-replaced section at `path` of `cfg`, {} when unset (an unknown key on the
    way is reported by `merge`, with the keys it knows)."""
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return copy.deepcopy(node) if isinstance(node, dict) else {}


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
    _check_data(cfg["data"], task)
    for stage in TRAINED_STAGES:
        _check_stage(stage, cfg[stage])
    if cfg["baseline"]["lesion_loss"] and task != "brain":
        raise ConfigError("baseline.lesion_loss supervises the brain classifier's cells; set it to 0 for lung")
    _check_insertion(cfg["baseline"]["insert_lesions"], task)
    _check_saliency(cfg["saliency"])
    _check_extras(cfg)
    return cfg


def _check_data(data: dict, task: str):
    src = data["source"]
    if src not in ("synth", "datalist"):
        raise ConfigError(f"data.source must be 'synth' or 'datalist', not {src!r}")
    if src == "datalist" and not data["datalist"]:
        raise ConfigError("data.source is 'datalist' but data.datalist names no file")
    if src == "synth":
        from ACATCore.data import synth
        synth.check_options(task, data["synth_options"])     # ConfigError names the bad option
    split = data["split"]
    if (not isinstance(split, list) or len(split) != 3 or any(not isinstance(v, (int, float))
                                                               or v <= 0 for v in split)
            or abs(sum(split) - 1) > 1e-6):
        raise ConfigError(f"data.split must be three positive fractions summing to 1, not {split!r}")


def _check_insertion(opts, task: str) -> None:
    """baseline.insert_lesions: null, or brain lesion-insertion options (training.lesion_insertion)."""
    if opts is None:
        return
    if task != "brain":
        raise ConfigError("baseline.insert_lesions inserts brain lesions; set it to null for lung")
    from training.lesion_insertion import check_options
    try:
        check_options(opts)
    except ValueError as err:
        raise ConfigError(f"baseline.{err}") from None


def _check_stage(stage: str, s: dict):
    for key in ("epochs", "batch_size"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ConfigError(f"{stage}.{key} must be a positive integer, not {s[key]!r}")
    for key in ("lr", "lr_min", "weight_decay"):
        if not isinstance(s[key], (int, float)) or s[key] < 0:
            raise ConfigError(f"{stage}.{key} must be a non-negative number, not {s[key]!r}")
    if s["lr"] <= 0:
        raise ConfigError(f"{stage}.lr must be positive, not {s['lr']!r}")
    if s.get("new_lr") is not None and (not isinstance(s["new_lr"], (int, float)) or s["new_lr"] <= 0):
        raise ConfigError(f"{stage}.new_lr must be a positive number or null, not {s['new_lr']!r}")
    for key in ("validate_start", "cpu_bf16"):
        if key in s and not isinstance(s[key], bool):
            raise ConfigError(f"{stage}.{key} must be true or false, not {s[key]!r}")
    patience = s.get("patience")
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"{stage}.patience is a number of epochs >= 1 (or null: every epoch), not {patience!r}")
    margin = s.get("start_margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(f"{stage}.start_margin is a validation-score margin in [0, 1), not {margin!r}")
    weight = s.get("lesion_loss", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ConfigError(f"{stage}.lesion_loss is a non-negative weight (0: off), not {weight!r}")
    if not 0 <= s.get("flip", 0) <= 1:
        raise ConfigError(f"{stage}.flip is a probability in [0, 1], not {s['flip']!r}")


def _check_saliency(s: dict):
    if not isinstance(s["cpu_bf16"], bool):
        raise ConfigError(f"saliency.cpu_bf16 must be true or false, not {s['cpu_bf16']!r}")
    if s["cpu_bf16"] and s["method"] != "counterfactual":
        raise ConfigError(f"saliency.cpu_bf16 speeds up the counterfactual search; saliency.method is "
                          f"{s['method']!r}: set saliency.cpu_bf16 to false")


def _check_extras(cfg: dict):
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
    from ACATCore.analysis_maps import check_smoothing
    try:
        check_smoothing(cfg["evaluate"]["smooth_sigma"])
    except ConfigError as e:
        raise ConfigError(f"evaluate.smooth_sigma: {e}") from None
    size = cfg["data"]["preprocessing"]["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v % 4 == 0
                                                              and v > 0 for v in size)):
        raise ConfigError(f"data.preprocessing.size must be [H, W], both multiples of 4 "
                          f"(the autoencoder halves twice), not {size!r}")


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes: --config, --set, --seed, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", help="JSON (or YAML) config file; see training/configs/")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set baseline.epochs=5 (repeatable)")
    ap.add_argument("--seed", type=int, default=None,
                    help="the run seed (default: the first of the config's seeds)")
    ap.add_argument("--out", help="override out_dir")
    return ap


def config_from_args(args) -> dict:
    """The config the parsed arguments name; fills args.seed with the config's first seed if unset."""
    overrides = list(args.set)
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    cfg = load_config(args.config, overrides)
    if args.seed is None:
        args.seed = cfg["seeds"][0]
    return cfg
