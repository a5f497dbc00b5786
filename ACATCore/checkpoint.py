"""Safe model files: ``safetensors`` weights plus a JSON model card beside them.

A model file never runs code: weights are read with ``safetensors`` only (no pickle, no ``torch.load``).
The card ``<name>.json`` beside ``<name>.safetensors`` says what the weights are (architecture and its
options, task, classes, preprocessing, training data, metrics) and holds their SHA-256. Loading checks
the card's schema version, the checksum, the model name and options, and every tensor's name and shape,
and raises :class:`ModelFileError` with one line naming the problem.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ACATError, ConfigError, ModelFileError

SCHEMA_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
CARD_KEYS = ("schema_version", "model_name", "model_config", "task", "class_names", "preprocessing", "data",
             "metrics", "sha256", "created", "acat_version", "intended_use")
REQUIRED_KEYS = ("schema_version", "model_name", "model_config", "sha256")
BUNDLE_FILES = ("classifier", "autoencoder", "acat")
DEFAULT_INTENDED_USE = ("Research use only: not a medical device; not for diagnosis or treatment decisions.")


def acat_version() -> str:
    try:
        from importlib.metadata import version
        return version("ACATCore")
    except Exception:  # not installed (e.g. run from a source folder)
        return "0.0.0+unknown"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(CARD_SUFFIX)


def weights_path(path: str | os.PathLike) -> Path:
    """``x.safetensors`` for ``x``, ``x.json`` or ``x.safetensors``."""
    p = Path(path)
    return p.with_suffix(WEIGHTS_SUFFIX) if p.suffix in ("", CARD_SUFFIX) else p


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; model files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_safe(value, what: str):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model card field {what} is not JSON-serialisable: {e}") from None


def save_model(model: nn.Module, path: str | os.PathLike, card: dict | None = None) -> dict:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and its card beside it (``.json``).

    ``card`` holds what only the caller knows (``task``, ``class_names``, ``preprocessing``, ``data``,
    ``metrics``, ``intended_use``); ``schema_version``, ``model_name``, ``model_config``, ``sha256``,
    ``created`` and ``acat_version`` are filled in here. Returns the card written.
    """
    from safetensors.torch import save_file

    name = getattr(model, "model_name", None)
    config = getattr(model, "config", None)
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ConfigError("save_model needs a model built by ACATCore.models.build_model (model_name and config)")
    path = weights_path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        raise ConfigError(f"model files end in {WEIGHTS_SUFFIX}, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)

    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ConfigError(f"unknown model card field(s) {unknown}; allowed: {list(CARD_KEYS)}")
    # own copies, contiguous, on the CPU: safetensors refuses shared or strided storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"model_name": name,
                                                                      "format": "acat-model"}))
    full = {
        "schema_version": SCHEMA_VERSION,
        "model_name": name,
        "model_config": _json_safe(config, "model_config"),
        "task": card.get("task", getattr(model, "task", None)),
        "class_names": card.get("class_names", getattr(model, "class_names", None)),
        "preprocessing": _json_safe(card.get("preprocessing"), "preprocessing"),
        "data": _json_safe(card.get("data", {}), "data"),
        "metrics": _json_safe(card.get("metrics", {}), "metrics"),
        "sha256": sha256_of(path),
        "created": card.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "acat_version": acat_version(),
        "intended_use": card.get("intended_use", DEFAULT_INTENDED_USE),
    }
    text = json.dumps(full, indent=2, sort_keys=False) + "\n"
    _atomic_write(card_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return full


def read_card(path: str | os.PathLike) -> dict:
    """The model card of the model file ``path``, checked for schema and required fields."""
    wpath = weights_path(path)
    cpath = card_path(wpath)
    if not cpath.is_file():
        raise ModelFileError(f"model card {cpath.name} is missing beside {wpath.name} in {cpath.parent}; "
                             "a model file is only loaded together with its card")
    try:
        card = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"model card {cpath} is not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"model card {cpath} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise ModelFileError(f"model card {cpath.name} lacks {missing}")
    version = card["schema_version"]
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"model card {cpath.name} has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise ModelFileError(f"model card {cpath.name} has a newer schema (version {version}) than this ACAT "
                             f"reads (version {SCHEMA_VERSION}); update ACAT")
    if not isinstance(card["model_config"], dict):
        raise ModelFileError(f"model card {cpath.name}: model_config must be a JSON object")
    return card


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build and fill the model of ``path`` after checking everything; returns ``(model, card)``, eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import MODEL_NAMES, build_model

    wpath = weights_path(path)
    if not wpath.is_file():
        raise ModelFileError(f"model file {wpath} not found")
    card = read_card(wpath)
    if sha256_of(wpath) != card["sha256"]:
        raise ModelFileError(f"{wpath.name} does not match the SHA-256 in its card: the file was modified or "
                             "corrupted; get a fresh copy")
    name = card["model_name"]
    if name not in MODEL_NAMES:
        raise ModelFileError(f"{wpath.name}: unknown model name {name!r} in its card (this ACAT knows "
                             f"{', '.join(MODEL_NAMES)}); update ACAT")
    try:
        model = build_model(name, **card["model_config"])
    except (ACATError, TypeError, ValueError) as e:
        raise ModelFileError(f"{wpath.name}: the card's model_config does not build a {name} ({e})") from None
    try:
        tensors = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{wpath.name} is not a readable safetensors file ({e})") from None

    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        detail = "; ".join(s for s in (f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else "",
                                       f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}"
                                       if unexpected else "") if s)
        raise ModelFileError(f"{wpath.name} holds weights of a different architecture than its card's {name} "
                             f"({detail})")
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise ModelFileError(f"{wpath.name}: tensor {key} has shape {tuple(tensors[key].shape)}, the card's "
                                 f"{name} needs {tuple(value.shape)} (wrong architecture or config)")
        if tensors[key].dtype != value.dtype:
            raise ModelFileError(f"{wpath.name}: tensor {key} is {tensors[key].dtype}, expected {value.dtype}")
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return model, card


