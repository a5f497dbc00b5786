"""ACATLib (everything under the Slicer module's widget) on a real vtkMRMLScene from the PyPI package
slicer-core.

slicer-core is a declared test dependency: if it cannot be imported these tests fail (they never skip).
AnalysisResult objects are built by hand, so these tests do not depend on trained models. Saved
scenes, dependencies and cancel have their own files (test_slicer_scene.py, test_slicer_dependencies.py,
test_slicer_cancel.py).
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ACATSlicer"))
sys.path.insert(0, str(ROOT / "Testing"))

try:
    import slicer
except ImportError as exc:  # pragma: no cover - a broken environment must fail loudly
    raise ImportError("slicer-core is required for the ACATLib tests (pip install -e '.[test]')") from exc
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
    raise ImportError(f"'import slicer' gave {getattr(slicer, '__file__', slicer)!r}, which is not slicer-core "
                      "(the unrelated PyPI package 'slicer' may be installed: uninstall it)")

import vtk  # noqa: E402

import ACATLib  # noqa: E402
from ACATCore.analysis_maps import SHOWN_SMOOTHING  # noqa: E402
from ACATCore.errors import InputError  # noqa: E402
from ACATCore.result import ATTENTION_NAMES, AnalysisResult  # noqa: E402
from ACATCore.volume import Volume  # noqa: E402
from ACATLib import analysis, display, engine, export, results, transfer  # noqa: E402
from ACATLib.runner import BackgroundAnalysis, default_sys_path  # noqa: E402

ALL = ACATLib.OUTPUT_GROUPS


# ------------------------------------------------------------------------------------------ helpers
def make_scene():
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())   # as in Slicer (markups look up units there)
    return scene


def rotation(ax_deg=20.0, ay_deg=-12.0, az_deg=7.0):
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_volume(oblique=True, shape=(9, 12, 14), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(array=rng.integers(-1000, 1500, shape).astype(np.int16), spacing=(0.7, 0.85, 2.5),
                  origin=(12.5, -40.25, 77.0), direction=rotation() if oblique else np.eye(3))


def make_result(volume, peak=(3, 4, 5), with_peak_lps=True):
    rng = np.random.default_rng(1)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    i0, j0, k0 = peak
    blob = np.exp(-((ii - i0) ** 2 + (jj - j0) ** 2 + (kk - k0) ** 2) / 6.0).astype(np.float32)
    attention = {name: volume.with_array(rng.random(volume.shape).astype(np.float32)) for name in ATTENTION_NAMES}
    attention["fused"] = volume.with_array((rng.random(volume.shape) * 4 - 1).astype(np.float32))  # no sigmoid
    counterfactuals = {
        "no lesion": volume.with_array(volume.array.astype(np.float32) + 30 * blob),
        "lesion": volume.with_array(volume.array.astype(np.float32) - 20 * blob),
    }
    weights = np.full(volume.shape[0], np.nan)
    seen = np.arange(1, volume.shape[0], 2)
    weights[seen] = np.linspace(0.1, 0.9, seen.size)
    return AnalysisResult(
        input=volume, class_names=["no lesion", "left", "right", "both"],
        probabilities=np.array([0.1, 0.6, 0.2, 0.1]), saliency=volume.with_array(blob),
        attention=attention, counterfactuals=counterfactuals, slice_weights=weights, slices_seen=seen,
        baseline_probabilities=np.array([0.3, 0.3, 0.2, 0.2]), peak_index=peak,
        peak_lps=tuple(volume.index_to_physical(peak)) if with_peak_lps else None,
        peak_territory="MCA left", model_card={"model_name": "acat_brain", "task": "brain"},
    )


def ijk_to_ras(node):
    return ACATLib.ijk_to_ras_matrix(node)


@pytest.fixture()
def scene():
    return make_scene()


# ---------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("oblique", [False, True])
def test_node_volume_round_trip_is_exact(scene, oblique):
    volume = make_volume(oblique)
    node = ACATLib.node_from_volume(scene, volume, "ct")
    # the node's IJK-to-RAS is the Volume's (LPS -> RAS) within rounding of the matrix product
    np.testing.assert_allclose(ijk_to_ras(node), volume.ijk_to_ras(), rtol=0, atol=1e-12)
    back = ACATLib.volume_from_node(node)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.spacing == volume.spacing and back.origin == volume.origin
    np.testing.assert_array_equal(back.direction, volume.direction)
    # node -> Volume -> node reproduces the node bit for bit
    node2 = ACATLib.node_from_volume(scene, back, "ct copy")
    np.testing.assert_array_equal(ijk_to_ras(node2), ijk_to_ras(node))
    assert node2.GetSpacing() == node.GetSpacing() and node2.GetOrigin() == node.GetOrigin()


def test_volume_from_node_reads_geometry_set_in_slicer(scene):
    """A node whose geometry is set the Slicer way (RAS matrix) gives the matching LPS Volume."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "raw")
    ACATLib.geometry.set_node_array(node, np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    m = vtk.vtkMatrix4x4()
    ras = np.eye(4)
    ras[:3, :3] = rotation(5, 10, 30) @ np.diag([0.5, 0.6, 3.0])
    ras[:3, 3] = [-1.0, 2.0, 3.0]
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ras[r, c])
    node.SetIJKToRASMatrix(m)
    volume = ACATLib.volume_from_node(node)
    np.testing.assert_allclose(volume.ijk_to_ras(), ras, atol=1e-12)
    assert volume.array[1, 2, 3] == 23.0          # numpy (k, j, i) == vtk x-fastest
    lps = volume.index_to_physical([3, 2, 1])
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ lps, (ras @ [3, 2, 1, 1])[:3], atol=1e-12)


