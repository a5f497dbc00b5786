"""The ``acat`` command.

    acat analyze INPUT --model lung|brain|BUNDLE_DIR --out DIR [--format nrrd|nifti]
                 [--coverage full|sampled] [--solver fista|gd] [--steps 7] [--alpha 100]
                 [--early-stop P] [--device auto] [--no-report] [--overwrite] [--json] [--quiet]
    acat info MODEL [--json]
    acat synth ...            (the ACAT-Synth generator: ``acat synth --help``)

INPUT is a CT file (NRRD, NIfTI, MHA), a DICOM series folder, or, for a batch, a folder of CT files
and/or DICOM sub-folders, or a datalist (``.json`` or ``.csv``, read by :mod:`ACATCore.data.datalists`).
A batch writes ``DIR/<case>/`` per case and ``DIR/summary.csv``.

Exit codes: 0 done; 2 a problem the user can fix (bad input, bad model file, output folder exists
without --overwrite or overlapping the input, bad option; in a batch: any case failed); 130
interrupted (Ctrl-C), 143 terminated (SIGTERM). Errors are one line on stderr (``acat: error: ...``),
warnings ``warning: ...`` lines (also in result.json); the chatter of ITK/GDCM/MetaIO is captured,
never shown; nothing half-written is left behind and the input is never touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from .analysis_maps import SHOWN_SMOOTHING, check_smoothing
from .counterfactual_options import FAST_SEARCH, FAST_STEPS, PAPER_SEARCH, PAPER_STEPS
from .errors import ACATError, ConfigError, InputError, ModelFileError
from .file_checks import DICOM_SUFFIXES, FILE_SUFFIXES, display_path
from .result import SAME_AS_BASELINE_NOTE



def _probability_or_none(text: str):
    """--early-stop value: a probability in (0, 1], or 'none' for the paper's fixed steps."""
    if text.strip().lower() in ("none", "off", "never"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1] or 'none', not {text!r}")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1] or 'none', not {text!r}")
    return value

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 130, 143