@dataclass
class Bundle:
    """Everything one analysis needs: baseline classifier, autoencoder, ACAT, and the ACAT card."""

    classifier: nn.Module
    autoencoder: nn.Module
    acat: nn.Module
    card: dict
    classifier_card: dict | None = None
    autoencoder_card: dict | None = None
    folder: Path | None = None


def _bundle_folder(name_or_folder: str | os.PathLike) -> Path:
    p = Path(name_or_folder)
    if p.is_dir():
        return p
    text = str(name_or_folder)
    if os.sep in text or (os.altsep and os.altsep in text) or p.suffix:
        raise ModelFileError(f"model bundle folder {p} not found")
    from .resources import resource_path
    try:
        return resource_path("models", text)
    except ACATError:
        from .resources import resources_dir
        root = resources_dir() / "models"
        known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        raise ModelFileError(f"no shipped model bundle named {text!r} (available: {', '.join(known) or 'none'}); "
                             "give a bundle folder instead") from None


def load_bundle(name_or_folder: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load ``classifier``, ``autoencoder`` and ``acat`` from a bundle folder or a shipped bundle's name."""
    folder = _bundle_folder(name_or_folder)
    for part in BUNDLE_FILES:
        if not (folder / f"{part}{WEIGHTS_SUFFIX}").is_file():
            raise ModelFileError(f"model bundle {folder} lacks {part}{WEIGHTS_SUFFIX} (a bundle holds "
                                 f"{', '.join(p + WEIGHTS_SUFFIX for p in BUNDLE_FILES)} and their cards)")
    classifier, c_card = load_model(folder / f"classifier{WEIGHTS_SUFFIX}", device)
    autoencoder, a_card = load_model(folder / f"autoencoder{WEIGHTS_SUFFIX}", device)
    acat, card = load_model(folder / f"acat{WEIGHTS_SUFFIX}", device)
    if getattr(classifier, "needs_saliency", False) or not hasattr(classifier, "counterfactual_logits"):
        raise ModelFileError(f"{folder}/classifier{WEIGHTS_SUFFIX} is a {c_card['model_name']}, not a baseline "
                             "classifier")
    if a_card["model_name"] != "autoencoder":
        raise ModelFileError(f"{folder}/autoencoder{WEIGHTS_SUFFIX} is a {a_card['model_name']}, not an autoencoder")
    if not getattr(acat, "needs_saliency", False):
        raise ModelFileError(f"{folder}/acat{WEIGHTS_SUFFIX} is a {card['model_name']}, not a saliency-aided model")
    if c_card.get("task") != card.get("task"):
        raise ModelFileError(f"model bundle {folder} mixes tasks: classifier {c_card.get('task')!r}, "
                             f"acat {card.get('task')!r}")
    if c_card.get("preprocessing") and card.get("preprocessing") and c_card["preprocessing"] != card["preprocessing"]:
        raise ModelFileError(f"model bundle {folder}: classifier and acat cards give different preprocessing")
    return Bundle(classifier, autoencoder, acat, card, c_card, a_card, folder)


__all__ = ["SCHEMA_VERSION", "Bundle", "save_model", "load_model", "load_bundle", "read_card", "sha256_of"]
