"""One analysis: a CT volume in, an :class:`~ACATCore.result.AnalysisResult` out.

The steps (names as reported to the ``progress`` callback, in this order)::

    read            file / DICOM folder / array -> Volume (HU), checked to be a CT
    preprocess      model input per the model card (window, slices, size), one per offset sampling
    classify        baseline classifier probabilities
    counterfactuals latent-space counterfactuals to every class -> counterfactual saliency
    attention       ACAT forward with that saliency: probabilities, attention masks, slice weights
    map back        every map back onto the input volume's grid and geometry
    write           (only when ``out`` is given) NRRD/NIfTI maps, JSON, report

Coverage. The classifier sees S (= 11) uniformly sampled slices, but a radiologist scrolls through
all of them. ``coverage="full"`` (the default) runs several samplings shifted by a fraction of the
sampling step (offsets), so that every input slice is one of the model's slices in at least one of
them; per-slice maps come from the sampling that saw that slice, probabilities and baseline
probabilities are the mean over the samplings. ``coverage="sampled"`` runs the paper's single
centred sampling. A card whose preprocessing says ``"slab": true`` makes each model slice the mean of
a thick slab of input slices, so its one sampling sees every slice whatever the coverage; each input
slice takes its slab's maps. Either way ``AnalysisResult.slices_seen`` says which input slices the
model saw; maps are zero (counterfactuals equal to the input) on slices it did not see.

Counterfactual volumes are reported in HU as ``input + (D(z') - D(E(x)))`` mapped back to the input
grid: the change the model asks for, added to the full-resolution scan (the decoder output itself
is blurred and clipped to the model's window, so it would not read as a CT).

Speed without changing the method: every weight is frozen (only input/latent gradients are
computed), all slices, offset samplings and targets of a chunk run in one batched graph (samplings
within ``pixel_budget``; a single sampling beyond it runs its targets one after the other, the same
maps), channels-last convolutions on the CPU, and forward-only
stages under ``torch.inference_mode``, BatchNorm folded into the preceding convolutions for the search
(exact: eval-mode BatchNorm is affine), and the decoder run in chunks of slices (recomputed in the
backward pass) beyond ``DECODE_PIXEL_BUDGET`` pixels, which bounds the memory of a brain volume.

The search (``DEFAULT_SEARCH``, ``DEFAULT_STEPS``): Eq. 4 solved by FISTA with adaptive steps, 7 steps,
which reaches the value of the paper's 20 plain gradient steps (``PAPER_SEARCH``, ``PAPER_STEPS``: pass
``counterfactual_options=PAPER_SEARCH, steps=PAPER_STEPS`` for the paper's own search).

Early stop (``early_stop``, default ``None``: every pair runs all its steps): with a probability P, a
counterfactual ends once its target probability reaches P, and that (target, sampling) pair leaves the
batch (it costs nothing more). A target the classifier already gives >= P therefore stops at step 0: its
counterfactual is the reconstruction D(E(x)), its map |D(E(x)) - D(z0)| is zero, and it contributes
nothing to the class-agnostic saliency, which is then the (normalised) map of the other target(s): the
change needed to leave the predicted class. Each target map is normalised by its own max and the mean
over targets is normalised again, so a zero map only lowers the mean by a constant factor that the final
normalisation removes. With two classes at most one target can start above P > 0.5, so the saliency is
never empty because of early stop. The counterfactual search is checked for
``cancel`` at every step.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

# analyze's search defaults; the presets (PAPER_SEARCH / PAPER_STEPS, FAST_SEARCH / FAST_STEPS) live there too
from .analysis_maps import (EDGE_BAND, PEAK_TOP, SHOWN_SMOOTHING, acat_saliency, check_smoothing,
                            counterfactual_saliency, inner_region, input_grid_saliency, salient_peak)
from .counterfactual_options import DEFAULT_EARLY_STOP, DEFAULT_SEARCH, DEFAULT_STEPS
from .errors import ACATError, ConfigError, InputError, ModelFileError
from .preprocessing import SliceMerger
from .result import ATTENTION_NAMES, AnalysisResult
from .volume import Volume

STAGES = ("read", "preprocess", "classify", "counterfactuals", "attention", "map back", "write")
# Rough share of the run time of each stage, used to turn stage progress into one overall fraction.
_STAGE_SHARE = {"read": 0.03, "preprocess": 0.04, "classify": 0.05, "counterfactuals": 0.60,
                "attention": 0.10, "map back": 0.08, "write": 0.10}
COVERAGES = ("full", "sampled")
# Pixels (offsets x slices x H x W) run together in one batched graph; bounds peak memory.
DEFAULT_PIXEL_BUDGET = 2_500_000
# Pixels of decoder output whose graph is held at once in the counterfactual search (beyond it the
# decoder runs in chunks of slices and is recomputed in the backward pass: the same gradient).
DECODE_PIXEL_BUDGET = 800_000


class Cancelled(ACATError):
    """The analysis was cancelled (``cancel`` event set, or Ctrl-C in the CLI)."""


# --------------------------------------------------------------------------------------- progress
class _Progress:
    """Calls ``callback(stage, fraction)`` with the overall fraction in [0, 1]; checks ``cancel``."""

    def __init__(self, callback: Optional[Callable], cancel: Optional[threading.Event],
                 with_write: bool):
        self.callback = callback
        self.cancel = cancel
        stages = STAGES if with_write else STAGES[:-1]
        total = sum(_STAGE_SHARE[s] for s in stages)
        self.start = {}
        acc = 0.0
        for s in stages:
            self.start[s] = acc / total
            acc += _STAGE_SHARE[s]
        self.share = {s: _STAGE_SHARE[s] / total for s in stages}
        self.timings = {}
        self._stage = None
        self._t0 = None
        self._last = 0.0

    def check(self):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("analysis cancelled")

    def stage(self, name: str):
        self.check()
        self._close()
        self._stage, self._t0 = name, time.perf_counter()
        self.report(0.0)

    def report(self, within: float):
        """Progress ``within`` in [0, 1] inside the current stage."""
        if self.callback is not None and self._stage is not None:
            frac = self.start[self._stage] + self.share[self._stage] * min(max(within, 0.0), 1.0)
            self._last = max(self._last, frac)      # monotonic, even when chunks revisit stages
            self.callback(self._stage, float(self._last))
        self.check()

    def _close(self):
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._t0
            self._stage = None

    def done(self):
        self._close()
        if self.callback is not None:
            self.callback("done", 1.0)


# ----------------------------------------------------------------------------------------- models
_BUNDLE_CACHE: dict = {}


def resolve_device(device: str = "auto"):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use auto, cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return dev


def load_models(model, device="auto", channels_last: bool = True):
    """The model bundle for ``model``: a shipped name ("brain", "lung"), a bundle folder, or an
    already loaded ``Bundle`` (anything with ``classifier``, ``autoencoder``, ``acat``, ``card``).
    Loaded bundles are cached per folder (and file times) so a batch loads them once. The nets are
    put in eval mode with frozen weights and, on the CPU, channels-last memory format (about
    1.2-1.4x faster convolutions here; the same maps to float rounding, see the tests)."""
    dev = resolve_device(device)
    if all(hasattr(model, a) for a in ("classifier", "autoencoder", "acat", "card")):
        bundle = model
    else:
        from .checkpoint import load_bundle
        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"model must be a name (brain, lung), a bundle folder or a Bundle, "
                              f"not {type(model).__name__}")
        key = _bundle_key(model)
        bundle = _BUNDLE_CACHE.get(key)
        if bundle is None:
            bundle = load_bundle(model)
            _BUNDLE_CACHE.clear()       # keep one bundle: they can be large
            _BUNDLE_CACHE[key] = bundle
    for net in (bundle.classifier, bundle.autoencoder, bundle.acat):
        net.to(dev).eval()
        if dev.type == "cpu":   # channels-last: faster oneDNN convolutions, same results
            net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for p in net.parameters():
            p.requires_grad_(False)     # frozen weights: only input / latent gradients
    return bundle


def _bundle_key(model):
    path = Path(model)
    if path.is_dir():
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
        return (str(path.resolve()), stamp)
    return (str(model), None)


def bundle_card(bundle) -> dict:
    return dict(bundle.card or {})


def _preprocessing_spec(card: dict) -> dict:
    spec = card.get("preprocessing")
    if not isinstance(spec, dict) or "window" not in spec:
        raise ModelFileError("the model card has no valid 'preprocessing' entry; the bundle is incomplete")
    return spec


def counterfactual_class_names(card: dict, n_targets: int) -> list:
    """Names of the classes the counterfactual engine steers to (brain: the lesion head)."""
    names = card.get("counterfactual_class_names")
    if isinstance(names, list) and len(names) == n_targets:
        return [str(n) for n in names]
    class_names = list(card.get("class_names", []))
    if len(class_names) == n_targets:
        return class_names
    if card.get("task") == "brain" and n_targets == 2:
        return ["no lesion", "lesion"]
    return [f"class {i}" for i in range(n_targets)]


# ----------------------------------------------------------------------------------------- input
def read_input(volume_or_path) -> Volume:
    """A checked CT ``Volume`` from a Volume, a numpy array (1 mm, identity geometry) or a path."""
    from . import io
    if isinstance(volume_or_path, Volume):
        volume = volume_or_path
    elif isinstance(volume_or_path, np.ndarray):
        volume = Volume(volume_or_path)
    elif isinstance(volume_or_path, (str, os.PathLike)):
        path = Path(volume_or_path)
        if not path.exists():
            raise InputError(f"input {path} does not exist; give a CT file (NRRD, NIfTI, MHA) or a DICOM folder")
        volume = io.read_volume(path)
    else:
        raise InputError(f"cannot analyse a {type(volume_or_path).__name__}; give a Volume, an array or a path")
    io.validate_ct(volume)
    return volume


# -------------------------------------------------------------------------------------- sampling
def sampling_offsets(n_slices: int, spec: dict, coverage: str = "full") -> list:
    """Slice-sampling offsets for ``prepare``: ``[0.0]`` (the paper's centred sampling) for
    ``coverage="sampled"`` and for a slab spec (its one sampling sees every slice); for ``"full"`` the
    fewest offsets whose samplings see every slice."""
    from .preprocessing import coverage_offsets
    if coverage not in COVERAGES:
        raise ConfigError(f"coverage must be one of {', '.join(COVERAGES)}, not {coverage!r}")
    if coverage == "sampled" or spec.get("slab"):      # slabs: one sampling sees every slice
        return [0.0]
    return [float(o) for o in coverage_offsets(int(n_slices), int(spec.get("slices", 11)))]


def _prepare_all(volume, spec, coverage, prog):
    """The prepared samplings of ``volume``, their offsets, the set of input slices they see, the
    number of slices there were to see, and the brain mask (canonical; None without extraction)."""
    from .preprocessing import canonical_axes, check_spec, prepare, to_canonical
    perm, _ = canonical_axes(volume.direction)
    n_slices, brain, lungs, spec = volume.shape[perm[0]], None, None, check_spec(spec)
    if spec["brain_extraction"]:
        from .brain_extraction import extract_brain
        canonical = to_canonical(volume)
        brain = extract_brain(canonical.array, canonical.spacing)
        n_slices = brain.slices[1] - brain.slices[0] + 1
    elif spec.get("lung_extraction") or spec.get("lung_box"):    # found once for every sampling
        from .lung_mask import lung_slices, require_lungs
        canonical = to_canonical(volume)
        lungs = require_lungs(canonical.array, canonical.spacing)
        n_slices = lung_slices(lungs)[1] if spec.get("lung_box") else n_slices
    offsets = sampling_offsets(n_slices, spec, coverage)
    prepared, seen = [], set()
    for n, off in enumerate(offsets):
        prepared.append(prepare(volume, spec, offset=off, brain=brain, lungs=lungs))
        seen.update(int(k) for k in prepared[-1].slices_seen())
        prog.report((n + 1) / len(offsets))
    return prepared, offsets, seen, n_slices, brain


# -------------------------------------------------------------------------------------- analysis
def analyze(volume_or_path, model="brain", coverage: str = "full", steps: int = DEFAULT_STEPS,
            alpha: float = 100.0, device: str = "auto", progress: Optional[Callable] = None,
            cancel: Optional[threading.Event] = None, out=None, out_format: str = "nrrd",
            overwrite: bool = False, report: bool = True, early_stop: Optional[float] = DEFAULT_EARLY_STOP,
            pixel_budget: int = DEFAULT_PIXEL_BUDGET, counterfactual_options: Optional[dict] = None,
            channels_last: bool = True, smoothing: float = SHOWN_SMOOTHING) -> AnalysisResult:
    """Analyse one CT volume with an ACAT model bundle.

    Parameters
    ----------
    volume_or_path: a :class:`Volume`, a numpy array ``(z, y, x)`` in HU, a CT file or a DICOM folder.
    model: "brain", "lung", a bundle folder, or a loaded ``Bundle``.
    coverage: "full" (every input slice seen, several offset samplings) or "sampled" (the paper's one).
    steps, alpha: search steps (7 of FISTA; paper GD: 20), L1 weight (100). device: "auto", "cpu", "cuda:N".
    progress: ``callback(stage, fraction)``; stage in :data:`STAGES` (then "done"), fraction overall.
    cancel: a ``threading.Event``; when set the analysis stops at the next check with :class:`Cancelled`.
    out: a folder: also write the maps, JSON and (``report=True``) the visual report there (atomic).
    early_stop: stop a counterfactual once its target probability reaches this (default None: every
        counterfactual runs all its steps; see the module docstring). ``counterfactual.generate``'s ``stop_at``.
    pixel_budget: pixels (samplings x S x H x W) in one batched graph: bounds memory, same result.
    counterfactual_options: options of the search (``ACATCore.counterfactual.CounterfactualOptions``)
        over ``DEFAULT_SEARCH`` (e.g. ``counterfactual_options.PAPER_SEARCH`` with ``steps=PAPER_STEPS``,
        ``{"precision": "bf16"}``, ``{"decode_chunk": 4}``); checked before any work.
    channels_last: on the CPU, run the nets in channels-last memory format (faster, same maps).
    smoothing: in-plane Gaussian sigma (model-grid pixels) of the saliency shown and searched for its peak
        (``analysis_maps.input_grid_saliency``, on the input grid after the samplings are merged and the
        maps bounded to the brain or lungs, for a lung model without ``EDGE_BAND`` model pixels at the lungs'
        edge; 0: the paper's unsmoothed map over the whole organ). ACAT always reads its own map.
    """
    _check_options(steps, alpha, coverage)
    _check_search(counterfactual_options, steps, alpha)
    smoothing = check_smoothing(smoothing)
    _check_output(volume_or_path, out, overwrite)
    prog = _Progress(progress, cancel, with_write=out is not None)

    prog.stage("read")
    volume = read_input(volume_or_path)
    bundle = load_models(model, device, channels_last)
    card = bundle_card(bundle)
    spec = _preprocessing_spec(card)
    input_path = str(volume_or_path) if isinstance(volume_or_path, (str, os.PathLike)) else None

    prog.stage("preprocess")
    prepared, offsets, seen, n_slices, brain = _prepare_all(volume, spec, coverage, prog)
    warnings = _input_warnings(volume, prepared, coverage, seen, n_slices)

    merger = SliceMerger(volume, prepared)
    base_probs, acat_probs, cf_names = _analyse_samplings(
        bundle, card, prepared, merger, prog, pixel_budget,
        dict(steps=steps, alpha=alpha, early_stop=early_stop, options=counterfactual_options or {}))
    prog.stage("map back")
    region = brain.mask if brain is not None else _lungs(volume, card, prepared, warnings)
    if region is not None:          # maps and the peak only where the brain (the lungs) are
        from .preprocessing import from_canonical
        merger.restrict_to(from_canonical(region, prepared[0].perm, prepared[0].flip))
    saliency, attention, counterfactuals = _merged_maps(merger, volume, cf_names, smoothing, card.get("task"))
    peak_index, peak_lps, territory = _saliency_peak(volume, saliency, card, brain, warnings)

    result = AnalysisResult(
        input=volume, class_names=list(card.get("class_names", [])), saliency=saliency,
        probabilities=np.concatenate(acat_probs).mean(axis=0),
        baseline_probabilities=np.concatenate(base_probs).mean(axis=0),
        attention=attention, counterfactuals=counterfactuals, slices_seen=np.array(sorted(seen), dtype=int),
        slice_weights=merger.slice_values_of("slice weights"),
        peak_index=peak_index, peak_lps=peak_lps, peak_territory=territory, model_card=card,
        timings=prog.timings, warnings=warnings,
        settings={"coverage": coverage, "offsets": [float(o) for o in offsets], "steps": int(steps),
                  "alpha": float(alpha), "early_stop": early_stop, "smoothing": smoothing,
                  "device": str(next(bundle.classifier.parameters()).device),
                  "search": {**DEFAULT_SEARCH, **(counterfactual_options or {})},
                  "input_path": input_path, "counterfactual_classes": cf_names})

    if out is not None:
        prog.stage("write")
        from .report import save_result
        save_result(result, out, fmt=out_format, overwrite=overwrite, report=report,
                    check=prog.check)
    prog.done()
    result.timings = prog.timings
    return result


def _analyse_samplings(bundle, card, prepared, merger, prog, pixel_budget, search) -> tuple:
    """Classify, search the counterfactuals and attend, chunk by chunk of samplings; every map goes
    into ``merger``. Returns (baseline probabilities, ACAT probabilities: lists of (B, K), class names
    of the counterfactuals). ``search``: steps, alpha, early_stop, options."""
    dev = next(bundle.classifier.parameters()).device
    n_vol = len(prepared)
    s, _, h, w = prepared[0].tensor.shape
    chunk = max(1, int(pixel_budget // max(1, s * h * w)))
    chunks = [list(range(i, min(n_vol, i + chunk))) for i in range(0, n_vol, chunk)]
    lo, hi = [float(v) for v in _preprocessing_spec(card)["window"]]

    base_probs, acat_probs, cf_names = [], [], None
    for ci, idx in enumerate(chunks):
        x = torch.stack([prepared[i].tensor for i in idx]).to(dev, torch.float32)   # (B, S, 1, H, W)

        prog.stage("classify")
        with torch.inference_mode():
            base_probs.append(torch.softmax(bundle.classifier(x).float(), dim=1).cpu().numpy())

        prog.stage("counterfactuals")
        sal, cf_images, recon = _counterfactual_saliency(
            bundle, x, search["steps"], search["alpha"], search["early_stop"], search["options"],
            lambda f, ci=ci: prog.report((ci + f) / len(chunks)), prog.check, pixel_budget)
        if cf_names is None:
            cf_names = counterfactual_class_names(card, cf_images.shape[1])

        prog.stage("attention")
        acat_map = acat_saliency(bundle.card, cf_images, recon, sal)
        probs, masks, weights = _attend(bundle.acat, x, acat_map, (h, w))
        acat_probs.append(probs)

        prog.stage("map back")
        delta_np = (cf_images - recon[:, None])[:, :, :, 0].float().cpu().numpy() * (hi - lo)
        del x, sal, cf_images, recon
        for b, i in enumerate(idx):
            for name in ATTENTION_NAMES:
                merger.add(f"attention {name}", i, masks[name][b])
            for t, name in enumerate(cf_names):
                merger.add(f"counterfactual {name}", i, delta_np[b, t])
            merger.add_slice_values("slice weights", i, weights[b])
            prog.report((b + 1) / len(idx))

    return base_probs, acat_probs, cf_names


def _check_options(steps, alpha, coverage) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ConfigError(f"steps must be a whole number >= 0, not {steps!r}")
    if not alpha >= 0:
        raise ConfigError(f"alpha must be >= 0, not {alpha!r}")
    if coverage not in COVERAGES:
        raise ConfigError(f"coverage must be one of {', '.join(COVERAGES)}, not {coverage!r}")


def _check_output(volume_or_path, out, overwrite) -> None:
    """An output folder that may not be written, or that would write over (or around) the input, fails
    here, before the work rather than after it."""
    if out is None:
        return
    from .outputs import check_output_folder, check_output_overlap
    check_output_folder(out, overwrite)
    if isinstance(volume_or_path, (str, os.PathLike)):
        check_output_overlap(out, [volume_or_path])


def _check_search(options, steps, alpha) -> None:
    """Bad counterfactual options fail here, before the volume is read (ConfigError)."""
    from .counterfactual import CounterfactualOptions
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"counterfactual_options must be a dict, not {type(options).__name__}")
    extra = {k: v for k, v in (options or {}).items() if k != "targets"}
    CounterfactualOptions.build({**DEFAULT_SEARCH, **extra}, steps=int(steps), alpha=float(alpha))


def _input_warnings(volume, prepared, coverage, seen, n_slices) -> list:
    """The reader's and the samplings' warnings (each once), and a coverage shortfall."""
    warnings = list(volume.metadata.get("warnings", []))
    for p in prepared:
        for w in getattr(p, "warnings", []) or []:
            if w not in warnings:
                warnings.append(w)
    if coverage == "full" and len(seen) < n_slices:
        warnings.append(f"full coverage reached only {len(seen)} of {n_slices} slices")
    return warnings


@torch.inference_mode()
def _attend(acat, x, sal, size) -> tuple:
    """ACAT with the saliency: (probabilities (B, K), masks {name: (B, S, H, W)} upsampled to the
    model grid ``size``, slice weights (B, S)), as numpy."""
    logits, inter = acat(x, sal.to(x.dtype), return_intermediates=True)
    masks = {}
    for name in ATTENTION_NAMES:
        m = inter[name].float()                                      # (B, S, 1, h, w)
        b, s = m.shape[:2]
        up = torch.nn.functional.interpolate(m.reshape(b * s, 1, *m.shape[-2:]), size=size,
                                             mode="bilinear", align_corners=False)
        masks[name] = up.reshape(b, s, *size).cpu().numpy()
    weights = inter["slice_weights"].float().reshape(x.shape[0], -1).cpu().numpy()
    return torch.softmax(logits.float(), dim=1).cpu().numpy(), masks, weights


def _merged_maps(merger, volume, cf_names, smoothing, task) -> tuple:
    """(saliency scaled to max 1, attention {name: Volume}, counterfactuals {class: Volume in HU}).
    The saliency is made on the input grid from the merged changes (``input_grid_saliency``), without
    those within the ``task``'s ``EDGE_BAND`` of the organ mask's edge (``inner_region``; none when
    ``smoothing`` is 0: the paper's map)."""
    attention = {name: merger.volume_of(f"attention {name}") for name in ATTENTION_NAMES}
    counterfactuals, deltas = {}, []
    for name in cf_names:
        deltas.append(merger.volume_of(f"counterfactual {name}").array)
        cf = (volume.array.astype(np.float32) + deltas[-1]).astype(np.float32)
        counterfactuals[name] = volume.with_array(cf, kind="counterfactual", target=name)
    sizes = _input_pixel_sizes(merger.prepared[0])
    band = EDGE_BAND.get(task, 0.0) if smoothing else 0.0
    keep = merger.keep if merger.keep is None else inner_region(merger.keep, sizes, band)
    sigmas = tuple(0.0 if size is None else smoothing / size for size in sizes)
    saliency = volume.with_array(input_grid_saliency(deltas, sigmas, keep), kind="saliency")
    return saliency, attention, counterfactuals


def _input_pixel_sizes(prepared) -> tuple:
    """Per input axis, an input pixel's size in model-grid pixels (the model's size over the crop
    box's, in-plane); None for the slice axis."""
    h, w = prepared.tensor.shape[-2:]
    j0, j1, i0, i1 = prepared.box
    sizes = [None, None, None]
    sizes[prepared.perm[1]] = h / (j1 - j0)
    sizes[prepared.perm[2]] = w / (i1 - i0)
    return tuple(sizes)


def _lungs(volume, card, prepared, warnings):
    """The lung mask (canonical) of a lung model's input, else None (with a note when none is found);
    with lung extraction the one preprocessing found."""
    if card.get("task") != "lung":
        return None
    if prepared[0].lungs is not None:
        return prepared[0].lungs
    from .lung_mask import find_lungs
    from .preprocessing import to_canonical
    canonical = to_canonical(volume)
    lungs = find_lungs(canonical.array, canonical.spacing)
    if lungs is None:
        warnings.append("no lungs were found in this CT: the maps and their peak are not bounded to them")
    return lungs


def _saliency_peak(volume, saliency, card, brain, warnings) -> tuple:
    """(peak (i, j, k), its LPS mm, its vascular territory for brain models); notes go to ``warnings``."""
    if float(saliency.array.max()) <= 0:
        warnings.append("the saliency map is zero everywhere: the counterfactuals did not change the image")
        return None, None, None
    k, j, i = salient_peak(saliency.array, PEAK_TOP.get(card.get("task"), 0.0))
    peak_index = (int(i), int(j), int(k))
    peak_lps = tuple(float(v) for v in volume.index_to_physical(peak_index))
    territory = None
    if card.get("task") == "brain":
        from .data.territories import peak_territory
        territory, note = peak_territory(volume, peak_index, brain)
        if note:
            warnings.append(note)
    return peak_index, peak_lps, territory


def _counterfactual_saliency(bundle, x, steps, alpha, early_stop, options, report, check,
                             pixel_budget=DEFAULT_PIXEL_BUDGET):
    """Counterfactuals to every class and the class-agnostic saliency.

    All targets run in one batched graph when volumes x slices x H x W fits ``pixel_budget``
    (the decoder's graph is bounded separately: ``decode_chunk_for``), otherwise one target at a
    time (each (target, volume) pair is independent in the engine, so the result is the same).
    A brain volume (11 x 400 x 500) runs both targets together with the decoder in chunks of 4
    slices: about 1.5 GB peak (RSS) instead of 5.6 GB. The saliency is exactly
    ``compute_saliency("counterfactual", ...)`` with the same options:
    per target |D(E(x)) - D(z')| normalised by its own max per volume, averaged over targets,
    normalised per volume; computed from the same run that gives the counterfactual images.
    Returns ``saliency (B, S, 1, H, W)``, ``counterfactual images (B, T, S, 1, H, W)``,
    ``reconstruction D(E(x)) (B, S, 1, H, W)``.
    """
    from .counterfactual import generate
    kwargs = dict(steps=int(steps), alpha=float(alpha), decode_chunk=decode_chunk_for(x), **DEFAULT_SEARCH)
    kwargs.update(options)
    if early_stop is not None:
        kwargs["stop_at"] = float(early_stop)
    one_at_a_time = "targets" not in kwargs and x.numel() > pixel_budget
    runs = 1
    calls = [0]

    def on_step():      # once per classifier evaluation: steps + 2 per run (start, each step, end)
        calls[0] += 1
        report(0.95 * min(1.0, calls[0] / (runs * (int(steps) + 2))))   # report() also checks cancel

    report(0.0)
    watched = _Watched(bundle.classifier, on_step)
    if not one_at_a_time:
        res = generate(watched, bundle.autoencoder, x, **kwargs)
        cf, recon = res.counterfactuals, res.reconstruction
    else:
        runs = 2
        first = generate(watched, bundle.autoencoder, x, targets=[0], **kwargs)
        n_targets = first.initial_probabilities.shape[1]
        runs = n_targets
        parts = [first.counterfactuals]
        for t in range(1, n_targets):
            parts.append(generate(watched, bundle.autoencoder, x, targets=[t], **kwargs).counterfactuals)
        cf, recon = torch.cat(parts), first.reconstruction
    check()
    cf = cf.transpose(0, 1)                                     # (T, B, ...) -> (B, T, S, 1, H, W)
    sal = counterfactual_saliency(cf, recon)
    report(1.0)
    return sal, cf, recon


def decode_chunk_for(x, budget: int = DECODE_PIXEL_BUDGET):
    """Slices per decoder call in the counterfactual search for input ``x`` (B, S, 1, H, W): None
    (no chunking) when every slice of every target fits ``budget`` pixels at once (lung), else the
    slices that fit (brain 400 x 500: 4)."""
    h, w = x.shape[-2:]
    per = max(1, budget // max(1, h * w))
    return None if per >= 2 * x.shape[0] * x.shape[1] else int(per)


class _Watched(torch.nn.Module):
    """The classifier as the counterfactual engine sees it, calling ``on_call`` before each
    evaluation: per-step progress, and a cancel that takes effect within one step (the callback
    raises :class:`Cancelled`; the engine restores the models' state on the way out)."""

    needs_saliency = False

    def __init__(self, classifier, on_call):
        super().__init__()
        self.classifier = classifier
        self.on_call = on_call
        self.num_classes = getattr(classifier, "num_classes", None)
        # the engine restores the mode it finds on this wrapper, recursively: make it the classifier's
        self.train(classifier.training)

    def forward(self, x):
        self.on_call()
        return self.classifier(x)

    def counterfactual_logits(self, x):
        self.on_call()
        fn = getattr(self.classifier, "counterfactual_logits", None)
        return fn(x) if fn is not None else self.classifier(x)
