"""A scene holding ACAT results, saved as a Slicer data bundle (MRB) and loaded again, on real MRML
(slicer-core's own scene writing and reading, as Slicer's File > Save / Open Scene use).

Colour nodes are made the way Slicer's colour logic makes them at start-up (singleton nodes whose IDs
come from ``vtkMRMLColorLogic``), not from ACAT's constants.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ACATSlicer"))
sys.path.insert(0, str(ROOT / "Testing"))

import slicer  # noqa: E402

import ACATLib  # noqa: E402
from ACATLib import results  # noqa: E402
from test_slicer_lib import make_result, make_volume  # noqa: E402

COLOR_FILES = ("Inferno.txt", "ColdToHotRainbow.txt")
_LOGICS = []   # a colour logic removes its colour nodes when it is deleted: keep them alive


def add_slicer_colour_nodes(scene):
    """What Slicer's colour logic adds to every scene: the built-in tables (Grey, ...) and one
    singleton node per colour file, named by the logic (the file contents do not matter here)."""
    logic = slicer.vtkSlicerColorLogic()
    logic.SetMRMLScene(scene)
    logic.AddDefaultColorNodes()       # the built-in (non-file) colour nodes, e.g. Grey
    _LOGICS.append(logic)
    for name in COLOR_FILES:
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToUser()
        node.SetNumberOfColors(2)
        node.SetColor(0, "low", 0.0, 0.0, 0.0, 1.0)
        node.SetColor(1, "high", 1.0, 1.0, 0.0, 1.0)
        node.SetName(name[:-4])
        node.SetSingletonTag(logic.GetFileColorNodeSingletonTag(name))
        node.SetSaveWithScene(False)   # as Slicer's: recreated at start-up, never saved
        scene.AddNode(node)
    return logic


def new_scene(cache_dir):
    """A scene set up as Slicer's application logic and modules do: data I/O and cache managers (MRB
    reading needs them), a selection node, the markups storage classes, the colour nodes."""
    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(cache_dir))
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io)
    scene.AddNode(slicer.vtkMRMLSelectionNode())
    # Slicer's Markups module logic registers the markups storage classes (slicer-core has no modules)
    for storage in (slicer.vtkMRMLMarkupsJsonStorageNode(), slicer.vtkMRMLMarkupsFiducialStorageNode()):
        scene.RegisterNodeClass(storage)
    add_slicer_colour_nodes(scene)
    return scene


def test_colour_node_ids_are_the_ones_slicer_creates(tmp_path):
    scene = new_scene(tmp_path)
    for name, ours in zip(COLOR_FILES, (ACATLib.COLOR_PERCEPTUAL, ACATLib.COLOR_DIVERGING)):
        slicer_id = slicer.vtkMRMLColorLogic.GetFileColorNodeID(name)
        assert scene.GetNodeByID(slicer_id) is not None and ours == slicer_id
    grey = slicer.vtkMRMLColorLogic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Grey)
    assert scene.GetNodeByID(grey) is not None and ACATLib.COLOR_GREY == grey


def test_saved_scene_keeps_overlays_colours_chart_and_tables(tmp_path):
    scene = new_scene(tmp_path)
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct, outputs=ACATLib.OUTPUT_GROUPS, threshold_percentile=90)
    before = {kind: (ACATLib.map_values(node), node.GetDisplayNode().GetColorNodeID(),
                     node.GetDisplayNode().GetLowerThreshold(), node.GetDisplayNode().GetApplyThreshold(),
                     node.GetDisplayNode().GetWindowLevelMin(), node.GetDisplayNode().GetWindowLevelMax())
              for kind, node in nodes.volumes.items()}
    mrb = tmp_path / "acat.mrb"
    assert scene.WriteToMRB(str(mrb))
    import zipfile
    stored = [Path(n).name for n in zipfile.ZipFile(mrb).namelist()]
    assert sum(n.endswith(".nrrd") for n in stored) == 1 + 9       # the CT and the 9 maps
    assert sum(n.endswith(".tsv") or n.endswith(".csv") for n in stored) >= 2   # both tables
    assert sum(n.endswith(".mrk.json") for n in stored) == 1                    # the hottest point

    loaded = new_scene(tmp_path / "cache2")        # a fresh Slicer: its colour nodes, then the bundle
    assert loaded.ReadFromMRB(str(mrb), True)
    ct2 = loaded.GetFirstNodeByName("CT")
    saliency = next(loaded.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                    for i in range(loaded.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
                    if loaded.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetAttribute(results.KIND_ATTRIBUTE)
                    == "saliency")
    again = ACATLib.ResultNodes.from_scene(loaded, saliency)
    assert again is not None and again.input_node is ct2
    assert again.overlay_kinds() == nodes.overlay_kinds()
    for kind, node in again.volumes.items():
        values, colour, lower, apply, wmin, wmax = before[kind]
        np.testing.assert_array_equal(ACATLib.map_values(node), values, err_msg=kind)
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() == colour and display.GetColorNode() is not None, kind
        assert loaded.GetNodeByID(colour) is not None
        # the scene file keeps thresholds to 3 decimals (of 0..255 stored units)
        assert (display.GetLowerThreshold(), display.GetApplyThreshold()) == pytest.approx((lower, apply), abs=1e-2)
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((wmin, wmax), abs=1e-2)
        np.testing.assert_array_equal(ACATLib.ijk_to_ras_matrix(node), ACATLib.ijk_to_ras_matrix(ct2))
    # tables, chart and the hottest point
    assert results.table_rows(again.probability_table) == results.table_rows(nodes.probability_table)
    assert again.predicted_class == "left"
    # tables are stored as TSV with 6 significant digits
    np.testing.assert_allclose(np.array(results.table_rows(again.slice_weight_table), dtype=float),
                               np.array(results.table_rows(nodes.slice_weight_table), dtype=float), rtol=1e-5)
    chart, series = again.slice_weight_chart, again.slice_weight_series
    assert chart is not None and chart.GetNthPlotSeriesNodeID(0) == series.GetID()
    assert series.GetTableNodeID() == again.slice_weight_table.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("slice", "weight")
    p0, p1 = [0.0] * 3, [0.0] * 3
    nodes.peak_point.GetNthControlPointPosition(0, p0)
    again.peak_point.GetNthControlPointPosition(0, p1)
    np.testing.assert_allclose(p1, p0, atol=1e-6)
    # the thresholds still work on the loaded maps (percentiles travel as node attributes)
    ACATLib.set_overlay_threshold(again.saliency, 99)
    assert again.saliency.GetDisplayNode().GetLowerThreshold() == pytest.approx(
        np.percentile(result.saliency.array, 99) * 255, abs=1e-3)
    # and a new run on the loaded input replaces the loaded results
    ACATLib.result_to_nodes(loaded, result, ct2)
    assert loaded.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3