def test_volume_from_node_rejects_bad_nodes(scene):
    with pytest.raises(InputError):
        ACATLib.volume_from_node(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        ACATLib.volume_from_node(empty)


# -------------------------------------------------------------------------------------- result nodes
@pytest.mark.parametrize("oblique", [False, True])
def test_result_nodes_carry_the_input_geometry(scene, oblique):
    volume = make_volume(oblique)
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    ct.SetAndObserveTransformNodeID(transform.GetID())
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=ALL)
    expected = ijk_to_ras(ct)
    kinds = ["saliency"] + [f"attention:{n}" for n in ATTENTION_NAMES] + \
        ["difference:no lesion", "difference:lesion", "counterfactual:no lesion", "counterfactual:lesion"]
    assert nodes.overlay_kinds() == kinds
    for kind, node in nodes.volumes.items():
        np.testing.assert_array_equal(ijk_to_ras(node), expected, err_msg=kind)
        assert node.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
        assert node.GetTransformNodeID() == transform.GetID(), kind
        assert node.GetAttribute(results.KIND_ATTRIBUTE) == kind
    assert nodes.peak_point.GetTransformNodeID() == transform.GetID()


def test_result_arrays_are_compact_and_equal_the_result(scene):
    """Maps are uint8 over their range (within half a step of the map), scans and differences int16 HU."""
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct, outputs=ALL)
    maps = {"saliency": result.saliency.array, **{f"attention:{n}": result.attention[n].array for n in ATTENTION_NAMES}}
    for kind, expected in maps.items():
        node = nodes.volumes[kind]
        assert node.GetImageData().GetScalarType() == vtk.VTK_UNSIGNED_CHAR, kind
        lo, hi = (0.0, 1.0) if expected.min() >= 0 and expected.max() <= 1 else (expected.min(), expected.max())
        np.testing.assert_allclose(ACATLib.map_values(node), expected, atol=(hi - lo) / 255 / 2 + 1e-6, err_msg=kind)
    for cls in ("no lesion", "lesion"):
        cf = nodes.volumes[f"counterfactual:{cls}"]
        assert cf.GetImageData().GetScalarType() == vtk.VTK_SHORT
        np.testing.assert_array_equal(ACATLib.volume_from_node(cf).array, np.rint(result.counterfactuals[cls].array))
        diff = ACATLib.volume_from_node(nodes.volumes[f"difference:{cls}"]).array
        np.testing.assert_array_equal(diff, np.rint(result.counterfactuals[cls].array - volume.array))


