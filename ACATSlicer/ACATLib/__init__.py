"""ACATLib: the parts of the ACAT Slicer module that need MRML but not Qt.

Everything here works with the MRML classes of a running 3D Slicer *and* with the PyPI package
``slicer-core`` (tests run it outside Slicer). Nothing here imports ``qt``, ``ctk`` or ``torch``;
the engine (``ACATCore.analyze``) is only imported where a run actually happens.

- :mod:`ACATLib.geometry`: volume node <-> :class:`ACATCore.volume.Volume` with exact geometry.
- :mod:`ACATLib.results`: an :class:`ACATCore.result.AnalysisResult` -> overlay volumes, colour
  maps, tables, a slice-weight chart, the hottest point, all in the subject hierarchy.
- :mod:`ACATLib.export`: write the result nodes to a folder.
- :mod:`ACATLib.engine`: calling the engine with the module's options (shared by GUI, console, worker).
- :mod:`ACATLib.transfer`: volumes and results to/from ``.npz`` files (no pickle).
- :mod:`ACATLib.runner`: a background run in a separate Python process, with progress and cancel.
- :mod:`ACATLib.dependencies`: which Python requirements are missing (installation itself is in ACAT.py).
"""
from .geometry import volume_from_node, node_from_volume, update_node_from_volume, ijk_to_ras_matrix
from .results import (
    COLOR_DIVERGING, COLOR_GREY, COLOR_PERCEPTUAL, ResultNodes, result_to_nodes,
    set_overlay_threshold, threshold_for_percentile,
)

__all__ = [
    "volume_from_node", "node_from_volume", "update_node_from_volume", "ijk_to_ras_matrix",
    "COLOR_DIVERGING", "COLOR_GREY", "COLOR_PERCEPTUAL", "ResultNodes", "result_to_nodes",
    "set_overlay_threshold", "threshold_for_percentile",
]
