"""Safe model files: ``safetensors`` weights plus a JSON model card beside them.

A model file never runs code: weights are read with ``safetensors`` only (no pickle, no ``torch.load``).
The card ``<name>.json`` beside ``<name>.safetensors`` says what the weights are (architecture and its
options, task, classes, preprocessing, training data, metrics) and holds their SHA-256 (``sha256``) and
its own (``card_sha256``: the SHA-256 of the card's canonical JSON without that field, so the two
together cover the card and the weights). Loading checks the card's schema version, both checksums,
every field's type and range (:func:`validate_card`: sizes and layer counts are bounded, the number of
class names equals the model's outputs), builds the model on the ``meta`` device first and compares
every tensor's name and shape with the file's header before any real tensor is made, and refuses
weights that are NaN or infinite; it raises :class:`ModelFileError` with one line naming the problem.

The checksums guard against corruption (a truncated download, a flipped bit, a hand edit gone wrong),
not against a malicious author: anyone who edits a file can recompute them. Weights are still never
unpickled, so a model file cannot run code.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
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
             "metrics", "sha256", "card_sha256", "created", "acat_version", "intended_use")
REQUIRED_KEYS = ("schema_version", "model_name", "model_config", "sha256", "card_sha256")
MAX_CARD_BYTES = 1 << 20        # a model card is a few KB
# bounds of a model card's numbers (far above any model of the paper; they bound memory and time)
MAX_CONFIG_INT = 4096           # channels, hidden units, classes, slices, ...
MAX_CONFIG_LIST = 64            # entries of a list (widths, layers, ...)
MAX_TOTAL_LAYERS = 256          # sum of a ``layers`` list
MAX_SLICES = 1024
MAX_SIZE = 2048
MAX_CLASSES = 1000
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
        "card_sha256": None,
        "created": card.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "acat_version": acat_version(),
        "intended_use": card.get("intended_use", DEFAULT_INTENDED_USE),
    }
    full["card_sha256"] = card_digest(full)
    text = json.dumps(full, indent=2, sort_keys=False) + "\n"
    _atomic_write(card_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return full


def card_digest(card: dict) -> str:
    """SHA-256 of the card's canonical JSON (sorted keys, no spaces) without ``card_sha256``."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def reseal_card(path: str | os.PathLike) -> dict:
    """Recompute ``sha256`` (of the weights) and ``card_sha256`` of the model file ``path`` after a
    deliberate edit of its card (e.g. a new preprocessing key); rewrites the card; returns it."""
    wpath = weights_path(path)
    cpath = card_path(wpath)
    card = json.loads(cpath.read_text(encoding="utf-8"))
    card["sha256"] = sha256_of(wpath)
    card["card_sha256"] = card_digest(card)
    text = json.dumps(card, indent=2, sort_keys=False) + "\n"
    _atomic_write(cpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return card


def _bad(cpath, what) -> ModelFileError:
    return ModelFileError(f"model card {Path(cpath).name}: {what}; get a fresh copy of the model")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_config_value(cpath, key, value, depth=0):
    if value is None or isinstance(value, bool):
        return
    if _is_int(value):
        if not -MAX_CONFIG_INT <= value <= MAX_CONFIG_INT:
            raise _bad(cpath, f"model_config {key} = {value} is out of range (|value| <= {MAX_CONFIG_INT})")
        return
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e6:
            raise _bad(cpath, f"model_config {key} = {value} is not a finite number in range")
        return
    if isinstance(value, str):
        if len(value) > 64:
            raise _bad(cpath, f"model_config {key} is a string of {len(value)} characters (at most 64)")
        return
    if isinstance(value, list) and depth < 2:
        if len(value) > MAX_CONFIG_LIST:
            raise _bad(cpath, f"model_config {key} has {len(value)} entries (at most {MAX_CONFIG_LIST})")
        for v in value:
            _check_config_value(cpath, key, v, depth + 1)
        return
    raise _bad(cpath, f"model_config {key} has an unexpected type ({type(value).__name__})")


def validate_card(card: dict, cpath="card") -> dict:
    """Check every field ACAT uses: types, ranges and bounded sizes (raises :class:`ModelFileError`).

    Unknown keys are allowed in ``preprocessing`` and ``model_config`` (newer options, e.g.
    ``brain_extraction``, ``pooling``, ``topk``) as long as they are small JSON values; the model's
    own builder then decides whether it knows them."""
    if not isinstance(card.get("model_name"), str) or not card["model_name"] or len(card["model_name"]) > 64:
        raise _bad(cpath, f"model_name must be a short string, not {card.get('model_name')!r}")
    sha = card.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise _bad(cpath, "sha256 must be 64 lower-case hexadecimal digits")
    config = card["model_config"]
    for key, value in config.items():
        if not isinstance(key, str) or len(key) > 64:
            raise _bad(cpath, f"model_config has an invalid key {key!r}")
        _check_config_value(cpath, key, value)
        if key in ("widths", "block_inplanes", "encoder_channels", "decoder_channels", "layers", "pool_layers") \
                and value is not None:
            if not isinstance(value, list) or not all(_is_int(v) and v >= 0 for v in value):
                raise _bad(cpath, f"model_config {key} must be a list of whole numbers >= 0, not {value!r}")
    for key in ("blocks_per_stage", "depth", "num_layers", "heads", "topk"):
        value = config.get(key)
        if _is_int(value) and not 0 <= value <= (MAX_SLICES if key == "topk" else 64):
            raise _bad(cpath, f"model_config {key} = {value} is out of range")
    layers = config.get("layers")
    if isinstance(layers, list) and sum(layers) > MAX_TOTAL_LAYERS:
        raise _bad(cpath, f"model_config layers {layers} add up to {sum(layers)} blocks (at most {MAX_TOTAL_LAYERS})")
    for key in ("dropout", "slice_dropout"):
        if key in config and config[key] is not None and not (_is_number(config[key]) and 0 <= config[key] < 1):
            raise _bad(cpath, f"model_config {key} must be a number in [0, 1), not {config[key]!r}")
    task = card.get("task")
    if task is not None and not (isinstance(task, str) and len(task) <= 64):
        raise _bad(cpath, f"task must be a short string or null, not {task!r}")
    names = card.get("class_names")
    if names is not None:
        if not isinstance(names, list) or len(names) > MAX_CLASSES or \
                not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names):
            raise _bad(cpath, "class_names must be a list of non-empty strings")
        if len(set(names)) != len(names):
            raise _bad(cpath, f"class_names {names} repeat a name")
    pre = card.get("preprocessing")
    if pre is not None:
        _validate_preprocessing(pre, cpath)
    return card