def test_only_the_chosen_outputs_are_loaded(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct)           # the defaults
    assert ACATLib.DEFAULT_OUTPUTS == ("saliency", "fused attention")
    assert nodes.overlay_kinds() == ["saliency", "attention:fused"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3      # CT + 2 maps
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=("differences",))
    assert nodes.overlay_kinds() == ["difference:no lesion", "difference:lesion"]
    assert nodes.probability_table is not None and nodes.peak_point is not None
    with pytest.raises(ValueError, match="unknown ACAT output"):
        ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=("everything",))


def test_rerun_on_the_same_input_replaces_its_result_nodes(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    other = ACATLib.node_from_volume(scene, make_volume(seed=3), "CT 2")
    kept = ACATLib.result_to_nodes(scene, make_result(volume), other)
    counts = None
    for _ in range(3):
        nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=ALL)
        now = {cls: scene.GetNumberOfNodesByClass(cls) for cls in
               ("vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeDisplayNode", "vtkMRMLTableNode",
                "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLMarkupsFiducialNode")}
        assert counts is None or now == counts
        counts = now
    assert counts["vtkMRMLScalarVolumeNode"] == 2 + 2 + 9     # two CTs, the other's 2 maps, 9 maps
    sh = scene.GetSubjectHierarchyNode()
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    folders = [ids.GetId(i) for i in range(ids.GetNumberOfIds()) if sh.GetItemName(ids.GetId(i)).startswith("ACAT CT (")]
    assert len(folders) == 1                                   # the empty folders went too
    assert all(scene.IsNodePresent(n) for n in kept.all_nodes()), "another input's results stay"
    assert ACATLib.remove_results(scene, ct) == len(nodes.all_nodes())
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4


def test_colour_maps_and_display_ranges(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    d = ct.GetDisplayNode()
    d.SetAutoWindowLevel(0)
    d.SetWindowLevel(80, 40)  # a brain window set by the user
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct, threshold_percentile=90, outputs=ALL)
    # colour node IDs as Slicer's own colour logic names its colour tables
    inferno = slicer.vtkMRMLColorLogic.GetFileColorNodeID("Inferno.txt")
    cold_to_hot = slicer.vtkMRMLColorLogic.GetFileColorNodeID("ColdToHotRainbow.txt")
    grey = slicer.vtkMRMLColorLogic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Grey)
    for kind in ["saliency", "attention:early", "attention:middle", "attention:late"]:
        node = nodes.volumes[kind]
        disp = node.GetDisplayNode()
        assert disp.GetColorNodeID() == inferno
        assert not disp.GetAutoWindowLevel()
        assert (disp.GetWindowLevelMin(), disp.GetWindowLevelMax()) == pytest.approx((0.0, 255.0))
        assert float(node.GetAttribute(results.SCALE_ATTRIBUTE)) == pytest.approx(1 / 255)   # window [0, 1]
        assert disp.GetApplyThreshold()
        values = np.asarray(result.saliency.array if kind == "saliency" else
                            result.attention[kind.split(":")[1]].array)
        assert disp.GetLowerThreshold() == pytest.approx(np.percentile(values, 90) * 255, abs=1e-3)
    fused = nodes.volumes["attention:fused"]
    arr = result.attention["fused"].array
    assert float(fused.GetAttribute(results.OFFSET_ATTRIBUTE)) == pytest.approx(arr.min(), abs=1e-6)
    assert float(fused.GetAttribute(results.SCALE_ATTRIBUTE)) * 255 == pytest.approx(arr.max() - arr.min(), abs=1e-5)
    for cls in ("no lesion", "lesion"):
        diff = nodes.volumes[f"difference:{cls}"].GetDisplayNode()
        assert diff.GetColorNodeID() == cold_to_hot
        assert diff.GetWindowLevelMin() == pytest.approx(-diff.GetWindowLevelMax())
        assert diff.GetWindowLevelMax() > 0 and not diff.GetApplyThreshold()
        cf = nodes.volumes[f"counterfactual:{cls}"].GetDisplayNode()
        assert cf.GetColorNodeID() == grey
        assert (cf.GetWindow(), cf.GetLevel()) == pytest.approx((80, 40))
    # threshold control: 0 disables it, signed maps are never thresholded
    sal = nodes.saliency
    ACATLib.set_overlay_threshold(sal, 0)
    assert not sal.GetDisplayNode().GetApplyThreshold()
    ACATLib.set_overlay_threshold(sal, 99)
    assert sal.GetDisplayNode().GetApplyThreshold()
    assert sal.GetDisplayNode().GetLowerThreshold() == pytest.approx(np.percentile(result.saliency.array, 99) * 255,
                                                                     abs=1e-3)
    ACATLib.set_overlay_threshold(nodes.volumes["difference:lesion"], 95)
    assert not nodes.volumes["difference:lesion"].GetDisplayNode().GetApplyThreshold()


