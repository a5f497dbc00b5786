"""ACAT-Synth: a deterministic benchmark of synthetic lesions on real CT anatomy, with known answers.

``generate(task, n, seed, out_dir)`` writes ``n`` cases and ``datalist.json``; ``main(argv)`` is the
command line (``acat synth --task brain|lung --n N --seed S --out DIR``). Case ``i`` depends only on
``(task, seed, i)`` and the class plan of ``(n, seed)``; the same arguments give identical files.

**brain** (4 classes: ``no lesion``, ``left``, ``right``, ``both``): heads built around the CT brain atlas
(``Resources/data/ct_brain_atlas_1mm.nii.gz``, TotalSegmentator, Apache-2.0), reoriented to LPS-axial.
The one atlas brain is the only real anatomy, so every case varies what it can (``BRAIN_FACTORS``):

- geometry: head size (shared factor 0.88-1.12 x per-axis 0.95-1.05, within 0.85-1.15), rotation
  +-15 deg about each axis (tilt = about left-right), a smooth elastic displacement (1.5-4 mm s.d.);
- skull 2.5-10 mm (+-10-30 % smooth variation) with inner/outer tables (1-2.5 mm, 1400-2100 HU) and
  diploe (400-1000 HU); CSF rim 0.5-3 mm; scalp 2.5-9 mm, sometimes with subcutaneous fat; dense
  (1300-2200 HU) petrous-like skull base in the notches between temporal lobes and cerebellum;
- holder and pillow: in 60 % a curved shell (100-400 HU, 2-5 mm) behind the head, 3-10 mm away;
  a foam pillow (-900..-300 HU) in 70 % of those and 40 % of the others;
- coverage: in 20 % the scan stops 5-25 mm below the brain's top (vertex cut), in 25 % it starts
  15-40 mm above the brain's bottom (skull base cut);
- acquisition: slice thickness 1-5 mm (= spacing) with partial volume (each slice averages 1-4
  sub-slices, the skull's layers box-filtered over the sub-slice and the pixel); pixels drawn 0.6-1.0 mm
  and coarsened to keep ~2 M output and 3 M rendered voxels (speed): in practice ~0.8-1.5 mm at 4-5 mm
  slices, ~1.1-2.2 mm at 1-2 mm; field of view = head (+ holder) + 2-15 mm margins: grids differ per case;
- intensities: grey/white contrast x0.85-1.15, +-3 HU, a smooth +-2 HU bias; HU calibration offset
  +-5 HU; cupping (centre 0-6 HU darker) and low-frequency streaky shading near the skull base (2-12 HU);
  in-plane correlated noise (0.35-1.1 mm, with a ring-like part), 2-4.5 HU s.d. at 5 mm, x (5 / slice
  mm)^0.35, within 2-8 HU;
- age (:mod:`ACATCore.data.synth_aging`, generator version 4): atrophy widens the CSF spaces (ventricles and
  the brain's rim) by 0-7 mm; in half the heads leukoaraiosis darkens the white matter within 10 mm of the
  ventricles by 0-12 HU (fading over those 10 mm), on both sides; no lesion is placed in the added CSF;
- lesions: hypodense (ischaemic) lesions grown from a random point of ONE vascular territory's
  parenchyma (:mod:`ACATCore.data.territories`, moved with the head; no CSF) as the connected part of
  (distance + a smooth random field) below a threshold chosen to reach the volume of a ball of the
  drawn radius: irregular and following the parenchyma. Four graded sizes IS-1..IS-4 (radius 3-5,
  5-8, 8-12, 12-18 mm). Where the territory's parenchyma runs out the lesion is smaller: each lesion
  records the drawn ``radius_mm`` and its ``equivalent_radius_mm`` from its voxel count. Contrast =
  the case's noise s.d. + 2-6 HU at the core, fading at the edge, only inside the mask.
  ``left``/``right``: one lesion in a territory of that side; ``both``: one on each side.

Option ``variety: false`` gives plain heads instead (the earlier benchmark's kind: mild warp,
192 x 224 x 34 voxels of 1 x 1 x 5 mm, no holder, no cuts, no beam hardening, 2.5-4.5 HU noise).
Option ``acquisition`` fixes single factors for robustness benchmarks (``ACQUISITION``: slice_mm,
pixel_mm, tilt_deg, noise_scale, hu_offset, head_scale, vertex_cut, bottom_cut, holder, pillow,
beam_hardening, atrophy_mm, leukoaraiosis_hu and the bench-only ventricle_asym_mm, calcification_hu: these
four also age plain heads); all other factors are drawn as usual, with the same values (only the noise and
the lesion positions differ when the grid changes).
``noise_scale`` multiplies the noise but not the lesion contrast. Each case's drawn factors are in
its datalist item under ``acquisition``.

**lung** (2 classes: ``normal``, ``findings``, like MosMed CT-0 vs CT-2..4): the chest CT
``CTChest4.nrrd`` of the ``slicerio`` package (MIT) with its right/left lung segments, per case
deformed (the same kind of transform), breathing more or less deeply (lung density -50..+80 HU, denser
towards the back, patchy), +-20 HU calibration, 10-35 HU noise; positives get 1-4 patches of
ground-glass opacity (115-315 HU above the case's lungs) or consolidation (to -150..20 HU), soft-edged,
inside the lungs (:mod:`ACATCore.data.synth_lung`; ``variety: false``: the earlier plain chests).

Files, under ``out_dir``: ``images/<case>.nrrd`` (int16 HU), ``masks/<case>.nrrd`` (uint8; brain: the
territory label of each lesion voxel, lung: 1 ground-glass, 2 consolidation), ``regions/<case>.nrrd``
(uint8; brain: the six territories, see ``TERRITORIES``; lung: 1 right lung, 2 left lung), and
``datalist.json`` (MONAI style: ``training``/``validation``/``test`` split 70/15/15 stratified by label
with the same seed; each item has ``image``, ``label``, ``label_name``, ``mask``, ``regions``,
``territory`` and ``size_group`` (one per lesion joined by ``+``, e.g. ``"MCA_left+PCA_right"``;
empty for negatives; lung: ``size_group`` LS-1/2/3 by lung involvement < 5 %, 5-15 %, > 15 %),
``noise_hu``, ``lesions`` with per-lesion details and, brain, ``acquisition``, lung, ``anatomy``: the drawn
HU offset and breath).

Options (``generate(..., options={...})``, ``acat synth --size-groups/--contrast/--radius/--involvement``)
make easier or harder variants; the standard benchmark is what you get without them, and each option
only changes the cases it applies to. ``size_groups`` (brain) draws lesion sizes from chosen groups only;
``contrast_hu`` (brain) sets the extra lesion contrast (one range, or several: each lesion's from one);
``radius_mm`` (brain) sets the lesion radius (e.g. 20-35 mm: territorial infarcts, the size group then
follows the radius); ``ventricle_asym_mm`` (brain) widens one lateral ventricle more than the other in every
varied head (a common normal variant: dark on one side, not a lesion); ``variety`` (both tasks) and
``acquisition`` (brain) are described above; ``involvement`` (lung)
adds patches until a drawn fraction of the lungs is involved (MosMed grades its scans by this
fraction: CT-1 < 25 %, CT-2 25-50 %, ...). The options used are recorded in ``datalist.json``.

Classes are balanced by default (``class_fractions`` sets other proportions); positive brain cases
cycle through IS-1..IS-4 so that size groups are balanced too. Brain heads are written on an
identity (LPS) grid (a tilted head is tilted in the image); lung cases keep the chest CT's own
geometry (stored RAS-like, direction diag(-1, -1, 1)), so both orientations are exercised downstream.
See also docs/SYNTH.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import ConfigError
from ..tasks import CLASS_NAMES, TASKS
from .splits import split_counts, stratified_split
from .territories import TERRITORIES, TERRITORY_LABELS  # noqa: F401 (synth.TERRITORY_LABELS)

# Generator options (``generate(..., options=...)``, ``acat synth --size-groups/--contrast/--involvement``).
# None keeps the standard benchmark; any other value changes the cases it applies to (and only those).
DEFAULT_OPTIONS = {
    "size_groups": None,      # brain: draw every lesion's size group from these (e.g. ["IS-3", "IS-4"])
    "contrast_hu": None,      # brain: [lo, hi] extra lesion contrast in HU (standard: LESION_EXTRA_CONTRAST_HU),
                              # or a list of such ranges: each lesion's drawn from one of them, e.g.
                              # [[2, 14], [2, 14], [2, 14], [14, 30]]: a quarter of the lesions darker
    "ventricle_asym_mm": None,  # brain: [lo, hi] mm one lateral ventricle (side drawn) is wider than the other
    "radius_mm": None,        # brain: [lo, hi] lesion radius in mm instead of the size group's range
                              # (e.g. [20, 35]: territorial infarcts); size_group then follows the radius
    "involvement": None,      # lung: [lo, hi] fraction of the lungs involved in a positive case; patches
                              # are added until a target drawn from it is reached (standard: 1-4 patches)
    "variety": None,          # False gives plain heads (atlas, mild warp, 1 x 1 x 5 mm) or plain chests (the
                              # template's breath, mild warp; synth_lung); standard True
    "acquisition": None,      # brain: fix single factors, e.g. {"slice_mm": 5, "tilt_deg": 10} (ACQUISITION)
}
GENERATOR_VERSION = 4         # raised whenever the same (task, n, seed, options) would give other cases


from .synth_brain import (ACQUISITION, BRAIN_NOISE_HU, LESION_EXTRA_CONTRAST_HU,  # noqa: F401 (public names)
                          SIZE_GROUPS, SIZE_RADII_MM, brain_base, make_brain_case)
from .synth_lung import (LUNG_FINDINGS, LUNG_GROUPS, LUNG_MAX_PATCHES, LUNG_NOISE_HU,  # noqa: F401 (public names)
                         LUNG_VARIETY, lung_base, lung_size_group, make_lung_case)


def _write(array, spacing, origin, direction, path: Path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    sitk.WriteImage(image, str(path), True, 1)


def class_plan(n: int, num_classes: int, seed: int, fractions=None) -> list:
    """The label of every case: counts in proportion to ``fractions`` (default equal), seeded order."""
    fractions = np.ones(num_classes) if fractions is None else np.asarray(fractions, dtype=float)
    if len(fractions) != num_classes:
        raise ConfigError(f"{len(fractions)} class fractions for {num_classes} classes")
    labels = np.repeat(np.arange(num_classes), split_counts(n, fractions))
    return labels[np.random.default_rng([seed, 7]).permutation(n)].tolist()


# ---------------------------------------------------------------------------------- generate
def _check_acquisition(value) -> dict:
    """The ``acquisition`` option validated: known keys, numbers in range, booleans."""
    if not isinstance(value, dict):
        raise ConfigError(f"acquisition {value!r}: give a mapping like {{\"slice_mm\": 5, \"tilt_deg\": 10}}")
    out = {}
    for key, v in value.items():
        if key not in ACQUISITION:
            raise ConfigError(f"acquisition key {key!r} unknown; use {sorted(ACQUISITION)}")
        kind = ACQUISITION[key]
        if kind[0] == "bool":
            if not isinstance(v, bool):
                raise ConfigError(f"acquisition {key} {v!r}: give true or false")
            out[key] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ConfigError(f"acquisition {key} {v!r}: give a number")
        if not kind[1] <= v <= kind[2] or (key in ("slice_mm", "pixel_mm", "head_scale") and v <= 0):
            raise ConfigError(f"acquisition {key} {v}: need {kind[1]} <= {key} <= {kind[2]}")
        out[key] = float(v)
    return out


def _check_range(key: str, value, lo_min: float, hi_max: float) -> list:
    """``value`` as [lo, hi] within [lo_min, hi_max], or a ConfigError naming ``key``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} {value!r}: give two numbers [lo, hi]") from None
    if not lo_min <= lo <= hi <= hi_max:
        raise ConfigError(f"{key} [{lo}, {hi}]: need {lo_min} <= lo <= hi <= {hi_max}")
    return [lo, hi]