def _validate_preprocessing(pre, cpath) -> None:
    if not isinstance(pre, dict):
        raise _bad(cpath, "preprocessing must be a JSON object")
    window = pre.get("window")
    if not (isinstance(window, list) and len(window) == 2 and all(_is_number(v) and abs(v) <= 1e5 for v in window)
            and window[0] < window[1]):
        raise _bad(cpath, f"preprocessing window must be [lo, hi] with finite lo < hi (HU), not {window!r}")
    slices = pre.get("slices")
    if not (_is_int(slices) and 1 <= slices <= MAX_SLICES):
        raise _bad(cpath, f"preprocessing slices must be a whole number 1..{MAX_SLICES}, not {slices!r}")
    size = pre.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 4 <= v <= MAX_SIZE for v in size)):
        raise _bad(cpath, f"preprocessing size must be [H, W] with whole numbers 4..{MAX_SIZE}, not {size!r}")
    if "brain_extraction" in pre and not isinstance(pre["brain_extraction"], bool):
        raise _bad(cpath, f"preprocessing brain_extraction must be true or false, not {pre['brain_extraction']!r}")
    for key, value in pre.items():
        if key not in ("window", "size") and not (value is None or isinstance(value, (bool, str)) or _is_number(value)):
            raise _bad(cpath, f"preprocessing {key} has an unexpected value {value!r}")
        if isinstance(value, str) and len(value) > 64:
            raise _bad(cpath, f"preprocessing {key} is too long")
    from .preprocessing import check_spec
    try:
        check_spec(pre)
    except (ACATError, TypeError, ValueError) as e:
        raise _bad(cpath, f"invalid preprocessing ({e})") from None