def test_layers_for_each_overlay(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=ALL)
    assert nodes.layers("saliency") == (ct, nodes.saliency)
    assert nodes.layers("difference:lesion") == (ct, nodes.volumes["difference:lesion"])
    assert nodes.layers("counterfactual:lesion") == (nodes.volumes["counterfactual:lesion"], None)
    assert "Attention: fused" == nodes.label("attention:fused")


def test_tables_and_chart_equal_the_result(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct)
    rows = results.table_rows(nodes.probability_table)
    assert [r[0] for r in rows] == result.class_names
    np.testing.assert_array_equal([r[1] for r in rows], result.probabilities)
    np.testing.assert_array_equal([r[2] for r in rows], result.baseline_probabilities)
    assert nodes.probability_table.GetAttribute("ACAT.predicted") == "left" == nodes.predicted_class
    rows = results.table_rows(nodes.slice_weight_table)
    assert [r[0] for r in rows] == list(range(volume.shape[0]))
    np.testing.assert_array_equal([r[1] for r in rows], result.slice_weights)  # NaN where unseen
    assert [r[2] for r in rows] == [int(k in set(result.slices_seen)) for k in range(volume.shape[0])]
    series, chart = nodes.slice_weight_series, nodes.slice_weight_chart
    assert series.GetTableNodeID() == nodes.slice_weight_table.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("slice", "weight")
    assert chart.GetNumberOfPlotSeriesNodes() == 1 and chart.GetNthPlotSeriesNodeID(0) == series.GetID()


@pytest.mark.parametrize("with_peak_lps", [True, False])
def test_peak_point(scene, with_peak_lps):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    nodes = ACATLib.result_to_nodes(scene, make_result(volume, peak=(3, 4, 5), with_peak_lps=with_peak_lps), ct)
    point = nodes.peak_point
    assert point.GetNumberOfControlPoints() == 1
    pos = [0.0, 0.0, 0.0]
    point.GetNthControlPointPosition(0, pos)
    np.testing.assert_allclose(pos, (ijk_to_ras(ct) @ [3, 4, 5, 1])[:3], atol=1e-6)
    assert "MCA left" in point.GetNthControlPointLabel(0)


def test_peak_from_saliency_when_result_has_none(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume, peak=(6, 2, 7))
    result.peak_index = result.peak_lps = result.peak_territory = None
    nodes = ACATLib.result_to_nodes(scene, result, ct)
    pos = [0.0, 0.0, 0.0]
    nodes.peak_point.GetNthControlPointPosition(0, pos)
    np.testing.assert_allclose(pos, (ijk_to_ras(ct) @ [6, 2, 7, 1])[:3], atol=1e-6)


