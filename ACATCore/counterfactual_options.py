"""Options of the Eq. 4 counterfactual search (:func:`ACATCore.counterfactual.generate`): one frozen
dataclass, every value checked when it is made."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Optional

from .errors import ConfigError

OPTIMIZERS = ("sgd", "fista", "adam")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine", "adaptive")

# Presets of the search; ``analyze``, the ``acat`` command and the Slicer module take theirs from here.
# PAPER: Sec. 3's plain gradient descent, 20 steps (``generate``'s own default). FAST: FISTA with adaptive
# steps; in 7 steps it reaches the paper's 20-step Eq. 4 value, maps Pearson >= 0.995 on the trained
# bundles (docs/analyze.md, "Speed"). analyze's default is FAST without early stop: on fresh cases it
# gives the paper preset's accuracy and hit score at about 40% of the time (docs/RESULTS.md).
PAPER_SEARCH = {"optimizer": "sgd", "schedule": "constant"}
PAPER_STEPS = 20
FAST_SEARCH = {"optimizer": "fista", "schedule": "adaptive"}
FAST_STEPS = 7
DEFAULT_SEARCH = dict(FAST_SEARCH)
DEFAULT_STEPS = FAST_STEPS
DEFAULT_EARLY_STOP = None        # analyze's: no early stop (a probability in (0, 1] turns it on)

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need(ok: bool, what: str, value) -> Optional[str]:
    return None if ok else f"{what}, not {value!r}"


def _choice(name: str, value, allowed) -> Optional[str]:
    return None if value in allowed else \
        f"{name} must be one of {', '.join(repr(a) for a in allowed)}, not {value!r}"


@dataclass(frozen=True)
class CounterfactualOptions:
    """Every option of the Eq. 4 search, checked when made (a bad value raises ConfigError).

    steps, alpha: Eq. 4 (paper: 20, 100). step_size: descent step (0.1). optimizer: "sgd" (paper:
    plain gradient descent) | "fista" (proximal steps with Nesterov momentum and restart) | "adam".
    momentum: FISTA's momentum cap in [0, 1) (its Nesterov coefficient never exceeds it). schedule:
    "constant" | "cosine" (step size down to 0 over ``steps``) | "adaptive" (per pair: x1.25 after a
    step that lowered its Eq. 4 value, up to 4x step_size; halved after one that raised it).
    l1: "mean" | "sum" reduction of |z - E(x)| per volume. l1_update: "proximal" | "subgradient" (the
    authors' exact update; sgd only).
    stop_at: freeze a (target, volume) pair once its target probability reaches this. seed: torch seed
    for the call (None: no seeding; the caller's RNG state is restored). return_latents: also return z'.
    decode_chunk: slices per decoder call in the search (None: all at once; else recomputed in the
    backward pass: same gradient, bounded memory). fuse: fold BatchNorm into the conv before it.
    precision: "fp32" | "bf16" (autocast of the search; maps always decoded in float32). compile:
    torch.compile the decode-classify step (falls back to eager, with a log line, if it fails).
    """

    steps: int = 20
    alpha: float = 100.0
    step_size: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "constant"
    l1: str = "mean"
    l1_update: str = "proximal"
    stop_at: Optional[float] = None
    seed: Optional[int] = 0
    return_latents: bool = False
    decode_chunk: Optional[int] = None
    fuse: bool = True
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        problems = [p for p in self._problems() if p]
        if problems:
            raise ConfigError("counterfactual: " + "; ".join(problems))

    def _problems(self) -> Iterator[Optional[str]]:
        o = self
        yield _need(_is_int(o.steps) and o.steps >= 0, "steps must be a whole number >= 0", o.steps)
        yield _need(_is_number(o.alpha) and o.alpha >= 0, "alpha must be a finite number >= 0", o.alpha)
        yield _need(_is_number(o.step_size) and o.step_size > 0, "step_size must be a finite number > 0", o.step_size)
        yield _choice("optimizer", o.optimizer, OPTIMIZERS)
        yield _need(_is_number(o.momentum) and 0 <= o.momentum < 1, "momentum must be in [0, 1)", o.momentum)
        yield _choice("schedule", o.schedule, SCHEDULES)
        yield _choice("l1", o.l1, ("mean", "sum"))
        yield _choice("l1_update", o.l1_update, ("proximal", "subgradient"))
        yield _need(o.stop_at is None or (_is_number(o.stop_at) and 0 < o.stop_at <= 1),
                    "stop_at must be in (0, 1] or None", o.stop_at)
        yield _need(o.seed is None or _is_int(o.seed), "seed must be a whole number or None", o.seed)
        yield _need(o.decode_chunk is None or (_is_int(o.decode_chunk) and o.decode_chunk >= 1),
                    "decode_chunk must be a whole number >= 1 or None", o.decode_chunk)
        yield _choice("precision", o.precision, PRECISIONS)
        for name in ("return_latents", "fuse", "compile"):
            yield _need(isinstance(getattr(o, name), bool), f"{name} must be True or False", getattr(o, name))

    @classmethod
    def build(cls, options: "Optional[CounterfactualOptions | dict]" = None, **overrides) -> "CounterfactualOptions":
        """Options from an instance, a dict (e.g. a model card's saliency options) and/or keywords;
        an unknown name raises ConfigError listing the known ones."""
        if options is not None and not isinstance(options, (cls, dict)):
            raise ConfigError(f"counterfactual: options must be a CounterfactualOptions or a dict, "
                              f"not {type(options).__name__}")
        values = dataclasses.asdict(options) if isinstance(options, cls) else dict(options or {})
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"counterfactual: unknown option(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**_normalised(values))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _normalised(values: dict) -> dict:
    """Numbers as their declared types where that loses nothing (JSON's 20.0 for 20, numpy scalars)."""
    out = dict(values)
    for key in ("steps", "decode_chunk", "seed"):
        v = out.get(key)
        if isinstance(v, float) and v.is_integer():
            out[key] = int(v)
        elif v is not None and not isinstance(v, bool) and hasattr(v, "__index__"):
            out[key] = int(v)
    for key in ("alpha", "step_size", "momentum", "stop_at"):
        v = out.get(key)
        if v is not None and not isinstance(v, (bool, str)) and hasattr(v, "__float__"):
            out[key] = float(v)
    return out
