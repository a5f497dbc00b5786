"""An ``AnalysisResult`` -> MRML nodes: overlays, colour maps, tables, chart, hottest point.

Every map of an ``AnalysisResult`` lies on the input volume's grid (the pipeline's contract), so each
overlay node takes the input node's geometry *exactly* (``CopyOrientation``) and the input's parent
transform, whatever the input's orientation (oblique included).

Display choices (see docs/SLICER.md):
- saliency and attention masks: the perceptual "Inferno" colour map; window [0, 1] when the map lies in
  [0, 1], else [min, max] (a fused mask built without sigmoid, as the authors' code does); a lower threshold at a
  percentile of the map hides the cold voxels (``set_overlay_threshold``);
- counterfactual difference (counterfactual - input, HU): the diverging "ColdToHotRainbow" map on a
  symmetric window [-m, m], m = 99.5th percentile of |difference| (signed: no threshold);
- counterfactual scans: grey, with the input's window/level.

Memory (these nodes are for display): saliency and attention maps are stored as uint8 over their
window (value = ``ACAT.offset`` + ``ACAT.scale`` * stored; :func:`map_values` gives the values back),
counterfactual scans and differences as int16 HU. A 512 x 512 x 300 map takes 79 MB (uint8) or 157 MB
(int16) instead of 315 MB (float32). Only the outputs asked for are loaded (``ACATLib.outputs``), and
a new run on the same input replaces that input's previous result nodes (:func:`remove_results`).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import vtk

from ACATCore.result import ATTENTION_NAMES, SAME_AS_BASELINE_NOTE, AnalysisResult
from ACATCore.volume import Volume

from .geometry import ijk_to_ras_matrix, set_node_array
from .outputs import DEFAULT_OUTPUTS, check_outputs, wanted_parts

COLOR_PERCEPTUAL = "vtkMRMLColorTableNodeFileInferno.txt"
COLOR_DIVERGING = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
COLOR_GREY = "vtkMRMLColorTableNodeGrey"

KIND_ATTRIBUTE = "ACAT.kind"            # "saliency", "attention:early", "counterfactual:<c>", "difference:<c>"
RUN_ATTRIBUTE = "ACAT.run"              # the same id on every node of one analysis
INPUT_ATTRIBUTE = "ACAT.input"          # node id of the analysed volume
QUANTILES_ATTRIBUTE = "ACAT.quantiles"  # JSON list of the 0..100 percentiles of the stored voxels
SCALE_ATTRIBUTE = "ACAT.scale"          # map value = offset + scale * stored voxel (uint8 maps)
OFFSET_ATTRIBUTE = "ACAT.offset"
_QUANTILE_SAMPLE = 1_000_000            # at most this many voxels are used to estimate percentiles


@dataclass
class ResultNodes:
    """The nodes one analysis created. ``volumes`` maps a kind (see ``KIND_ATTRIBUTE``) to its node."""
    input_node: object
    volumes: dict = field(default_factory=dict)
    probability_table: object = None
    slice_weight_table: object = None
    slice_weight_series: object = None
    slice_weight_chart: object = None
    peak_point: object = None
    folder_item: Optional[int] = None     # subject hierarchy folder holding the nodes (None: no hierarchy)
    predicted_class: str = ""
    same_as_baseline: bool = False       # ACAT's probabilities equal its baseline's (SAME_AS_BASELINE_NOTE)
    class_names: list = field(default_factory=list)
    probabilities: Optional[np.ndarray] = None

    def prediction_label(self) -> str:
        """The results panel's prediction line (rich text): the class, and under it the note that
        ACAT's attention does not change this prediction when ACAT gives its baseline's probabilities."""
        note = f"<br><i>{SAME_AS_BASELINE_NOTE}</i>" if self.same_as_baseline else ""
        return f"<b>{self.predicted_class}</b>{note}"

    @property
    def saliency(self):
        return self.volumes.get("saliency")

    def overlay_kinds(self) -> list:
        """Kinds offered by the overlay selector, in display order."""
        order = ["saliency"] + [f"attention:{n}" for n in ATTENTION_NAMES]
        kinds = [k for k in order if k in self.volumes]
        kinds += [k for k in self.volumes if k.startswith("difference:")]
        kinds += [k for k in self.volumes if k.startswith("counterfactual:")]
        return kinds

    @staticmethod
    def label(kind: str) -> str:
        """Human-readable name of an overlay kind."""
        if kind == "saliency":
            return "Saliency (counterfactual)"
        head, _, name = kind.partition(":")
        if head == "attention":
            return f"Attention: {name}" if name != "fused" else "Attention: fused"
        if head == "difference":
            return f"Counterfactual difference: {name}"
        if head == "counterfactual":
            return f"Counterfactual scan: {name}"
        return kind

    def layers(self, kind: str):
        """(background, foreground) nodes that show ``kind``: an overlay over the CT, or a
        counterfactual scan as background with no foreground."""
        node = self.volumes[kind]
        if kind.startswith("counterfactual:"):
            return node, None
        return self.input_node, node

    def all_nodes(self) -> list:
        nodes = list(self.volumes.values())
        nodes += [n for n in (self.probability_table, self.slice_weight_table, self.slice_weight_series,
                              self.slice_weight_chart, self.peak_point) if n is not None]
        return nodes

    @classmethod
    def from_scene(cls, scene, any_node) -> Optional["ResultNodes"]:
        """Rebuild the set of nodes of one analysis from any of its nodes (e.g. after loading a saved
        scene); None when ``any_node`` is not an ACAT result node or its input is gone."""
        run = any_node.GetAttribute(RUN_ATTRIBUTE) if any_node is not None else None
        if not run:
            return None
        input_node = scene.GetNodeByID(any_node.GetAttribute(INPUT_ATTRIBUTE) or "")
        if input_node is None:
            return None
        out = cls(input_node=input_node)
        collection = scene.GetNodes()
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node.GetAttribute(RUN_ATTRIBUTE) != run:
                continue
            kind = node.GetAttribute(KIND_ATTRIBUTE) or ""
            if node.IsA("vtkMRMLScalarVolumeNode") and kind:
                out.volumes[kind] = node
            elif kind == "peak":
                out.peak_point = node
            elif kind == "probabilities":
                out.probability_table = node
            elif kind == "slice weights":
                out.slice_weight_table = node
            elif kind == "slice weight series":
                out.slice_weight_series = node
            elif kind == "slice weight chart":
                out.slice_weight_chart = node
        order = {k: i for i, k in enumerate(["saliency"] + [f"attention:{n}" for n in ATTENTION_NAMES])}
        out.volumes = dict(sorted(out.volumes.items(), key=lambda kv: (order.get(kv[0], len(order)),
                                                                       kv[0].startswith("counterfactual:"))))
        if out.probability_table is not None:
            rows = table_rows(out.probability_table)
            out.class_names = [r[0] for r in rows]
            out.probabilities = np.array([r[1] for r in rows], dtype=np.float64)
            out.predicted_class = out.probability_table.GetAttribute("ACAT.predicted") or ""
            out.same_as_baseline = out.probability_table.GetAttribute("ACAT.sameAsBaseline") == "true"
        return out


# --------------------------------------------------------------------------------------------------
# Overlay volumes
# --------------------------------------------------------------------------------------------------

def _check_grid(volume: Volume, input_node, what: str) -> None:
    dims = input_node.GetImageData().GetDimensions()
    expected = (dims[2], dims[1], dims[0])
    if tuple(volume.array.shape) != expected:
        raise ValueError(f"the {what} map has shape {tuple(volume.array.shape)} but the input volume has "
                         f"{expected}: maps must lie on the input grid")
    if not np.allclose(volume.ijk_to_ras(), ijk_to_ras_matrix(input_node), rtol=1e-6, atol=1e-4):
        raise ValueError(f"the {what} map's geometry differs from the input volume's: maps must lie on "
                         "the input grid")


def _quantiles(array: np.ndarray) -> list:
    flat = _sample(array).astype(np.float32)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return [0.0] * 101
    return [float(v) for v in np.percentile(flat, np.arange(101))]


def threshold_for_percentile(node, percentile: float) -> float:
    """The voxel value (as stored in the node) at ``percentile`` (0..100) of the map, from the
    percentiles stored on the node."""
    text = node.GetAttribute(QUANTILES_ATTRIBUTE)
    if text:
        q = json.loads(text)
    else:  # a node not made by ACATLib: compute once and store
        from vtk.util import numpy_support
        q = _quantiles(numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()))
        node.SetAttribute(QUANTILES_ATTRIBUTE, json.dumps(q))
    p = float(np.clip(percentile, 0.0, 100.0))
    return float(np.interp(p, np.arange(101), q))


def set_overlay_threshold(node, percentile: float) -> None:
    """Show only voxels at or above ``percentile`` of the map (0 disables). Signed maps
    (counterfactual differences) and scans are never thresholded."""
    display = node.GetDisplayNode()
    kind = node.GetAttribute(KIND_ATTRIBUTE) or ""
    if display is None or kind.startswith(("difference:", "counterfactual:")):
        return
    if percentile <= 0:
        display.SetApplyThreshold(0)
        return
    lower = threshold_for_percentile(node, percentile)
    upper = max(threshold_for_percentile(node, 100.0), lower)
    display.SetAutoThreshold(0)
    display.SetLowerThreshold(lower)
    display.SetUpperThreshold(upper)
    display.SetApplyThreshold(1)


def _window_range(array: np.ndarray) -> tuple:
    if array.size == 0:
        return 0.0, 1.0
    lo, hi = float(array.min()), float(array.max())  # finite: see _map_array
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _display(node, color_id: str, lo: float, hi: float, interpolate: bool = True):
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_id)
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(lo, hi)
    display.SetInterpolate(1 if interpolate else 0)
    return display


def _volume_node(scene, input_node, name: str, kind: str, array: np.ndarray):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.CopyOrientation(input_node)
    # Our own display node, attached before the voxels and with automatic window/level off:
    # CreateDefaultDisplayNodes() would compute a histogram of every map (slow on full-size CT).
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAutoWindowLevel(0)
    display.SetAutoThreshold(0)
    display.SetApplyThreshold(0)
    node.SetAndObserveDisplayNodeID(display.GetID())
    set_node_array(node, array)
    if input_node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    node.SetAttribute(KIND_ATTRIBUTE, kind)
    return node


def _map_array(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array, dtype=np.float32)
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    return array


def _sample(array: np.ndarray) -> np.ndarray:
    """At most about _QUANTILE_SAMPLE evenly strided voxels (for percentiles of big volumes)."""
    flat = np.asarray(array).ravel()
    return flat[:: max(1, int(np.ceil(flat.size / _QUANTILE_SAMPLE)))]


def _to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo)
    out = np.empty(array.shape, dtype=np.uint8)
    for k in range(array.shape[0]):   # slice by slice: no full-size float temporaries
        out[k] = np.clip(np.rint((array[k] - lo) * scale), 0, 255)
    return out


def _to_int16(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.int16)
    for k in range(array.shape[0]):
        out[k] = np.clip(np.rint(array[k]), -32768, 32767)
    return out


def map_values(node) -> np.ndarray:
    """The values of a result map node as float32 numpy ``(k, j, i)`` (uint8 maps rescaled)."""
    from vtk.util import numpy_support
    ni, nj, nk = node.GetImageData().GetDimensions()
    stored = numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(nk, nj, ni)
    scale = node.GetAttribute(SCALE_ATTRIBUTE)
    if scale is None:
        return stored.astype(np.float32)
    return (float(node.GetAttribute(OFFSET_ATTRIBUTE)) + float(scale) * stored).astype(np.float32)


def _overlay(scene, input_node, base: str, kind: str, volume: Volume, threshold_percentile: float):
    _check_grid(volume, input_node, kind)
    array = _map_array(volume)
    lo, hi = _window_range(array)
    stored = _to_uint8(array, lo, hi)
    node = _volume_node(scene, input_node, f"{base} {ResultNodes.label(kind)}", kind, stored)
    node.SetAttribute(SCALE_ATTRIBUTE, repr((hi - lo) / 255.0))
    node.SetAttribute(OFFSET_ATTRIBUTE, repr(lo))
    _display(node, COLOR_PERCEPTUAL, 0.0, 255.0)
    # percentiles of the exact map, in stored units (thresholds are as fine as the map allows)
    node.SetAttribute(QUANTILES_ATTRIBUTE, json.dumps([(q - lo) * 255.0 / (hi - lo) for q in _quantiles(array)]))
    set_overlay_threshold(node, threshold_percentile)
    return node


def _input_window_level(input_node, array: np.ndarray) -> tuple:
    display = input_node.GetDisplayNode()
    if display is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode") and display.GetWindow() > 0 \
            and not display.GetAutoWindowLevel():
        return display.GetWindow(), display.GetLevel()
    lo, hi = np.percentile(_sample(array), [0.5, 99.5])
    return float(max(hi - lo, 1.0)), float((hi + lo) / 2)


# --------------------------------------------------------------------------------------------------
# Tables, chart, point
# --------------------------------------------------------------------------------------------------

def _table(scene, name: str, columns: list):
    """A table node from ``columns`` = [(name, kind, values)] with kind "string" | "double" | "int"."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    for col_name, kind, values in columns:
        array = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}[kind]()
        array.SetName(col_name)
        for v in values:
            array.InsertNextValue(str(v) if kind == "string" else (float(v) if kind == "double" else int(v)))
        table.AddColumn(array)
    return table


