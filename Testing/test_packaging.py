"""pyproject.toml against the code: every import declared, the engine importing only its dependencies
at module level, optional parts failing with the extra to install, and the constraints files in step."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from ACATCore.errors import ACATError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SCANNED = ("ACATCore", "ACATSlicer", "training", "Testing", "bench")
# modules of the running 3D Slicer (ACATSlicer only; vtk in tests comes with slicer-core)
FROM_SLICER = {"slicer", "qt", "ctk", "vtk", "SampleData", "PyTorchUtils", "packaging"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _bounds(requirement: str) -> tuple:
    lower = re.search(r">=\s*([\w.]+)", requirement)
    return (lower.group(1) if lower else None), re.search(r"<\s*[\w.]+", requirement) is not None


DEPENDENCIES = {_name(r): r for r in PYPROJECT["dependencies"]}
EXTRAS = {extra: {_name(r): r for r in reqs} for extra, reqs in PYPROJECT["optional-dependencies"].items()}
DECLARED = {**DEPENDENCIES, **{n: r for reqs in EXTRAS.values() for n, r in reqs.items() if n != "acatcore"}}


def _local_modules() -> set:
    names = set(SCANNED)
    for folder in SCANNED:
        names |= {p.stem for p in (ROOT / folder).rglob("*.py")} | {p.name for p in (ROOT / folder).rglob("*")
                                                                    if p.is_dir()}
    return names


def _imports(folder: str):
    """(file, top-level module, at module level?) of every absolute import under ``folder``."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield path.relative_to(ROOT), name.split(".")[0], id(node) not in nested


@functools.cache
def _distributions() -> dict:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str | None:
    names = _distributions().get(module)
    return names[0].lower().replace("_", "-") if names else None


def test_every_import_is_declared():
    local, undeclared = _local_modules(), []
    for folder in SCANNED:
        for path, module, _ in _imports(folder):
            if module in sys.stdlib_module_names or module in local or module in FROM_SLICER:
                continue
            dist = _distribution(module)
            if dist is None or dist not in DECLARED:
                undeclared.append(f"{path}: {module} ({dist or 'not installed'})")
    assert not undeclared, "imports missing from pyproject.toml:\n" + "\n".join(sorted(set(undeclared)))


def test_the_engine_imports_only_its_dependencies_at_module_level():
    """Optional packages (the extras) are imported inside the functions that need them."""
    local, eager = _local_modules(), []
    for path, module, top in _imports("ACATCore"):
        if top and module not in sys.stdlib_module_names and module not in local:
            if _distribution(module) not in DEPENDENCIES:
                eager.append(f"{path}: {module}")
    assert not eager, f"module-level imports of optional packages: {eager}"


def test_every_requirement_has_lower_and_upper_bounds():
    loose = [r for r in DECLARED.values() if _bounds(r)[0] is None or not _bounds(r)[1]]
    assert not loose, f"requirements without both bounds: {loose}"


def _pins(name: str) -> dict:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            pins[_name(package)] = version.strip()
    return pins


def test_constraints_pin_every_requirement_and_the_minimum_file_holds_the_lower_bounds():
    exact, minimum = _pins("constraints.txt"), _pins("constraints-min.txt")
    assert set(DECLARED) <= set(exact), f"not pinned in constraints.txt: {set(DECLARED) - set(exact)}"
    assert set(minimum) == set(DECLARED), f"constraints-min.txt differs: {set(minimum) ^ set(DECLARED)}"
    for name, requirement in DECLARED.items():
        lower, _ = _bounds(requirement)
        assert minimum[name] == lower or minimum[name].startswith(lower + "."), (name, minimum[name], lower)


def test_a_missing_extra_names_itself(monkeypatch):
    from ACATCore.models import build_model
    from ACATCore.report import load_matplotlib, validate_json
    for module in ("matplotlib", "einops", "jsonschema"):
        monkeypatch.setitem(sys.modules, module, None)          # import now raises ImportError
    with pytest.raises(ACATError, match=r"ACATCore\[report\]"):
        load_matplotlib()
    with pytest.raises(ACATError, match=r"ACATCore\[report\]"):
        validate_json({})
    with pytest.raises(ConfigError, match=r"ACATCore\[vit\]"):
        build_model("vit")


def test_cli_without_the_report_extra_refuses_before_the_analysis(monkeypatch, tmp_path, capsys):
    from ACATCore.cli import main
    from pipeline_helpers import chest_ct_path
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["analyze", str(chest_ct_path()), "--model", "lung", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "ACATCore[report]" in err and "--no-report" in err
    assert not (tmp_path / "out").exists()
