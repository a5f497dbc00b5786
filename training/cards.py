"""A run's models: built from the config, saved for users as safetensors with a model card, loaded
back (ACATCore.checkpoint checks the card and the weights' SHA-256)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ACATCore.data.synth import GENERATOR_VERSION
from ACATCore.errors import ConfigError, ModelFileError
from training.config import COMPETITORS, TASK_DEFAULTS
from training.runtime import Runtime, unwrap

INTENDED_USE = ("Trained on synthetic lesions in real anatomy (ACAT-Synth), for demonstration, "
                "not for clinical use.")


def build(name: str, model_config: dict, task: str):
    """ACATCore.models.build_model(name, **model_config); competitors get the task's backbone."""
    from ACATCore.models import build_model, MODEL_NAMES
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; ACATCore.models.MODEL_NAMES has "
                          f"{', '.join(MODEL_NAMES)}")
    kwargs = dict(model_config)
    if name in COMPETITORS:
        kwargs.setdefault("backbone", TASK_DEFAULTS[task]["backbone"])
    try:
        return build_model(name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not accept config {kwargs}: {e}") from e


def stage_key(stage: str) -> str:
    """The config section whose hyper-parameters trained `stage` (e.g. dropout0.2 -> baseline)."""
    if stage.startswith("baseline") or stage.startswith("dropout"):
        return "baseline"
    if stage == "autoencoder":
        return "autoencoder"
    return "acat"


def data_description(cfg: dict) -> str:
    """One sentence on the training data, for the card."""
    data = cfg["data"]
    if data["source"] != "synth":
        return f"datalist {data['datalist']}"
    options = {k: v for k, v in (data.get("synth_options") or {}).items() if v is not None}
    return (f"ACAT-Synth {cfg['task']}: {data['n']} synthetic-lesion volumes in real anatomy "
            f"(generator version {GENERATOR_VERSION}, seed {data['synth_seed']}"
            + (f", options {json.dumps(options)}" if options else "") + "), "
            + ("hypodense ischaemic infarcts of 4 sizes in 6 vascular territories "
               "inserted into deformed copies of a CT brain atlas" if cfg["task"] == "brain" else
               "ground-glass / consolidation patches inserted into the lungs of a real "
               "chest CT"))


def model_card(cfg: dict, stage: str, seed: int, splits: dict, metrics: dict, extra=None) -> dict:
    """The card of a stage's final model: task, classes, preprocessing, data, training, metrics.

    extra: more entries for card["data"]["training"] (e.g. how the model was initialised).
    """
    task = cfg["task"]
    data = cfg["data"]
    training = {"stage": stage, "seed": seed, "hyperparameters": cfg.get(stage_key(stage), {}),
                "config_name": cfg["name"], "torch": torch.__version__, **(extra or {})}
    return {
        "task": task,
        "class_names": TASK_DEFAULTS[task]["class_names"] if stage != "autoencoder" else [],
        "preprocessing": data["preprocessing"],
        "data": {"description": data_description(cfg), "source": data["source"],
                 "split_seed": seed, "split_fractions": data["split"],
                 "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                 "n_test": len(splits["test"]), "training": training},
        "metrics": metrics,
        "intended_use": INTENDED_USE,
    }


def save_final(model, path: Path, card: dict):
    """Write model.safetensors + model.json (ACATCore.checkpoint.save_model)."""
    from ACATCore.checkpoint import save_model
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(path), card)


def save_stage(model, folder: Path, card: dict, rt: Runtime) -> Path:
    """Rank 0 writes folder/model.safetensors with `card`; every rank waits for it; the path."""
    path = folder / "model.safetensors"
    if rt.is_main:
        save_final(model, path, card)
        rt.log(f"[{card['data']['training']['stage']}] saved {path}")
    rt.barrier()
    return path


def load_final(path: Path, what: str):
    """(model, card) of a saved model; ModelFileError naming `what` when it is not there."""
    from ACATCore.checkpoint import load_model
    if not Path(path).exists():
        raise ModelFileError(f"{what} model {path} not found; train it first (see docs/TRAINING.md)")
    return load_model(str(path))