def table_rows(table) -> list:
    """The rows of a table node as a list of tuples (str / float / int cells)."""
    t = table.GetTable()
    rows = []
    for r in range(t.GetNumberOfRows()):
        row = []
        for c in range(t.GetNumberOfColumns()):
            col = t.GetColumn(c)
            row.append(col.GetValue(r))
        rows.append(tuple(row))
    return rows


def _probability_table(scene, base: str, result: AnalysisResult):
    probs = np.asarray(result.probabilities, dtype=np.float64).ravel()
    columns = [("class", "string", list(result.class_names)), ("probability", "double", probs)]
    if result.baseline_probabilities is not None:
        columns.append(("baseline probability", "double",
                        np.asarray(result.baseline_probabilities, dtype=np.float64).ravel()))
    table = _table(scene, f"{base} ACAT probabilities", columns)
    table.SetAttribute("ACAT.predicted", result.predicted_class)
    table.SetAttribute("ACAT.sameAsBaseline", "true" if result.same_as_baseline else "false")
    return table


def _slice_weight_nodes(scene, base: str, result: AnalysisResult):
    weights = np.asarray(result.slice_weights, dtype=np.float64).ravel()
    seen = np.zeros(weights.shape, dtype=int)
    idx = np.asarray(result.slices_seen, dtype=int).ravel()
    seen[idx[(idx >= 0) & (idx < weights.size)]] = 1
    table = _table(scene, f"{base} ACAT slice weights",
                   [("slice", "int", np.arange(weights.size)), ("weight", "double", weights),
                    ("seen", "int", seen)])
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{base} slice weight"))
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("slice")
    series.SetYColumnName("weight")
    series.SetPlotType(series.PlotTypeScatter)
    series.SetLineStyle(series.LineStyleSolid)
    series.SetMarkerStyle(series.MarkerStyleCircle)
    series.SetColor(0.89, 0.35, 0.13)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{base} ACAT slice weights"))
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("ACAT slice attention weights")
    chart.SetXAxisTitle("input slice index (k)")
    chart.SetYAxisTitle("weight")
    chart.SetLegendVisibility(False)
    return table, series, chart


