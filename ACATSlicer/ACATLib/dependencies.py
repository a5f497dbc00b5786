"""Which of ACAT's Python requirements are missing (checked without importing them).

Installation is done by ACAT.py at first use, after asking the user: torch through the PyTorch
extension (``PyTorchUtils``), the rest from ``Resources/requirements.txt`` with
``slicer.packaging.pip_ensure`` (Slicer >= 5.11) or ``slicer.util.pip_install``.
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.1"


def read_requirements(path=REQUIREMENTS) -> list:
    """Requirement strings of a requirements file (comments, blank lines and options dropped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]


def is_satisfied(requirement: str) -> bool:
    """True when an installed distribution satisfies ``requirement`` (version checked where the
    ``packaging`` package is available, else presence only)."""
    name = requirement_name(requirement)
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
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
