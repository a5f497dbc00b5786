"""Showing ACAT results in the slice views: the MRML side of the widget's buttons and sliders.

Works on the scene's slice composite nodes directly (what ``slicer.util.setSliceViewerLayers`` does), so
it is tested on a real MRML scene without Qt.
"""
from __future__ import annotations

from .results import ResultNodes, set_overlay_threshold


def _composites(scene) -> list:
    n = scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(n)]


def show_output(scene, nodes: ResultNodes, kind: str, opacity: float, threshold_percentile: float) -> None:
    """Show output ``kind`` in every slice view: a map over the CT (thresholded at the percentile,
    with ``opacity``), or a counterfactual scan in place of the CT."""
    background, foreground = nodes.layers(kind)
    if foreground is not None:
        set_overlay_threshold(foreground, threshold_percentile)
    for comp in _composites(scene):
        comp.SetBackgroundVolumeID(background.GetID())
        comp.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        comp.SetForegroundOpacity(opacity)


def set_opacity(scene, opacity: float) -> None:
    for comp in _composites(scene):
        comp.SetForegroundOpacity(opacity)


def set_threshold(nodes: ResultNodes, kind: str, percentile: float) -> None:
    _, foreground = nodes.layers(kind)
    if foreground is not None:
        set_overlay_threshold(foreground, percentile)


def peak_position(nodes: ResultNodes) -> list:
    """World RAS position of the hottest point; raises when the result has none."""
    point = nodes.peak_point
    if point is None or point.GetNumberOfControlPoints() == 0:
        raise RuntimeError("no saliency peak in the last result")
    ras = [0.0, 0.0, 0.0]
    point.GetNthControlPointPositionWorld(0, ras)
    return ras


def jump_to_peak(scene, nodes: ResultNodes) -> list:
    """Centre every slice view on the hottest point; returns its RAS position."""
    import slicer
    ras = peak_position(nodes)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return ras
