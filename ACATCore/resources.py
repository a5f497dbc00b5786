"""Where ACAT finds its shipped resources (model bundles, small data) without any download.

Order: the folder named by the environment variable ``ACAT_RESOURCES``; the repository's
``Resources/`` folder next to the package (source checkout, editable install, or the Slicer
extension which bundles ``Resources/`` beside ``ACATCore/``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ACATError


def resources_dir() -> Path:
    env = os.environ.get("ACAT_RESOURCES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "Resources"


def resource_path(*parts: str, must_exist: bool = True) -> Path:
    """Path of a shipped resource, e.g. ``resource_path("models", "lung")``."""
    path = resources_dir().joinpath(*parts)
    if must_exist and not path.exists():
        raise ACATError(f"shipped resource {'/'.join(parts)} not found under {resources_dir()}; "
                        "reinstall ACAT or set ACAT_RESOURCES to the folder holding it")
    return path
