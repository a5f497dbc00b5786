"""ACATLib: the parts of the ACAT Slicer module that need MRML but not Qt.

Everything here works with the MRML classes of a running 3D Slicer *and* with the PyPI package
``slicer-core`` (tests run it outside Slicer). Nothing here imports ``qt``, ``ctk`` or ``torch``;
the engine (``ACATCore.analyze``) is only imported where a run actually happens.

- :mod:`ACATLib.geometry`: volume node <-> :class:`ACATCore.volume.Volume` with exact geometry.
- :mod:`ACATLib.results`: an :class:`ACATCore.result.AnalysisResult` -> compact overlay volumes, colour
  maps, tables, a slice-weight chart, the hottest point, in the subject hierarchy; replaces the
  previous run's nodes of the same input.
- :mod:`ACATLib.outputs`: which outputs are loaded (saliency and fused attention by default).
- :mod:`ACATLib.display`: showing an output in the slice views, opacity, threshold, jump to the peak.
- :mod:`ACATLib.export`: write the result nodes to a folder.
- :mod:`ACATLib.engine`: calling ``ACATCore.analyze`` with the module's options.
- :mod:`ACATLib.transfer`: volumes and results to/from ``.npz`` files (no pickle).
- :mod:`ACATLib.runner`: a background run in a separate Python process, with progress and a cancel
  that stops the whole process tree.
- :mod:`ACATLib.dependencies`: what is missing, and installing it with the running Slicer's API.
"""
from .geometry import volume_from_node, node_from_volume, update_node_from_volume, ijk_to_ras_matrix
from .outputs import DEFAULT_OUTPUTS, OUTPUT_GROUPS
from .results import (
    COLOR_DIVERGING, COLOR_GREY, COLOR_PERCEPTUAL, ResultNodes, map_values, remove_results,
    result_to_nodes, set_overlay_threshold, threshold_for_percentile,
)

__all__ = [
    "volume_from_node", "node_from_volume", "update_node_from_volume", "ijk_to_ras_matrix",
    "DEFAULT_OUTPUTS", "OUTPUT_GROUPS",
    "COLOR_DIVERGING", "COLOR_GREY", "COLOR_PERCEPTUAL", "ResultNodes", "map_values", "remove_results",
    "result_to_nodes", "set_overlay_threshold", "threshold_for_percentile",
]