def test_nodes_go_under_the_input_study(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    sh = scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "CT head 2024")
    series = sh.CreateFolderItem(study, "series folder")
    sh.CreateItem(series, ct)
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct)
    assert nodes.folder_item and sh.GetItemParent(nodes.folder_item) == study
    assert "acat_brain" in sh.GetItemName(nodes.folder_item)
    for node in nodes.all_nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == nodes.folder_item, node.GetName()


def test_nodes_without_subject_hierarchy(scene, monkeypatch):
    monkeypatch.setattr(results, "_subject_hierarchy", lambda scene: None)
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    nodes = ACATLib.result_to_nodes(scene, make_result(volume), ct)
    assert nodes.folder_item is None and nodes.saliency is not None


def test_maps_off_the_input_grid_are_refused(scene):
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume)
    result.saliency = Volume(np.zeros((3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="input grid"):
        ACATLib.result_to_nodes(scene, result, ct)
    result = make_result(volume)
    result.attention["early"] = Volume(result.attention["early"].array, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="geometry"):
        ACATLib.result_to_nodes(scene, result, ct, outputs=ALL)


# ------------------------------------------------------------------------------------------- export
def test_export_writes_every_output(scene, tmp_path):
    import SimpleITK as sitk
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct, outputs=ALL)
    written = export.export_result_nodes(scene, nodes, tmp_path / "out")
    names = {p.name for p in written}
    assert {"saliency.nrrd", "attention_fused.nrrd", "difference_lesion.nrrd", "counterfactual_no_lesion.nrrd",
            "probabilities.csv", "slice_weights.csv", "peak.mrk.json", "summary.json"} <= names
    image = sitk.ReadImage(str(tmp_path / "out" / "saliency.nrrd"))
    assert image.GetPixelID() == sitk.sitkFloat32        # the 8-bit display map, written as values
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), result.saliency.array, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-9)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), volume.direction, atol=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["predicted_class"] == "left"
    assert summary["probabilities"]["left"] == pytest.approx(0.6)
    with pytest.raises(FileExistsError):
        export.export_result_nodes(scene, nodes, tmp_path / "out")
    export.export_result_nodes(scene, nodes, tmp_path / "out", overwrite=True)


# ----------------------------------------------------------------------------- transfer and engine
def test_transfer_round_trip(tmp_path):
    volume = make_volume()
    transfer.save_volume(volume, tmp_path / "v.npz")
    back = transfer.load_volume(tmp_path / "v.npz")
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_array_equal(back.ijk_to_lps(), volume.ijk_to_lps())
    result = make_result(volume)
    transfer.save_result(result, tmp_path / "r.npz")
    again = transfer.load_result(tmp_path / "r.npz", input_volume=volume)
    assert again.class_names == result.class_names and again.peak_territory == "MCA left"
    np.testing.assert_array_equal(again.probabilities, result.probabilities)
    np.testing.assert_array_equal(again.slice_weights, result.slice_weights)
    np.testing.assert_array_equal(again.counterfactuals["lesion"].array, result.counterfactuals["lesion"].array)
    np.testing.assert_array_equal(again.attention["fused"].ijk_to_lps(), volume.ijk_to_lps())
    assert again.peak_index == result.peak_index and again.model_card == result.model_card
    with pytest.raises(ValueError, match="input"):
        transfer.load_result(tmp_path / "r.npz")
    transfer.save_result(result, tmp_path / "small.npz", outputs=ACATLib.DEFAULT_OUTPUTS)
    small = transfer.load_result(tmp_path / "small.npz", input_volume=volume)
    assert list(small.attention) == ["fused"] and small.counterfactuals == {} and small.saliency is not None
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "r.npz").stat().st_size / 3


