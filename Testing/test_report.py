"""The visual report, the JSON document and its schema, and atomic output folders (no models needed)."""
from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

from ACATCore.errors import ACATError
from ACATCore.io import read_volume
from ACATCore.outputs import AtomicFolder, check_output_folder
from ACATCore.report import (load_schema, make_panels, make_report, result_to_json, save_result, validate_json,
                             write_summary_csv)
from ACATCore.result import ATTENTION_NAMES, AnalysisResult
from ACATCore.volume import Volume
from pipeline_helpers import chest_ct_path, geometry_equal


def synthetic_result(ct: Volume, centre=(40, 70, 17)) -> AnalysisResult:
    """A result with a known saliency blob at voxel ``centre`` (i, j, k), no model needed."""
    K, J, I = ct.shape
    k, j, i = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    ci, cj, ck = centre
    blob = np.exp(-(((i - ci) / 6.0) ** 2 + ((j - cj) / 6.0) ** 2 + ((k - ck) / 1.5) ** 2)).astype(np.float32)
    attention = {n: ct.with_array((0.3 + 0.5 * blob ** (0.5 + s)).astype(np.float32))
                 for s, n in enumerate(ATTENTION_NAMES)}
    cf_change = -200.0 * blob
    result = AnalysisResult(
        input=ct, class_names=["normal", "findings"], probabilities=np.array([0.3, 0.7]),
        saliency=ct.with_array(blob), attention=attention,
        counterfactuals={"normal": ct.with_array((ct.array + cf_change).astype(np.float32)),
                         "findings": ct.with_array(ct.array.astype(np.float32))},
        slice_weights=np.linspace(0.01, 0.05, K), slices_seen=np.arange(K),
        baseline_probabilities=np.array([0.4, 0.6]), peak_index=(ci, cj, ck),
        peak_lps=tuple(ct.index_to_physical(centre)), model_card={
            "task": "lung", "model_name": "acat_lung", "sha256": "0" * 64,
            "preprocessing": {"window": [-1000, 400], "slices": 11, "size": [128, 128]}},
        timings={"read": 0.1, "counterfactuals": 1.0})
    result.settings = {"coverage": "full", "steps": 20, "alpha": 100.0, "offsets": [0.0, 0.5], "device": "cpu"}
    return result


@pytest.fixture(scope="module")
def ct():
    return read_volume(chest_ct_path())


