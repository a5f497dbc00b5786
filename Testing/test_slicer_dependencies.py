"""ACATLib.dependencies: what is missing, and how it is installed with the running Slicer's API.

Slicer's installers cannot run here, so ``slicer`` is a stand-in module recording the calls, with the
names and arguments of Slicer's own API (``slicer.packaging.pip_ensure(requirements, prompt_install=,
requester=)`` and ``load_requirements`` from Slicer >= 5.12; ``slicer.util.pip_install`` and
``confirmOkCancelDisplay`` before; ``PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=,
torchVersionRequirement=)``). What the real slicer-core offers is checked against it too.
"""
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ACATSlicer"))

from ACATLib import dependencies  # noqa: E402
from ACATLib.dependencies import DependenciesMissing  # noqa: E402

SLICER_SHIPS = {"numpy", "scipy", "simpleitk", "pydicom", "vtk", "packaging", "pillow", "requests"}
NOT_AT_RUN_TIME = {"pytest", "captum", "matplotlib", "slicerio", "tqdm", "einops", "jsonschema", "tensorboard"}


def stand_in_slicer(testing=False, confirm=True, with_packaging=True, declines=False):
    calls = []
    slicer = types.ModuleType("acat_stand_in_slicer")
    slicer.app = types.SimpleNamespace(testingEnabled=lambda: testing)
    slicer.util = types.SimpleNamespace(
        confirmOkCancelDisplay=lambda text, *a, **k: calls.append(("confirm", text)) or confirm,
        pip_install=lambda reqs, **k: calls.append(("pip_install", reqs)))
    if with_packaging:
        def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True,
                       prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
            calls.append(("pip_ensure", [str(r) for r in requirements], prompt_install, requester))
            if declines:
                raise RuntimeError("User declined package installation")
        slicer.packaging = types.SimpleNamespace(
            pip_ensure=pip_ensure, load_requirements=lambda path: dependencies.read_requirements(path))
    return slicer, calls


@pytest.fixture()
def missing_monai(monkeypatch, tmp_path):
    """The requirements file asks for a package that is not installed (until an installer runs)."""
    req = tmp_path / "requirements.txt"
    req.write_text("no-such-package-acat-test>=1\nsafetensors>=0.4\n")
    monkeypatch.setattr(dependencies, "REQUIREMENTS", req)
    return req


def test_requirements_parsing_and_versions(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy>=1.0  # inline\n\n--index-url x\nno-such-package-acat-test>=1\n"
                   "numpy<1.0\n")
    assert dependencies.read_requirements(req) == ["numpy>=1.0", "no-such-package-acat-test>=1", "numpy<1.0"]
    assert dependencies.missing_requirements(dependencies.read_requirements(req)) == \
        ["no-such-package-acat-test>=1", "numpy<1.0"]          # an installed but too old package is missing
    assert dependencies.requirement_name("SimpleITK>=2.3") == "SimpleITK"
    assert dependencies.is_satisfied("torch>=2.1") and not dependencies.is_satisfied("torch>=999")


def test_module_requirements_list_only_what_slicer_lacks():
    names = {dependencies.requirement_name(r).lower() for r in dependencies.read_requirements()}
    assert not names & SLICER_SHIPS, f"Slicer ships {names & SLICER_SHIPS}"
    assert not names & NOT_AT_RUN_TIME, f"not needed at run time: {names & NOT_AT_RUN_TIME}"
    assert "torch" not in names                      # from the PyTorch extension, version-checked apart
    assert {"monai", "safetensors", "psutil"} <= names
    assert dependencies.missing_all() == []          # this test environment has them all


def test_module_requirements_have_pyproject_bounds():
    """pyproject.toml is the one place of the version bounds; the module (no pyproject in a Slicer
    extension) repeats them for torch and the requirements file."""
    import tomllib
    from packaging.requirements import Requirement
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower(): Requirement(r).specifier
                for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    for requirement in dependencies.read_requirements() + [dependencies.TORCH_REQUIREMENT]:
        req = Requirement(requirement)
        assert req.specifier == declared[req.name.lower()], f"{requirement} differs from pyproject.toml"


def test_testing_mode_never_installs(missing_monai):
    slicer, calls = stand_in_slicer(testing=True)
    with pytest.raises(DependenciesMissing, match="Testing mode") as info:
        dependencies.ensure(slicer, ask=False)
    assert "no-such-package-acat-test" in str(info.value)
    assert calls == []


def test_recent_slicer_uses_pip_ensure(missing_monai, monkeypatch):
    slicer, calls = stand_in_slicer(with_packaging=True)
    installed = []
    monkeypatch.setattr(dependencies, "missing_all", lambda: [] if installed else ["no-such-package-acat-test>=1"])
    slicer.packaging.pip_ensure, original = None, slicer.packaging.pip_ensure
    slicer.packaging.pip_ensure = lambda *a, **k: (original(*a, **k), installed.append(1))
    dependencies.ensure(slicer, ask=True)
    assert calls == [("pip_ensure", ["no-such-package-acat-test>=1", "safetensors>=0.4"], True, "ACAT")]


def test_declining_says_what_to_do(missing_monai):
    slicer, calls = stand_in_slicer(with_packaging=True, declines=True)
    with pytest.raises(DependenciesMissing) as info:
        dependencies.ensure(slicer, ask=True)
    message = str(info.value)
    assert "slicer.util.pip_install(['no-such-package-acat-test>=1'])" in message
    assert "Nothing was installed" in message and "failed" not in message.lower()


def test_older_slicer_asks_then_uses_pip_install(missing_monai, monkeypatch):
    slicer, calls = stand_in_slicer(with_packaging=False, confirm=False)
    with pytest.raises(DependenciesMissing, match="press Apply"):
        dependencies.ensure(slicer, ask=True)
    assert [c[0] for c in calls] == ["confirm"]
    slicer, calls = stand_in_slicer(with_packaging=False, confirm=True)
    installed = []
    slicer.util.pip_install = lambda reqs, **k: (calls.append(("pip_install", reqs)), installed.append(1))
    monkeypatch.setattr(dependencies, "missing_all",
                        lambda: [] if installed else ["no-such-package-acat-test>=1"])
    dependencies.ensure(slicer, ask=True)
    assert calls[-1] == ("pip_install", ["no-such-package-acat-test>=1"])


def test_slicer_core_has_no_pip_ensure_so_the_fallback_is_used():
    import slicer
    assert dependencies._packaging_api(slicer) is None
    assert callable(slicer.util.pip_install)


def test_torch_through_the_pytorch_extension(monkeypatch):
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", "no-such-torch-acat-test>=2.1")
    asked = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            asked.append((askConfirmation, torchVersionRequirement))
            return None                                  # the user said no

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    slicer, calls = stand_in_slicer()
    with pytest.raises(DependenciesMissing, match="PyTorch' extension"):
        dependencies.ensure(slicer, ask=True)
    assert asked == [(True, ">=2.1")] and calls == []


def test_too_old_torch_is_not_silently_accepted(monkeypatch):
    monkeypatch.setattr(dependencies, "TORCH_REQUIREMENT", "torch>=999")
    slicer, calls = stand_in_slicer()
    with pytest.raises(DependenciesMissing, match="is installed but ACAT needs torch>=999"):
        dependencies.ensure(slicer, ask=True)
    assert calls == []
