"""ACAT's Python dependencies inside Slicer: what is missing, and installing it the Slicer way.

- **torch** (``TORCH_REQUIREMENT``, version checked, not only presence) comes from the PyTorch
  extension (``PyTorchUtils``), which picks the build that fits this computer's GPU; without that
  extension ``pip install torch`` is offered.
- **the rest** is ``Resources/requirements.txt``: only what Slicer lacks and the engine needs at run
  time (never numpy, scipy, SimpleITK, pydicom or vtk, which Slicer ships; nothing for tests or
  reports). It is installed with the running Slicer's dependency API: ``slicer.packaging.pip_ensure``
  (Slicer >= 5.12, with its own confirmation dialog) or, on older Slicer, ``slicer.util.pip_install``
  after our own confirmation.
- **testing mode** (``slicer.app.testingEnabled()``, e.g. the self-test under ctest): nothing is ever
  installed; :func:`ensure` raises :class:`DependenciesMissing` saying what is missing. Slicer's own
  ``pip_ensure`` skips installing in testing mode, but ``confirmOkCancelDisplay`` answers "OK" and
  ``PyTorchUtils.installTorch`` installs without asking there, so we check before calling either.

Nothing here imports torch or Qt; ``slicer`` is passed in (tests use stand-ins for what only a Qt
Slicer has).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.13,<3"            # pyproject.toml's bounds (a test keeps them equal)
PYTORCH_EXTENSION_HINT = ("install the 'PyTorch' extension from the Extensions Manager (it picks the "
                          "build that fits your GPU), restart Slicer, and press Apply again")


class DependenciesMissing(RuntimeError):
    """ACAT cannot run: packages are missing and were not installed (declined, testing mode).
    The message says what is missing and what to do."""


def read_requirements(path=None) -> list:
    """Requirement strings of a requirements file (default: the module's; comments, blank lines and
    pip options dropped)."""
    lines = []
    for line in Path(path or REQUIREMENTS).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]


def installed_version(requirement: str):
    """The installed version of ``requirement``'s distribution, or None."""
    try:
        return importlib.metadata.version(requirement_name(requirement))
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: str) -> bool:
    """True when an installed distribution satisfies ``requirement``, version included (``packaging``
    ships with Slicer; without it, presence only)."""
    installed = installed_version(requirement)
    if installed is None:
        return False
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:
        return True
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate():
        return True
    return req.specifier.contains(Version(installed), prereleases=True)


def missing_requirements(requirements=None) -> list:
    """The requirements (default: Resources/requirements.txt) that are not satisfied."""
    if requirements is None:
        requirements = read_requirements()
    return [r for r in requirements if not is_satisfied(r)]


def missing_all() -> list:
    """Everything ACAT lacks to run: torch first (with its version), then the requirements file."""
    return missing_requirements([TORCH_REQUIREMENT]) + missing_requirements()


def what_to_do(missing: list) -> str:
    """The message for a user who has not (yet) got ``missing``."""
    lines = [f"ACAT needs these Python packages, which are not installed: {', '.join(missing)}.", ""]
    if any(requirement_name(m) == requirement_name(TORCH_REQUIREMENT) for m in missing):
        version = installed_version(TORCH_REQUIREMENT)
        if version is not None:
            lines.append(f"PyTorch {version} is installed but ACAT needs {TORCH_REQUIREMENT}: uninstall it "
                         "in the PyTorch Utils module, restart Slicer, and press Apply again.")
        else:
            lines.append(f"PyTorch: {PYTORCH_EXTENSION_HINT}.")
    rest = [m for m in missing if requirement_name(m) != requirement_name(TORCH_REQUIREMENT)]
    if rest:
        lines.append("The other packages are installed when you press Apply and accept, or in the Python "
                     f"console: slicer.util.pip_install({rest!r})")
    lines.append("Nothing was installed; no image was sent anywhere.")
    return "\n".join(lines)


def _packaging_api(slicer):
    """``slicer.packaging`` when the running Slicer has ``pip_ensure`` (5.12 and later), else None."""
    packaging = getattr(slicer, "packaging", None)
    if packaging is None:
        try:
            packaging = importlib.import_module(f"{slicer.__name__}.packaging")
        except ImportError:
            return None
    return packaging if hasattr(packaging, "pip_ensure") and hasattr(packaging, "load_requirements") else None


def _ensure_torch(slicer, ask: bool) -> None:
    if is_satisfied(TORCH_REQUIREMENT):
        return
    version = installed_version(TORCH_REQUIREMENT)
    if version is not None:   # an old torch is loaded or loadable: replacing it needs a restart
        raise DependenciesMissing(what_to_do([TORCH_REQUIREMENT]))
    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=ask,
            torchVersionRequirement=TORCH_REQUIREMENT[len(requirement_name(TORCH_REQUIREMENT)):])
        if torch is None:
            raise DependenciesMissing(what_to_do([TORCH_REQUIREMENT]))
        return
    if ask and not slicer.util.confirmOkCancelDisplay(
            "ACAT needs PyTorch, which is not installed. Install the CPU/GPU build pip chooses now (about "
            "1 GB)?\n\nCancel, then " + PYTORCH_EXTENSION_HINT + ", to get the build for your GPU."):
        raise DependenciesMissing(what_to_do([TORCH_REQUIREMENT]))
    slicer.util.pip_install(TORCH_REQUIREMENT)


def _ensure_requirements(slicer, ask: bool) -> None:
    missing = missing_requirements()
    if not missing:
        return
    packaging = _packaging_api(slicer)
    if packaging is not None:
        try:
            packaging.pip_ensure(packaging.load_requirements(str(REQUIREMENTS)), prompt_install=ask,
                                 requester="ACAT")
        except RuntimeError as exc:   # pip_ensure: "User declined package installation"
            if "declined" in str(exc).lower():
                raise DependenciesMissing(what_to_do(missing)) from exc
            raise
        return
    if ask and not slicer.util.confirmOkCancelDisplay(
            "ACAT needs these Python packages, which will be installed now:\n\n" + "\n".join(missing)
            + "\n\nContinue?"):
        raise DependenciesMissing(what_to_do(missing))
    slicer.util.pip_install(missing)


def ensure(slicer, ask: bool = True) -> None:
    """Make ACAT's dependencies available, installing after asking (``ask``); returns when all are
    satisfied. Raises :class:`DependenciesMissing` (declined, testing mode, old torch) with what to do,
    or the installer's error when an installation fails."""
    missing = missing_all()
    if not missing:
        return
    if slicer.app.testingEnabled():
        raise DependenciesMissing("Testing mode: ACAT installs nothing. " + what_to_do(missing))
    _ensure_torch(slicer, ask)
    _ensure_requirements(slicer, ask)
    still = missing_all()
    if still:
        raise DependenciesMissing(f"still missing after installation: {', '.join(still)}. Restart Slicer "
                                  "and press Apply again. " + what_to_do(still))