def test_engine_is_called_with_analyze_arguments(monkeypatch, tmp_path):
    calls = []

    def analyze(volume_or_path, model="brain", coverage="full", steps=20, alpha=100.0, device="auto",
                smoothing=2.0, progress=None):
        calls.append(dict(model=model, coverage=coverage, steps=steps, alpha=alpha, device=device,
                          smoothing=smoothing))
        progress("counterfactuals", 0.5)
        progress("done", 1.5)
        return "result"

    monkeypatch.setattr(engine, "load_engine", lambda spec: analyze)
    seen = []
    assert engine.run_engine("vol", {"model": "lung", "device": "cpu", "steps": "3", "alpha": 5},
                             report=lambda f, s: seen.append((f, s))) == "result"
    assert calls == [dict(model="lung", coverage="full", steps=3, alpha=5.0, device="cpu", smoothing=SHOWN_SMOOTHING)]
    engine.run_engine("vol", {"model": "lung", "smoothing": 0}, report=lambda f, s: None)   # the paper's map
    assert calls[-1]["smoothing"] == 0.0
    assert seen == [(0.5, engine.STAGE_LABELS["counterfactuals"]), (1.0, engine.STAGE_LABELS["done"])]
    with pytest.raises(ValueError, match="device"):
        engine.check_options({"device": "gpu"})
    with pytest.raises(ValueError, match="unknown ACAT option"):
        engine.check_options({"counterfactual_steps": 3})
    for bad in (-1, 50, float("nan")):
        with pytest.raises(ValueError, match="smoothing"):
            engine.check_options({"smoothing": bad})
    monkeypatch.undo()
    import ACATCore
    assert engine.load_engine() is ACATCore.analyze


# ------------------------------------------------------------------------------- background runner
FAKE_ENGINE = '''
import time
import numpy as np
from ACATCore.errors import InputError
from ACATCore.result import AnalysisResult

def analyze(volume_or_path, model="brain", coverage="full", steps=20, alpha=100.0, device="auto",
            smoothing=2.0, progress=None, cancel=None):
    v = volume_or_path
    if model == "bad":
        raise InputError("this is not a CT volume; load a CT")
    if model == "crash":
        raise RuntimeError("boom")
    if model == "slow":
        progress("read", 0.01)
        time.sleep(60)
    for i, stage in enumerate(("read", "classify", "counterfactuals", "attention")):
        if progress is not None:
            progress(stage, (i + 1) / 5)
    sal = np.zeros(v.shape, np.float32)
    sal[1, 2, 3] = 1.0
    return AnalysisResult(input=v, class_names=["a", "b"], probabilities=np.array([0.25, 0.75]),
                          saliency=v.with_array(sal), attention={"fused": v.with_array(sal * 2)},
                          counterfactuals={"a": v.with_array(v.array.astype(np.float32) + 1)},
                          slice_weights=np.arange(v.shape[0], dtype=float), slices_seen=np.arange(v.shape[0]),
                          peak_index=(3, 2, 1), model_card={"model_name": model, "steps": steps, "alpha": alpha,
                                                            "coverage": coverage, "device": device})
'''


@pytest.fixture()
def fake_engine(tmp_path):
    (tmp_path / "fake_acat_engine.py").write_text(FAKE_ENGINE)
    return {"engine": "fake_acat_engine:analyze", "sys_path": [str(tmp_path)] + default_sys_path()}


def test_background_run_returns_the_result(fake_engine):
    volume = make_volume(shape=(4, 5, 6))
    job = BackgroundAnalysis(volume, {"model": "demo", "device": "cpu", "steps": 7, "alpha": 3.0,
                                      "coverage": "sampled"}, outputs=ALL, **fake_engine).start()
    events = []
    result = job.wait(timeout=60, on_progress=events.append)
    assert job.state == "done" and not job.work_dir.exists()
    assert result.model_card == {"model_name": "demo", "steps": 7, "alpha": 3.0, "coverage": "sampled",
                                 "device": "cpu"}
    np.testing.assert_array_equal(result.probabilities, [0.25, 0.75])
    assert result.saliency.array[1, 2, 3] == 1.0 and result.input is volume
    fractions = [e.fraction for e in events if e.fraction is not None]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] >= 0.98
    assert engine.STAGE_LABELS["counterfactuals"] in [e.stage for e in events]
    assert list(result.counterfactuals) == ["a"]
    scene = make_scene()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    nodes = analysis.finish_background(scene, job, ct)
    assert nodes.predicted_class == "b" and "counterfactual:a" in nodes.volumes