def check_options(task: str, options=None) -> dict:
    """The generator options (``DEFAULT_OPTIONS`` updated with ``options``), validated for ``task``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown ACAT-Synth option(s) {unknown}; use {sorted(DEFAULT_OPTIONS)}")
    full = {**DEFAULT_OPTIONS, **options}
    groups = full["size_groups"]
    if groups is not None:
        if isinstance(groups, str) or not groups or any(g not in SIZE_GROUPS for g in groups):
            raise ConfigError(f"size_groups {groups!r}: give a list of {', '.join(SIZE_GROUPS)}")
        full["size_groups"] = list(groups)
    for key, lo_min, hi_max in (("contrast_hu", 0.0, 200.0), ("radius_mm", 1.0, 60.0),
                                ("involvement", 0.0, 0.9), ("ventricle_asym_mm", 0.0, 10.0)):
        value = full[key]
        if value is None:
            continue
        if key == "contrast_hu" and isinstance(value, (list, tuple)) and value \
                and all(isinstance(v, (list, tuple)) for v in value):
            full[key] = [_check_range(key, v, lo_min, hi_max) for v in value]
        else:
            full[key] = _check_range(key, value, lo_min, hi_max)
    if full["size_groups"] is not None and full["radius_mm"] is not None:
        raise ConfigError("give size_groups or radius_mm, not both (the radius decides the size group)")
    if full["variety"] is not None and not isinstance(full["variety"], bool):
        raise ConfigError(f"variety {full['variety']!r}: give true or false")
    if full["acquisition"] is not None:
        full["acquisition"] = _check_acquisition(full["acquisition"])
    wrong_task = [k for k in (("involvement",) if task == "brain" else
                              ("size_groups", "contrast_hu", "radius_mm", "acquisition", "ventricle_asym_mm"))
                  if full[k] is not None]
    if wrong_task:
        raise ConfigError(f"ACAT-Synth option(s) {wrong_task} do not apply to the {task} task")
    return full


def make_case(task: str, seed: int, index: int, label: int, size_group=None, return_clean=False,
              options=None) -> dict:
    """Case ``index`` of a benchmark: deterministic in (task, seed, index, label, size_group, options)."""
    options = check_options(task, options)
    rng = np.random.default_rng([seed, index, TASKS.index(task)])
    if task == "brain":
        groups = options["size_groups"] or SIZE_GROUPS
        extra = groups[rng.integers(len(groups))]
        return make_brain_case(rng, label, (size_group, extra), return_clean, options["contrast_hu"],
                               options["radius_mm"], options["variety"] is not False, options["acquisition"],
                               options["ventricle_asym_mm"])
    return make_lung_case(rng, label, return_clean, options["involvement"], options["variety"] is not False)


def _write_case(task, seed, index, label, group, options, out: Path) -> dict:
    """Make case ``index`` and write its image, mask and regions; its datalist item."""
    case = make_case(task, seed, index, label, group, options=options)
    name = f"{task}_{index:05d}"
    paths = {key: f"{key}/{name}.nrrd" for key in ("images", "masks", "regions")}
    for key, array_key in (("images", "image"), ("masks", "mask"), ("regions", "regions")):
        _write(case[array_key], case["spacing"], case["origin"], case["direction"], out / paths[key])
    item = {"case": name, "image": paths["images"], "label": int(label), "label_name": CLASS_NAMES[task][label],
            "mask": paths["masks"], "regions": paths["regions"], "noise_hu": round(case["noise_hu"], 2),
            "lesions": case["lesions"]}
    if task == "brain":
        item["territory"] = "+".join(les["territory"] for les in case["lesions"])
        item["size_group"] = "+".join(les["size_group"] for les in case["lesions"])
        item["acquisition"] = case["acquisition"]
    else:
        item["involvement"] = round(case["involvement"], 4)
        item["size_group"] = lung_size_group(case["involvement"]) if label else ""
        item["territory"] = ""
        item["anatomy"] = case["anatomy"]
    return item


def _written_cases(jobs: list, workers: int):
    """The datalist items of ``_write_case(*job)`` for every job, in order: in this process, or in
    ``workers`` processes of one thread each."""
    if workers <= 1:
        yield from (_write_case(*job) for job in jobs)
        return
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(_write_case, *zip(*jobs))


def generate(task: str = "brain", n: int = 10, seed: int = 0, out_dir=".", class_fractions=None,
             progress=None, options=None, workers: int = 1) -> dict:
    """Write ``n`` cases of ``task`` into ``out_dir`` and return the datalist (also in datalist.json).

    ``options`` (see ``DEFAULT_OPTIONS``) makes an easier or harder variant of the benchmark; they are
    recorded in the datalist. ``workers`` > 1 makes the cases in that many processes: every case
    depends only on (task, seed, index, label, size group, options), so the files are the same.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} unknown; use 'brain' or 'lung'")
    if int(n) < 1:
        raise ConfigError(f"n = {n}: give at least one case")
    if int(workers) < 1:
        raise ConfigError(f"workers = {workers}: give at least 1")
    options = check_options(task, options)
    n, seed = int(n), int(seed)
    out = Path(out_dir)
    for sub in ("images", "masks", "regions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    class_names = CLASS_NAMES[task]
    labels = class_plan(n, len(class_names), seed, class_fractions)
    groups = options["size_groups"] or SIZE_GROUPS
    positives = np.cumsum([label > 0 for label in labels]) - 1
    jobs = [(task, seed, index, label, groups[positives[index] % len(groups)]
             if task == "brain" and label > 0 else None, options, out) for index, label in enumerate(labels)]
    items = []
    for item in _written_cases(jobs, int(workers)):
        items.append(item)
        if progress is not None:
            progress(len(items), n)
    datalist = {
        "name": f"ACAT-Synth {task}", "task": task, "seed": seed, "n": n, "version": GENERATOR_VERSION,
        "description": "synthetic lesions on real CT anatomy (ACATCore.data.synth)",
        "options": {k: v for k, v in options.items() if v is not None},
        "class_names": list(class_names),
        "region_names": list(TERRITORIES) if task == "brain" else ["right lung", "left lung"],
        "label_counts": {name: labels.count(i) for i, name in enumerate(class_names)},
        **stratified_split(items, seed=seed),
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return datalist


def parse_acquisition(items) -> dict:
    """``["slice_mm=5", "holder=true"]`` -> ``{"slice_mm": 5, "holder": True}`` (values read as JSON)."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"acquisition {item!r}: give KEY=VALUE, e.g. slice_mm=5")
        try:
            out[key.strip()] = json.loads(value.strip().lower() if value.strip().lower() in ("true", "false")
                                          else value)
        except json.JSONDecodeError:
            raise ConfigError(f"acquisition {item!r}: the value must be a number, true or false") from None
    return _check_acquisition(out)


def main(argv=None) -> int:
    """``acat synth --task brain|lung --n N --seed S --out DIR [options]``."""
    parser = argparse.ArgumentParser(prog="acat synth", description="Generate the ACAT-Synth benchmark.")
    parser.add_argument("--task", choices=TASKS, default="brain")
    parser.add_argument("--n", type=int, default=100, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--workers", type=int, default=1, help="processes making cases (same files)")
    parser.add_argument("--size-groups", nargs="+", metavar="IS-k",
                        help="brain: draw lesion sizes from these groups only (e.g. IS-3 IS-4)")
    parser.add_argument("--contrast", nargs=2, type=float, metavar=("LO", "HI"),
                        help="brain: extra lesion contrast in HU (standard "
                             f"{LESION_EXTRA_CONTRAST_HU[0]:g} {LESION_EXTRA_CONTRAST_HU[1]:g})")
    parser.add_argument("--radius", nargs=2, type=float, metavar=("LO", "HI"),
                        help="brain: lesion radius in mm instead of the size groups' (e.g. 20 35)")
    parser.add_argument("--involvement", nargs=2, type=float, metavar=("LO", "HI"),
                        help="lung: fraction of the lungs involved in positive cases (e.g. 0.1 0.3)")
    parser.add_argument("--no-variety", action="store_true",
                        help="plain heads (atlas with a mild warp, 1 x 1 x 5 mm) or plain chests (the template's "
                             "breath, a mild warp) instead of varied ones")
    parser.add_argument("--acquisition", nargs="+", metavar="KEY=VALUE",
                        help="brain: fix single factors, e.g. slice_mm=5 tilt_deg=10 holder=true "
                             f"(keys: {', '.join(ACQUISITION)})")
    args = parser.parse_args(argv)
    options = {"size_groups": args.size_groups, "contrast_hu": args.contrast,
               "radius_mm": args.radius, "involvement": args.involvement,
               "variety": False if args.no_variety else None}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        if args.acquisition:
            options["acquisition"] = parse_acquisition(args.acquisition)
        check_options(args.task, options)
    except ConfigError as exc:
        parser.error(str(exc))
    start = time.perf_counter()

    def progress(done, total):
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} cases", end="", file=sys.stderr, flush=True)

    datalist = generate(args.task, args.n, args.seed, args.out, progress=progress, options=options,
                        workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"\nwrote {args.n} {args.task} cases ({datalist['label_counts']}) to {args.out} "
          f"in {seconds:.1f} s; datalist: {Path(args.out) / 'datalist.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