class _Parser(argparse.ArgumentParser):
    """argparse with ACAT's error format: one ``acat: error: ...`` line and exit code 2."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"acat: error: {' '.join(str(message).split())} (see: {self.prog} --help)\n")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="acat", description="ACAT: counterfactual saliency and attention "
                                     "for head and chest CT (research software, not for diagnosis).")
    parser.add_argument("--version", action="version", version=f"acat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("analyze", help="analyse a CT volume, a DICOM folder, or a batch",
                       description="Analyse CT with an ACAT model: probabilities, saliency, attention "
                       "masks, counterfactuals, slice weights, and a visual report.")
    a.add_argument("input", help="CT file, DICOM folder, folder of cases, or datalist (.json/.csv)")
    a.add_argument("--model", "-m", default=None, help="shipped model name (brain, lung) or bundle folder "
                   "(required)")
    a.add_argument("--out", "-o", required=True, help="output folder (must not exist, or use --overwrite)")
    a.add_argument("--format", choices=("nrrd", "nifti"), default="nrrd", help="map file format (default nrrd)")
    a.add_argument("--coverage", choices=("full", "sampled"), default="full",
                   help="full: the model sees every slice (several samplings, default; one for a bundle "
                   "whose slices are thick slabs); sampled: the paper's single sampling of S slices")
    a.add_argument("--steps", type=int, default=None,
                   help=f"counterfactual steps (default {FAST_STEPS} with --solver fista, {PAPER_STEPS} with gd)")
    a.add_argument("--alpha", type=float, default=100.0, help="counterfactual L1 weight (default 100)")
    a.add_argument("--early-stop", type=_probability_or_none, default=None, metavar="P",
                   help="stop a counterfactual once its target probability reaches P (default none: "
                   "every counterfactual runs all its steps)")
    a.add_argument("--solver", choices=("fista", "gd"), default="fista",
                   help=f"counterfactual search: fista (momentum, adaptive steps, default: in {FAST_STEPS} steps "
                   f"the value of the paper's {PAPER_STEPS}) or gd (the paper's plain gradient descent)")
    a.add_argument("--smoothing", type=float, default=SHOWN_SMOOTHING, metavar="PX",
                   help=f"in-plane Gaussian sigma, model-grid pixels, of the saliency map written and searched "
                   f"for its peak (default {SHOWN_SMOOTHING:g}; 0: the paper's unsmoothed map)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    a.add_argument("--batch", action="store_true", help="treat INPUT as a batch even if it looks like one case")
    a.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    a.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    a.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print a model card", description="Print the model card of a shipped "
                       "model, a bundle folder or a model file, and check the weights' SHA-256.")
    i.add_argument("model", help="brain, lung, a bundle folder, or a .safetensors/.json model file")
    i.add_argument("--json", action="store_true", help="print the card(s) as JSON")

    sub.add_parser("synth", help="generate the ACAT-Synth benchmark (see: acat synth --help)",
                   add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        return _synth(argv[1:])
    parser = build_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        print("acat: error: a command is needed: analyze, info or synth (see: acat --help)", file=sys.stderr)
        return EXIT_ERROR
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("acat: error: a command is needed: analyze, info or synth (see: acat --help)", file=sys.stderr)
        return EXIT_ERROR
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    logger = logging.getLogger("ACATCore")
    quiet = logging.NullHandler()          # our warnings are printed once, as "warning: ..." lines
    logger.addHandler(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _run(args)
    finally:
        logger.removeHandler(quiet)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "info":
            return _info(args)
    except _Terminated:
        print("acat: terminated; nothing was written", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("acat: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                      # `acat info lung | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ACATError as exc:
        from .pipeline import Cancelled
        if isinstance(exc, Cancelled):
            print(f"acat: {exc}; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"acat: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print("acat: error: not enough memory for this analysis; try --coverage sampled or a smaller volume",
              file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:                       # disk full, permissions changed meanwhile, ...
        where = f" ({display_path(exc.filename)})" if getattr(exc, "filename", None) else ""
        print(f"acat: error: {exc.strerror or _one_line(exc)}{where}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR


def _one_line(exc) -> str:
    return display_path(" ".join(str(exc).split()) or type(exc).__name__)


# ------------------------------------------------------------------------------------ analyze
class _Bar:
    """A tqdm progress bar driven by ``(stage, fraction)`` callbacks."""

    def __init__(self, quiet: bool):
        self.bar = None
        try:
            interactive = sys.stderr.isatty()
        except (AttributeError, ValueError):
            interactive = False
        if not quiet and interactive:          # a bar in a log file is noise
            from tqdm import tqdm
            self.bar = tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True,
                            bar_format="{desc:<34.34}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def __call__(self, stage: str, fraction: float):
        if self.bar is None:
            return
        self.bar.set_description_str(stage, refresh=False)
        self.bar.update(max(0, int(fraction * 1000) - self.bar.n))

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _check_device(device: str) -> None:
    """--device: auto, cpu, cuda or cuda:N (a GPU that is there), checked before any work."""
    import re
    text = str(device).strip().lower()
    if text in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d{1,3})?", text):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                          "use cuda:0 .. or --device cpu")


def _analyze(args) -> int:
    from .outputs import check_output_folder
    if args.model is None or not str(args.model).strip():
        raise ConfigError("--model is required: a shipped model name (brain, lung) or a bundle folder")
    if args.steps is None:
        args.steps = FAST_STEPS if args.solver == "fista" else PAPER_STEPS
    if args.steps < 0 or args.steps > 10000:
        raise ConfigError(f"--steps must be 0..10000, not {args.steps}")
    if not 0 <= args.alpha <= 1e9:
        raise ConfigError(f"--alpha must be a number in 0..1e9, not {args.alpha}")
    _check_device(args.device)
    source = Path(args.input)
    try:
        exists = source.exists()
    except (OSError, ValueError):
        exists = False
    if not exists:
        raise InputError(f"input {display_path(source)} does not exist; give a CT file, a DICOM folder, a folder of "
                         "cases or a datalist")
    if not source.is_file() and not source.is_dir():
        raise InputError(f"input {display_path(source)} is not a regular file or folder (a device, pipe or socket); "
                         "give a CT file, a DICOM folder, a folder of cases or a datalist")
    out = Path(args.out)
    if not str(args.out).strip():
        raise ConfigError("--out is empty; give an output folder")
    check_output_inputs(out, [source])
    cases = batch_inputs(source, force=args.batch)
    if cases:
        check_output_inputs(out, cases)
    check_output_folder(out, args.overwrite)      # before any work: nothing is touched on refusal
    if not args.no_report:
        from .report import load_matplotlib
        load_matplotlib()                         # the report extra missing: say so before the analysis
    options = dict(model=args.model, coverage=args.coverage, steps=args.steps, alpha=args.alpha,
                   device=args.device, early_stop=args.early_stop, out_format=args.format,
                   report=not args.no_report, overwrite=args.overwrite, smoothing=check_smoothing(args.smoothing),
                   counterfactual_options=FAST_SEARCH if args.solver == "fista" else PAPER_SEARCH)
    if cases is None:
        return _analyze_one(source, out, args, options)
    return _analyze_batch(cases, out, args, options)


def check_output_inputs(out: Path, inputs) -> None:
    """Refuse an output folder that is, contains or lies inside any input (see
    :func:`ACATCore.outputs.check_output_overlap`)."""
    from .outputs import check_output_overlap
    check_output_overlap(out, inputs)


def _analyze_one(source: Path, out: Path, args, options) -> int:
    from .pipeline import analyze
    bar = _Bar(args.quiet)
    try:
        result = analyze(source, out=out, progress=bar, **options)
    finally:
        bar.close()
    for w in result.warnings:
        print(f"warning: {_one_line(w)}", file=sys.stderr)
    doc = json.loads((out / "result.json").read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps({**doc, "output": display_path(out)}, indent=2))
    else:
        _print_result(result, out)
    return EXIT_OK


def _print_result(result, out: Path):
    print(f"{result.predicted_class}: {result.probabilities[result.predicted_index]:.1%}   "
          + "  ".join(f"p({n})={p:.3f}" for n, p in zip(result.class_names, result.probabilities)))
    if result.same_as_baseline:
        print(SAME_AS_BASELINE_NOTE)
    if result.peak_lps is not None:
        where = ", ".join(f"{v:.1f}" for v in result.peak_lps)
        terr = f", territory {result.peak_territory}" if result.peak_territory else ""
        print(f"saliency peak at LPS ({where}) mm{terr}")
    spec = result.model_card.get("preprocessing", {})
    organ = " (those holding the brain)" if spec.get("brain_extraction") else \
        " (those holding the lungs)" if spec.get("lung_box") else ""
    print(f"model saw {len(result.slices_seen)} of {len(result.slice_weights)} slices{organ}")
    report = out / "report" / "index.html"
    print(f"outputs: {display_path(out)}" + (f"\nreport:  {display_path(report)}" if report.exists() else ""))


RESERVED_NAMES = ("summary.csv",)


def case_names(cases) -> list:
    """One output folder name per case: the file name without its CT suffix, made safe (letters,
    digits, ``-_.``), unique even on a case-insensitive file system (``a``, ``a_1``, ``a_2`` ...,
    never one that another case has as its own name) and never ``summary.csv``."""
    from .batch import _case_name
    bases = []
    for i, c in enumerate(cases):
        name, _ = _case_name(c, i)
        safe = "".join(ch if (ch.isalnum() and ch.isascii() or ch in "-_.") else "_" for ch in name).strip(".")
        bases.append(safe[:100] or f"case{i:03d}")
    natural = {b.lower() for b in bases}        # names cases have as their own
    taken, names = set(), []
    for base in bases:
        name, n = base, 0
        while name.lower() in taken or name.lower() in RESERVED_NAMES or \
                (name != base and name.lower() in natural):
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        names.append(name)
    return names


def _analyze_batch(cases, out: Path, args, options) -> int:
    from .batch import analyze_batch
    from .outputs import AtomicFolder
    from .report import write_summary_csv
    if not cases:
        raise InputError(f"no CT files, DICOM folders or datalist entries found in {display_path(args.input)}")
    # The whole batch folder is written beside ``out`` and moved into place at the end (all or
    # nothing, like a single case); cases that fail are listed in summary.csv and on stderr.
    overwrite = options.pop("overwrite")
    bar = _Bar(args.quiet)
    rows = []
    named = list(zip(case_names(cases), cases))
    with AtomicFolder(out, overwrite) as tmp:
        try:
            items = analyze_batch(named, out=tmp, progress=bar, on_error="skip", **options)
        finally:
            bar.close()
        for item in items:
            row = {"case": item.name, "input": display_path(item.input),
                   "status": "ok" if item.error is None else "error",
                   "error": _one_line(item.error) if item.error else "", "seconds": round(item.seconds, 2),
                   **item.summary, "output": "" if item.error else display_path(out / item.name)}
            rows.append(row)
            if item.error:
                print(f"acat: error: {item.name}: {_one_line(item.error)}", file=sys.stderr)
            else:
                try:
                    doc = json.loads((tmp / item.name / "result.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    doc = {}
                for w in doc.get("warnings", []):
                    print(f"warning: {item.name}: {_one_line(w)}", file=sys.stderr)
        write_summary_csv(rows, tmp / "summary.csv")
    failed = sum(r["status"] != "ok" for r in rows)
    if args.json:
        print(json.dumps({"output": display_path(out), "cases": rows}, indent=2))
    else:
        print(f"{len(rows) - failed} of {len(rows)} cases analysed; summary: {display_path(out / 'summary.csv')}")
    return EXIT_OK if failed == 0 else EXIT_ERROR


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(FILE_SUFFIXES)


def batch_inputs(source: Path, force: bool = False):
    """The cases of a batch as a list of paths, or None when ``source`` is one case.

    One case: a CT file, or a folder holding DICOM files directly (a series). A batch: a datalist
    (``.json``/``.csv``), or a folder of CT files and/or DICOM sub-folders."""
    if source.is_file() and source.name.lower().endswith((".json", ".csv")):
        from .data.datalists import image_paths
        return image_paths(source)
    if source.is_file():
        return [source] if force else None
    entries = sorted(source.iterdir())
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if not force and any(_is_dicom_file(p) for p in files):
        return None
    cases = [p for p in files if _is_volume_file(p)]
    for d in entries:
        if d.is_dir() and not d.name.startswith(".") and any(_is_dicom_file(p) for p in d.iterdir() if p.is_file()):
            cases.append(d)
    if not cases and not force and not files:
        raise InputError(f"{display_path(source)} is an empty folder; give a CT file, a DICOM folder or a "
                         "folder of cases")
    if not cases and not force:
        raise InputError(f"{display_path(source)} holds no DICOM images, CT files or DICOM sub-folders")
    return cases


# ------------------------------------------------------------------------------------ info
def _info(args) -> int:
    from .checkpoint import BUNDLE_FILES, verify_model_file
    target = Path(args.model)
    if not str(args.model).strip():
        raise ConfigError("give a model: brain, lung, a bundle folder or a .safetensors/.json model file")
    if target.is_file() or target.suffix in (".safetensors", ".json"):
        files = [target]
    else:
        folder = _bundle_folder(args.model)
        files = [folder / f"{part}.safetensors" for part in BUNDLE_FILES]
    cards = {}
    for f in files:
        weights = f.with_suffix(".safetensors")
        if not weights.is_file():
            raise ModelFileError(f"model file {display_path(weights)} not found")
        cards[weights.stem] = verify_model_file(weights)      # card, both checksums, shapes, finite weights
    if args.json:
        print(json.dumps(cards if len(cards) > 1 else next(iter(cards.values())), indent=2))
        return EXIT_OK
    for name, card in cards.items():
        print(_format_card(name, card))
    return EXIT_OK


def _bundle_folder(model: str) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or os.sep in str(model):
        raise ModelFileError(f"model bundle folder {display_path(path)} not found (not a folder)")
    from .resources import resources_dir
    folder = resources_dir() / "models" / model
    if not folder.is_dir():
        root = resources_dir() / "models"
        known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        raise ModelFileError(f"no model bundle {model!r} (shipped: {', '.join(known) or 'none'}); "
                             "give a bundle folder")
    return folder


def _format_card(name: str, card: dict) -> str:
    pre = card.get("preprocessing") or {}
    lines = [f"{name}: {card.get('model_name')} (task {card.get('task')})",
             f"  classes:       {', '.join(map(str, card.get('class_names') or []))}",
             f"  preprocessing: window {pre.get('window')} HU, {pre.get('slices')} slices, size {pre.get('size')}, "
             f"{pre.get('orientation')}, midline {pre.get('midline')}",
             f"  config:        {json.dumps(card.get('model_config'), sort_keys=True)}",
             f"  data:          {json.dumps(card.get('data'), sort_keys=True)}",
             f"  metrics:       {json.dumps(card.get('metrics'), sort_keys=True)}",
             f"  sha256:        {card.get('sha256')} (verified)",
             f"  created:       {card.get('created')} by ACAT {card.get('acat_version')}",
             f"  intended use:  {card.get('intended_use')}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ synth
def _synth(argv) -> int:
    try:
        from .data import synth
    except ImportError:
        synth = None
    if synth is None or not hasattr(synth, "main"):
        print("acat: error: the ACAT-Synth generator (ACATCore.data.synth) is not available in this "
              "installation", file=sys.stderr)
        return EXIT_ERROR
    try:
        code = synth.main(list(argv))
    except ACATError as exc:
        print(f"acat: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("acat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