def test_background_run_brings_back_only_the_default_outputs(fake_engine):
    volume = make_volume(shape=(4, 5, 6))
    job = BackgroundAnalysis(volume, {"model": "demo"}, **fake_engine).start()
    result = job.wait(timeout=60)
    assert job.outputs == list(ACATLib.DEFAULT_OUTPUTS)
    assert result.counterfactuals == {} and list(result.attention) == ["fused"]


@pytest.mark.parametrize("model,message", [("bad", "this is not a CT volume; load a CT"),
                                           ("crash", "RuntimeError: boom")])
def test_background_run_reports_errors(fake_engine, model, message):
    job = BackgroundAnalysis(make_volume(shape=(4, 5, 6)), {"model": model}, **fake_engine).start()
    with pytest.raises(RuntimeError, match="failed"):
        job.wait(timeout=60)
    assert job.state == "failed" and job.error == message
    assert job.process.returncode == (2 if model == "bad" else 1)
    with pytest.raises(RuntimeError):
        job.result


# ---------------------------------------------------------------------------------- dependencies
def test_acatlib_import_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, %r); import ACATLib, ACATLib.runner, ACATLib.export, "
            "ACATLib.dependencies, ACATLib.analysis, ACATLib.display, ACATLib.outputs; "
            "print('torch' in sys.modules)") % str(ROOT / "ACATSlicer")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------- the logic and the widget's MRML side