def test_report_files_and_overlays(ct, tmp_path):
    result = synthetic_result(ct)
    html = make_report(result, tmp_path / "report")
    page = html.read_text()
    for png in ("figure2_attention.png", "figure3_saliency.png", "counterfactuals.png", "slice_weights.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000 and png in page
    assert "findings (70.0%)" in page and "not for diagnosis" in page
    panels = make_panels(result)
    base = panels["ct"]
    for name in ["saliency_p95", "saliency", "saliency_mean", "change_normal"] + \
            [f"attention_{n}" for n in ATTENTION_NAMES]:
        assert panels[name].shape == base.shape
        assert np.abs(panels[name] - base).max() > 0.1, name
    assert np.array_equal(panels["counterfactual_findings"], base)    # no change: same as the CT


def test_report_and_json_say_when_acat_gives_its_baselines_probabilities(ct, tmp_path):
    """An ACAT whose probabilities equal its baseline's (gates 0): result.json and the report say that its
    attention does not change the prediction; a differing ACAT, or one without a baseline, does not."""
    from ACATCore.result import SAME_AS_BASELINE_NOTE
    for base, same in (([0.3, 0.7], True), ([0.3 + 1e-9, 0.7 - 1e-9], True), ([0.4, 0.6], False), (None, False)):
        result = synthetic_result(ct)
        result.baseline_probabilities = None if base is None else np.array(base)
        assert result.same_as_baseline is same, base
        doc = result_to_json(result)
        assert doc["same_as_baseline"] is same and validate_json(doc) == []
        page = make_report(result, tmp_path / f"report_{same}_{base is None}").read_text()
        assert (SAME_AS_BASELINE_NOTE in page.replace("&#x27;", "'")) is same, base


def test_p95_panel_marks_exactly_the_top_voxels(ct):
    """Fig. 2b: only voxels at or above the 95th percentile of the saliency are coloured."""
    result = synthetic_result(ct)
    panels = make_panels(result)
    sal = result.saliency.array
    thr = np.percentile(sal[sal > 0], 95)
    k = result.peak_index[2]
    top = sal[k] >= thr
    # the chest CT has direction diag(-1, -1, 1): the radiological view flips rows and columns
    top_view = top[::-1, ::-1]
    changed = np.abs(panels["saliency_p95"] - panels["ct"]).max(axis=2) > 1e-6
    assert top_view.any()
    assert np.array_equal(changed & ~top_view, np.zeros_like(changed))
    assert changed[top_view].mean() > 0.9


def test_view_does_not_depend_on_storage_order(ct):
    """The same anatomy stored with i reversed shows the same report panels."""
    result = synthetic_result(ct)
    flipped_ct = Volume(np.ascontiguousarray(ct.array[:, :, ::-1]), spacing=ct.spacing,
                        origin=ct.index_to_physical((ct.shape[2] - 1, 0, 0)),
                        direction=ct.direction @ np.diag([-1.0, 1.0, 1.0]))
    i, j, k = result.peak_index
    flipped = synthetic_result(flipped_ct, centre=(ct.shape[2] - 1 - i, j, k))
    a, b = make_panels(result), make_panels(flipped)
    for name in ("ct", "saliency_p95", "attention_fused"):
        assert np.allclose(a[name], b[name], atol=1e-6), name


def test_json_document_follows_the_schema(ct):
    result = synthetic_result(ct)
    doc = result_to_json(result, files={"saliency": "saliency.nrrd"})
    assert validate_json(doc) == []
    assert doc["peak"]["index_ijk"] == [40, 70, 17] and doc["predicted_class"] == "findings"
    ras = np.diag([-1, -1, 1]) @ np.asarray(doc["peak"]["lps_mm"])
    assert np.allclose(doc["peak"]["ras_mm"], ras)
    json.dumps(doc)                                            # plain JSON types only
    for mutate, where in [
        (lambda d: d.pop("probabilities"), "probabilities"),
        (lambda d: d["probabilities"].update(normal=1.5), "maximum"),
        (lambda d: d.__setitem__("slices_seen", ["a"]), "slices_seen"),
        (lambda d: d["peak"].__setitem__("territory", "MCA_middle"), "territory"),
        (lambda d: d["input"].__setitem__("spacing_mm", [1, 1]), "spacing_mm"),
        (lambda d: d.__setitem__("coverage", "half"), "coverage"),
    ]:
        bad = copy.deepcopy(doc)
        mutate(bad)
        errors = validate_json(bad)
        assert errors and any(where in e for e in errors), (where, errors)
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_save_result_round_trip(ct, tmp_path):
    result = synthetic_result(ct)
    out = save_result(result, tmp_path / "out", report=False)
    doc = json.loads((out / "result.json").read_text())
    assert validate_json(doc) == [] and "report" not in doc["files"]
    for key, rel in doc["files"].items():
        vol = read_volume(out / rel)
        assert geometry_equal(vol, ct), key
    assert np.allclose(read_volume(out / "saliency.nrrd").array, result.saliency.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_rules_and_atomic_replace(tmp_path):
    out = tmp_path / "out"
    check_output_folder(out)                      # missing: fine
    out.mkdir()
    check_output_folder(out)                      # empty: fine
    (out / "old.txt").write_text("old")
    with pytest.raises(ACATError, match="--overwrite"):
        check_output_folder(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ACATError, match="file"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(RuntimeError):
        with AtomicFolder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("failed while writing")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
    with AtomicFolder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("done")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]


def test_summary_csv_has_every_column(tmp_path):
    rows = [{"case": "a", "status": "ok", "p(normal)": 0.2}, {"case": "b", "status": "error", "error": "bad"}]
    path = write_summary_csv(rows, tmp_path / "summary.csv")
    back = list(csv.DictReader(path.open()))
    assert list(back[0]) == ["case", "status", "p(normal)", "error"]
    assert back[1]["error"] == "bad" and back[1]["p(normal)"] == ""


@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 1, 0)], ids=["coronal", "sagittal"])
def test_report_of_a_volume_stored_as_coronal_or_sagittal_planes(ct, tmp_path, perm):
    """The report shows axial slices whatever the storage plane (no IndexError), the same panels."""
    from ACATCore.preprocessing import canonical_axes
    axial = synthetic_result(ct)
    # the same voxels stored with the array axes permuted: direction columns follow (i, j, k)
    order = [2 - p for p in perm][::-1]                 # numpy perm -> (i, j, k) columns
    stored = Volume(np.ascontiguousarray(np.transpose(ct.array, perm)),
                    spacing=tuple(np.asarray(ct.spacing)[order]), origin=ct.origin,
                    direction=ct.direction[:, order])
    assert canonical_axes(stored.direction)[0] != (0, 1, 2)
    i, j, k = axial.peak_index
    kji = np.array([k, j, i])[list(perm)]
    result = synthetic_result(stored, centre=(int(kji[2]), int(kji[1]), int(kji[0])))
    result.slices_seen = np.arange(ct.shape[0])
    result.slice_weights = np.linspace(0.01, 0.05, ct.shape[0])
    make_report(result, tmp_path / "report")
    a, b = make_panels(axial), make_panels(result)
    assert a["ct"].shape == b["ct"].shape
    assert np.allclose(a["ct"], b["ct"], atol=1e-6)


def test_atomic_folder_keeps_a_symlink_and_cleans_stale_temporaries(tmp_path):
    import os
    import subprocess
    import sys
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".real.tmp-{dead.pid}-abcdefgh"
    stale.mkdir()
    with AtomicFolder(link, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and [p.name for p in real.iterdir()] == ["new.txt"]
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert os.readlink(link) == str(real)


def test_output_checks_before_any_work(tmp_path):
    from ACATCore.outputs import check_output_overlap
    (tmp_path / "file").write_text("x")
    with pytest.raises(ACATError, match="is a file"):
        check_output_folder(tmp_path / "file" / "out")
    with pytest.raises(ACATError, match="longer than"):
        check_output_folder(tmp_path / ("o" * 300))
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "scan.nrrd"
    scan.write_text("x")
    for out, what in [(data, "contains"), (scan, "is the input"), (tmp_path, "contains")]:
        with pytest.raises(ACATError, match=what):
            check_output_overlap(out, [scan])
    with pytest.raises(ACATError, match="lies inside"):
        check_output_overlap(data / "out", [data])
    check_output_overlap(tmp_path / "elsewhere", [scan])
