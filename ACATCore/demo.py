"""``make demo``: analyse real CT shipped with ACAT's dependencies with the shipped models.

- chest: ``CTChest4.nrrd`` of the ``slicerio`` package (a real chest CT, MIT) with the lung model;
- head: ``Resources/data/ACATSampleHeadCT.nrrd``, an ACAT-Synth head CT (the shipped CT brain atlas,
  deformed, with skull, scalp, head holder, 5 mm slices, noise and a territorial infarct in the left
  MCA territory; ``training/make_sample_head.py`` made it and checked that the brain bundle finds it)
  with the brain model. The Slicer module offers the same file as its sample data.

Each runs ``acat analyze INPUT --model NAME --out acat-demo-output/NAME --overwrite``; the demo then
prints where the outputs and the reports are. A model bundle that is not shipped (yet) is reported
and skipped.

    python -m ACATCore.demo [--out acat-demo-output] [--coverage full|sampled] [--device auto]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BUNDLE_FILES = ("classifier.safetensors", "autoencoder.safetensors", "acat.safetensors")


def bundle_status(name: str):
    """(folder, None) when the shipped bundle ``name`` is complete, else (folder, reason)."""
    from .resources import resources_dir
    folder = resources_dir() / "models" / name
    if not folder.is_dir():
        return folder, f"no shipped {name} model: {folder} does not exist"
    missing = [f for f in BUNDLE_FILES if not (folder / f).is_file()]
    missing += [f.replace(".safetensors", ".json") for f in BUNDLE_FILES
                if not (folder / f.replace(".safetensors", ".json")).is_file()]
    if missing:
        return folder, f"the shipped {name} model in {folder} is incomplete (missing {', '.join(missing)})"
    return folder, None


def chest_ct() -> Path:
    import slicerio
    path = Path(os.path.dirname(slicerio.__file__)) / "data" / "CTChest4.nrrd"
    if not path.is_file():
        raise FileNotFoundError(f"slicerio's chest CT is missing ({path}); reinstall slicerio")
    return path


def head_ct() -> Path:
    """The shipped sample head CT (see Resources/data/NOTICE for how it was made)."""
    from .resources import resource_path
    path = resource_path("data", "ACATSampleHeadCT.nrrd")
    print(f"head case: ACAT-Synth head with a territorial infarct in MCA_left -> {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ACATCore.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="acat-demo-output", help="output folder (default acat-demo-output)")
    parser.add_argument("--coverage", choices=("full", "sampled"), default="full")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    from .cli import main as acat

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped = [], []
    for name in ("lung", "brain"):
        folder, reason = bundle_status(name)
        if reason:
            skipped.append(f"{name}: {reason}. The demo weights are made by training/ (see README); "
                           f"once Resources/models/{name} holds them, run `make demo` again.")
            print(f"[{name}] skipped: {reason}", file=sys.stderr)
            continue
        source = chest_ct() if name == "lung" else head_ct()
        target = out / name
        argv_ = ["analyze", str(source), "--model", name, "--out", str(target), "--overwrite",
                 "--coverage", args.coverage, "--device", args.device]
        print(f"\n[{name}] acat {' '.join(argv_)}")
        start = time.perf_counter()
        code = acat(argv_)
        if code != 0:
            print(f"[{name}] failed with exit code {code}", file=sys.stderr)
            return code
        done.append((name, target, time.perf_counter() - start))

    print("\nACAT demo")
    for name, target, seconds in done:
        print(f"  {name:5s} outputs: {target}   report: {target / 'report' / 'index.html'}   ({seconds:.1f} s)")
    for line in skipped:
        print(f"  {line}")
    if not done:
        print("  Nothing was analysed: no shipped model bundle was found.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