def read_card(path: str | os.PathLike) -> dict:
    """The model card of the model file ``path``, checked for schema and required fields."""
    wpath = weights_path(path)
    cpath = card_path(wpath)
    if not cpath.is_file():
        raise ModelFileError(f"model card {cpath.name} is missing beside {wpath.name} in {cpath.parent}; "
                             "a model file is only loaded together with its card")
    try:
        if cpath.stat().st_size > MAX_CARD_BYTES:
            raise ModelFileError(f"model card {cpath.name} is {cpath.stat().st_size:,} bytes, too large for a "
                                 "model card; get a fresh copy of the model")
        card = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:     # ValueError: JSON, huge numbers
        raise ModelFileError(f"model card {cpath} is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    except OSError as e:
        raise ModelFileError(f"cannot read model card {cpath} ({e.strerror or e})") from None
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
    if card["card_sha256"] != card_digest(card):
        raise ModelFileError(f"model card {cpath.name} does not match its card_sha256: the card was modified or "
                             "corrupted; get a fresh copy (after a deliberate edit: ACATCore.checkpoint.reseal_card)")
    if not isinstance(card["model_config"], dict):
        raise ModelFileError(f"model card {cpath.name}: model_config must be a JSON object")
    return validate_card(card, cpath)


def verify_model_file(path: str | os.PathLike) -> dict:
    """Every check of :func:`load_model` without building the real model: the card (schema, both
    checksums, fields), the model it describes (built on the ``meta`` device: no memory) against the
    tensors' names and shapes in the file's header, and every weight finite. Returns the card."""
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
        with torch.device("meta"):           # shapes only: nothing is allocated before they are checked
            shape_model = build_model(name, **card["model_config"])
    except (ACATError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{wpath.name}: the card's model_config does not build a {name} "
                             f"({' '.join(str(e).split())[:200]})") from None
    _check_class_count(shape_model, card, wpath)
    _compare(shape_model.state_dict(), _safetensors_shapes(wpath), name, wpath)
    _check_finite(wpath)
    return card


def _check_finite(wpath: Path) -> None:
    """Refuse NaN or infinite weights (one tensor in memory at a time)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(wpath), framework="pt", device="cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                    raise ModelFileError(f"{wpath.name}: tensor {key} holds NaN or infinite values; get a fresh copy")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{wpath.name} is not a readable safetensors file ({e})") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build and fill the model of ``path`` after checking everything (:func:`verify_model_file`);
    returns ``(model, card)``, eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import build_model

    wpath = weights_path(path)
    card = verify_model_file(wpath)
    name = card["model_name"]
    try:
        model = build_model(name, **card["model_config"])
    except (ACATError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{wpath.name}: the card's model_config does not build a {name} ({e})") from None
    try:
        tensors = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{wpath.name} is not a readable safetensors file ({e})") from None
    _compare(model.state_dict(), {k: (tuple(t.shape), _DTYPES.get(t.dtype)) for k, t in tensors.items()},
             name, wpath)
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return model, card


def _safetensors_shapes(wpath: Path) -> dict:
    """name -> (shape, dtype string) from the safetensors header, without reading any tensor."""
    from safetensors import SafetensorError
    try:
        with open(wpath, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("too short")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(100 << 20, os.path.getsize(wpath) - 8):
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        shapes = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            shape = info.get("shape") if isinstance(info, dict) else None
            if not isinstance(shape, list) or not all(_is_int(v) and v >= 0 for v in shape):
                raise ValueError(f"tensor {key} has no valid shape")
            shapes[key] = (tuple(shape), info.get("dtype"))
        return shapes
    except (OSError, ValueError, RecursionError, SafetensorError, AttributeError) as e:
        raise ModelFileError(f"{wpath.name} is not a readable safetensors file ({' '.join(str(e).split())[:120]})") from None


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _compare(own: dict, header: dict, name: str, wpath: Path) -> None:
    missing = sorted(set(own) - set(header))
    unexpected = sorted(set(header) - set(own))
    if missing or unexpected:
        detail = "; ".join(s for s in (f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else "",
                                       f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}"
                                       if unexpected else "") if s)
        raise ModelFileError(f"{wpath.name} holds weights of a different architecture than its card's {name} "
                             f"({detail})")
    for key, value in own.items():
        shape, dtype = header[key]
        if shape != tuple(value.shape):
            raise ModelFileError(f"{wpath.name}: tensor {key} has shape {shape}, the card's "
                                 f"{name} needs {tuple(value.shape)} (wrong architecture or config)")
        if _DTYPES.get(value.dtype, dtype) != dtype:
            raise ModelFileError(f"{wpath.name}: tensor {key} is {dtype}, expected {_DTYPES.get(value.dtype)}")


def _check_class_count(model, card: dict, wpath: Path, required: bool = False) -> None:
    """A classifier's card names exactly as many classes as the model has outputs (``required``:
    names must be given, as for an analysis; else a card without names passes)."""
    outputs = getattr(model, "num_classes", None)
    names = card.get("class_names")
    if not _is_int(outputs) or card["model_name"] == "autoencoder" or (names is None and not required):
        return
    if not isinstance(names, list) or len(names) != outputs:
        got = "no class_names" if not isinstance(names, list) else f"{len(names)} class name(s)"
        raise ModelFileError(f"model card {card_path(wpath).name} gives {got} but the model has {outputs} "
                             "outputs; get a fresh copy of the model")


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
    _check_class_count(classifier, c_card, folder / f"classifier{WEIGHTS_SUFFIX}", required=True)
    _check_class_count(acat, card, folder / f"acat{WEIGHTS_SUFFIX}", required=True)
    if c_card.get("class_names") != card.get("class_names"):
        raise ModelFileError(f"model bundle {folder}: classifier and acat cards name different classes")
    if c_card.get("task") != card.get("task"):
        raise ModelFileError(f"model bundle {folder} mixes tasks: classifier {c_card.get('task')!r}, "
                             f"acat {card.get('task')!r}")
    if c_card.get("preprocessing") and card.get("preprocessing") and c_card["preprocessing"] != card["preprocessing"]:
        raise ModelFileError(f"model bundle {folder}: classifier and acat cards give different preprocessing")
    return Bundle(classifier, autoencoder, acat, card, c_card, a_card, folder)


__all__ = ["SCHEMA_VERSION", "Bundle", "save_model", "load_model", "load_bundle", "read_card", "sha256_of",
           "card_digest", "reseal_card", "validate_card", "verify_model_file"]