def test_logic_process_in_this_process(scene, monkeypatch, tmp_path):
    (tmp_path / "fake_acat_engine2.py").write_text(FAKE_ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(engine, "load_engine", lambda spec="": __import__("fake_acat_engine2").analyze)
    ct = ACATLib.node_from_volume(scene, make_volume(shape=(4, 5, 6)), "CT")
    stages = []
    nodes = analysis.process(scene, ct, {"model": "lung", "steps": 4}, report=lambda f, s: stages.append(s))
    assert engine.STAGE_LABELS["attention"] in stages
    assert nodes.predicted_class == "b" and nodes.overlay_kinds() == ["saliency", "attention:fused"]
    assert export.export_result_nodes(scene, nodes, tmp_path / "out")
    assert analysis.model_spec("brain") == "brain" and analysis.model_spec("file", tmp_path) == str(tmp_path)
    with pytest.raises(ValueError):
        analysis.model_spec("file", Path("."))
    with pytest.raises(ValueError, match="input volume"):
        analysis.process(scene, None, {})


def test_background_run_with_the_real_engine(scene, tmp_path):
    """End to end through ACATLib.analysis.start_background: the worker process (this Python standing
    in for PythonSlicer) runs the real ACATCore.analyze with a tiny untrained lung bundle on the real
    chest CT shipped with slicerio; the result comes back onto the input node's exact geometry."""
    from ACATCore.io import read_volume
    from pipeline_helpers import chest_ct_path, make_bundle
    bundle = make_bundle(tmp_path / "bundle", "lung")
    ct = ACATLib.node_from_volume(scene, read_volume(chest_ct_path()), "CTChest")
    job = analysis.start_background(ct, dict(model=str(bundle), device="cpu", steps=1, coverage="sampled"),
                                    outputs=ALL, python_executable=sys.executable)
    events = []
    result = job.wait(timeout=180, on_progress=events.append)
    assert job.process.returncode == 0, job.log
    assert engine.STAGE_LABELS["counterfactuals"] in [e.stage for e in events]
    nodes = analysis.finish_background(scene, job, ct)
    assert sum(nodes.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert nodes.predicted_class in ("normal", "findings")
    for node in nodes.volumes.values():
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(ct))
    assert set(result.slices_seen) <= set(range(ct.GetImageData().GetDimensions()[2]))
    assert nodes.peak_point is not None and nodes.slice_weight_chart is not None


def add_slice_views(scene, names=("Red", "Green")):
    for name in names:
        comp = slicer.vtkMRMLSliceCompositeNode()
        comp.SetName(name)
        scene.AddNode(comp)
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        scene.AddNode(slice_node)


def test_display_shows_outputs_in_the_slice_views(scene):
    """What the widget's overlay selector, opacity and threshold sliders and jump button do."""
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    add_slice_views(scene)
    result = make_result(volume)
    nodes = ACATLib.result_to_nodes(scene, result, ct, outputs=ALL)
    display.show_output(scene, nodes, "saliency", 0.4, 80.0)
    for name in ("Red", "Green"):
        composite = scene.GetFirstNodeByName(name)
        assert composite.GetBackgroundVolumeID() == ct.GetID()
        assert composite.GetForegroundVolumeID() == nodes.saliency.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert nodes.saliency.GetDisplayNode().GetLowerThreshold() == pytest.approx(
        np.percentile(result.saliency.array, 80) * 255, abs=1e-3)
    display.show_output(scene, nodes, "counterfactual:lesion", 0.4, 80.0)   # a scan replaces the CT
    composite = scene.GetFirstNodeByName("Red")
    assert composite.GetBackgroundVolumeID() == nodes.volumes["counterfactual:lesion"].GetID()
    assert composite.GetForegroundVolumeID() is None
    display.set_opacity(scene, 0.7)
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    display.set_threshold(nodes, "saliency", 99.0)
    assert nodes.saliency.GetDisplayNode().GetLowerThreshold() == pytest.approx(
        np.percentile(result.saliency.array, 99) * 255, abs=1e-3)
    peak = display.jump_to_peak(scene, nodes)
    red = scene.GetFirstNodeByClass("vtkMRMLSliceNode")
    np.testing.assert_allclose([red.GetSliceToRAS().GetElement(r, 3) for r in range(3)], peak, atol=1e-6)
    nodes.peak_point = None
    with pytest.raises(RuntimeError, match="peak"):
        display.jump_to_peak(scene, nodes)


def test_the_panel_says_when_acat_gives_its_baselines_probabilities(scene):
    """The probability table carries whether ACAT equals its baseline; the nodes found again from a saved
    scene keep it, and the results panel's prediction line adds the note only then."""
    from ACATCore.result import SAME_AS_BASELINE_NOTE
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    for base, same in (([0.1, 0.6, 0.2, 0.1], True), ([0.3, 0.3, 0.2, 0.2], False)):
        result = make_result(volume)
        result.baseline_probabilities = np.array(base)
        nodes = ACATLib.result_to_nodes(scene, result, ct)
        again = ACATLib.ResultNodes.from_scene(scene, nodes.saliency)
        assert nodes.same_as_baseline is same and again.same_as_baseline is same
        label = again.prediction_label()
        assert label.startswith("<b>left</b>") and (SAME_AS_BASELINE_NOTE in label) is same


def test_result_nodes_are_found_again_from_any_of_them(scene):
    """After a saved scene is loaded, the widget rebuilds the result set from the parameter node."""
    volume = make_volume()
    ct = ACATLib.node_from_volume(scene, volume, "CT")
    first = ACATLib.result_to_nodes(scene, make_result(volume), ct)
    second = ACATLib.result_to_nodes(scene, make_result(volume), ct, outputs=ALL, replace=False)
    again = ACATLib.ResultNodes.from_scene(scene, second.volumes["attention:late"])
    assert again.input_node is ct and again.volumes == second.volumes
    assert again.overlay_kinds() == second.overlay_kinds()
    assert (again.probability_table, again.slice_weight_table, again.slice_weight_series,
            again.slice_weight_chart, again.peak_point) == (
        second.probability_table, second.slice_weight_table, second.slice_weight_series,
        second.slice_weight_chart, second.peak_point)
    assert again.predicted_class == "left" and again.class_names == second.class_names
    np.testing.assert_array_equal(again.probabilities, second.probabilities)
    assert ACATLib.ResultNodes.from_scene(scene, first.saliency).saliency is first.saliency
    assert ACATLib.ResultNodes.from_scene(scene, ct) is None