def peak_ras(result: AnalysisResult) -> Optional[np.ndarray]:
    """RAS position (input's local frame) of the saliency peak: ``peak_lps``, else ``peak_index``,
    else the saliency arg-max. None when there is no saliency."""
    if result.peak_lps is not None:
        return np.diag([-1.0, -1.0, 1.0]) @ np.asarray(result.peak_lps, dtype=np.float64)
    ref = result.input
    if result.peak_index is not None:
        ijk = np.asarray(result.peak_index, dtype=np.float64)
    elif result.saliency is not None:
        arr = _map_array(result.saliency)
        k, j, i = np.unravel_index(int(np.argmax(arr)), arr.shape)
        ijk = np.array([i, j, k], dtype=np.float64)
        ref = result.saliency
    else:
        return None
    return (ref.ijk_to_ras() @ np.append(ijk, 1.0))[:3]


def _peak_node(scene, input_node, base: str, result: AnalysisResult):
    ras = peak_ras(result)
    if ras is None:
        return None
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(f"{base} ACAT peak"))
    label = "saliency peak" + (f" ({result.peak_territory})" if result.peak_territory else "")
    node.AddControlPoint(vtk.vtkVector3d(*(float(v) for v in ras)), label)
    node.SetLocked(True)
    if input_node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.SetAttribute(KIND_ATTRIBUTE, "peak")
    return node


# --------------------------------------------------------------------------------------------------
# Subject hierarchy
# --------------------------------------------------------------------------------------------------

def _subject_hierarchy(scene):
    """The scene's subject hierarchy node, or None where it is not available."""
    try:
        sh = scene.GetSubjectHierarchyNode()
    except Exception:  # noqa: BLE001 - older or reduced MRML builds
        sh = None
    return sh


def _place_in_hierarchy(scene, input_node, nodes: list, folder_name: str) -> Optional[int]:
    sh = _subject_hierarchy(scene)
    if sh is None:
        return None
    scene_item = sh.GetSceneItemID()
    input_item = sh.GetItemByDataNode(input_node)
    parent = sh.GetItemParent(input_item) if input_item else scene_item
    # Under the input's study when it has one (DICOM), else beside the input.
    item = parent
    while item and item != scene_item:
        if sh.GetItemLevel(item) == "Study":
            parent = item
            break
        item = sh.GetItemParent(item)
    folder = sh.CreateFolderItem(parent if parent else scene_item, folder_name)
    for node in nodes:
        node_item = sh.GetItemByDataNode(node)
        if not node_item:
            node_item = sh.CreateItem(folder, node)
        else:
            sh.SetItemParent(node_item, folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

def remove_results(scene, input_node) -> int:
    """Remove every ACAT result node of ``input_node`` (and their display and storage nodes, and the
    subject hierarchy folders left empty); returns the number of data nodes removed."""
    input_id = input_node.GetID()
    found = []
    collection = scene.GetNodes()
    for i in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(i)
        if node.GetAttribute(RUN_ATTRIBUTE) and node.GetAttribute(INPUT_ATTRIBUTE) == input_id:
            found.append(node)
    sh = _subject_hierarchy(scene)
    folders = set()
    if sh is not None:
        for node in found:
            item = sh.GetItemByDataNode(node)
            if item:
                folders.add(sh.GetItemParent(item))
                sh.RemoveItem(item, False, False)   # the item only; the node goes below
    helpers = []
    for node in found:
        if node.IsA("vtkMRMLDisplayableNode"):
            helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    for node in found + [h for h in helpers if h is not None]:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    if sh is not None:
        for folder in folders:
            if folder and folder != sh.GetSceneItemID() and sh.GetItemAttribute(folder, RUN_ATTRIBUTE) \
                    and sh.GetNumberOfItemChildren(folder) == 0:
                sh.RemoveItem(folder)
    return len(found)


def result_to_nodes(scene, result: AnalysisResult, input_node, threshold_percentile: float = 95.0,
                    name: Optional[str] = None, subject_hierarchy: bool = True, outputs=DEFAULT_OUTPUTS,
                    replace: bool = True) -> ResultNodes:
    """Create the nodes that show ``result`` (an analysis of ``input_node``) in ``scene``.

    ``outputs``: the output groups to load (``ACATLib.outputs.OUTPUT_GROUPS``; default: saliency and
    fused attention; None: all the result holds). ``replace``: first remove the result nodes of an
    earlier run on the same input (:func:`remove_results`), so re-running never accumulates nodes."""
    if input_node is None or input_node.GetImageData() is None:
        raise ValueError("result_to_nodes needs the input volume node the result was computed on")
    keep_saliency, attention_names, cf_names = wanted_parts(result, outputs)
    groups = check_outputs(outputs) if outputs is not None else ("counterfactuals", "differences")
    if replace:
        remove_results(scene, input_node)
    base = name or input_node.GetName()
    out = ResultNodes(input_node=input_node, predicted_class=result.predicted_class,
                      same_as_baseline=result.same_as_baseline,
                      class_names=list(result.class_names),
                      probabilities=np.asarray(result.probabilities, dtype=np.float64).ravel())
    if keep_saliency:
        out.volumes["saliency"] = _overlay(scene, input_node, base, "saliency", result.saliency,
                                           threshold_percentile)
    for att_name in ATTENTION_NAMES:
        if att_name in attention_names:
            out.volumes[f"attention:{att_name}"] = _overlay(
                scene, input_node, base, f"attention:{att_name}", result.attention[att_name],
                threshold_percentile)
    input_array = np.asarray(result.input.array)
    for cls in cf_names:
        cf = result.counterfactuals[cls]
        _check_grid(cf, input_node, f"counterfactual {cls}")
        cf_array = _map_array(cf)
        if "counterfactuals" in groups:
            node = _volume_node(scene, input_node, f"{base} ACAT counterfactual {cls}", f"counterfactual:{cls}",
                                _to_int16(cf_array))
            window, level = _input_window_level(input_node, input_array)
            _display(node, COLOR_GREY, level - window / 2, level + window / 2)
            out.volumes[f"counterfactual:{cls}"] = node
        if "differences" in groups:
            diff = np.empty(cf_array.shape, dtype=np.int16)
            for k in range(diff.shape[0]):
                diff[k] = np.clip(np.rint(cf_array[k] - input_array[k]), -32768, 32767)
            m = float(np.percentile(np.abs(_sample(diff).astype(np.float32)), 99.5)) if diff.size else 0.0
            m = m if m > 0 else float(np.abs(diff).max() or 1.0)
            dnode = _volume_node(scene, input_node, f"{base} ACAT difference {cls}", f"difference:{cls}", diff)
            _display(dnode, COLOR_DIVERGING, -m, m)
            out.volumes[f"difference:{cls}"] = dnode
        del cf_array
    out.probability_table = _probability_table(scene, base, result)
    if result.slice_weights is not None and np.asarray(result.slice_weights).size:
        out.slice_weight_table, out.slice_weight_series, out.slice_weight_chart = \
            _slice_weight_nodes(scene, base, result)
    out.peak_point = _peak_node(scene, input_node, base, result)
    run = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
    for node, kind in ((out.probability_table, "probabilities"), (out.slice_weight_table, "slice weights"),
                       (out.slice_weight_series, "slice weight series"),
                       (out.slice_weight_chart, "slice weight chart")):
        if node is not None:
            node.SetAttribute(KIND_ATTRIBUTE, kind)
    for node in out.all_nodes():
        node.SetAttribute(RUN_ATTRIBUTE, run)
        node.SetAttribute(INPUT_ATTRIBUTE, input_node.GetID())
    if subject_hierarchy:
        model = (result.model_card or {}).get("model_name") or (result.model_card or {}).get("task") or ""
        folder_name = f"ACAT {base}" + (f" ({model})" if model else "")
        out.folder_item = _place_in_hierarchy(scene, input_node, out.all_nodes(), folder_name)
        if out.folder_item:
            _subject_hierarchy(scene).SetItemAttribute(out.folder_item, RUN_ATTRIBUTE, run)
    return out
