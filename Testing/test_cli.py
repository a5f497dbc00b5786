"""The ``acat`` command end to end on real CT: outputs, geometry, JSON schema, errors, batch, safety."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ACATCore.analysis_maps import SHOWN_SMOOTHING
from ACATCore.cli import main
from ACATCore.io import read_volume, write_dicom_series, write_volume
from ACATCore.report import validate_json
from ACATCore.result import ATTENTION_NAMES
from ACATCore.volume import Volume
from pipeline_helpers import chest_ct_path, geometry_equal, make_bundle, one_thread

FAST = ["--coverage", "sampled", "--steps", "2", "--quiet"]


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle"), "lung")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*"))}


def map_paths(out: Path, ext: str) -> list:
    names = ["saliency"] + [f"attention_{n}" for n in ATTENTION_NAMES] + \
            ["counterfactual_normal", "counterfactual_findings"]
    return [out / f"{n}{ext}" for n in names]


def test_console_script_end_to_end_on_the_chest_ct(bundle, tmp_path):
    """The installed ``acat`` script, full coverage, on slicerio's real chest CT (the report is
    tested in-process below)."""
    script = Path(sys.executable).with_name("acat")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "ACATCore.cli"]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + ["analyze", str(chest_ct_path()), "--model", str(bundle), "--out", str(out),
                                 "--steps", "2", "--json", "--no-report"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert validate_json(doc) == []
    assert doc["coverage"] == "full" and len(doc["slices_seen"]) == 34
    saved = json.loads((out / "result.json").read_text())
    assert validate_json(saved) == [] and saved["probabilities"] == doc["probabilities"]
    ct = read_volume(chest_ct_path())
    for path in map_paths(out, ".nrrd"):
        vol = read_volume(path)
        assert geometry_equal(vol, ct, exact=True), path.name
    for key, rel in saved["files"].items():
        assert (out / rel).is_file(), key


def test_report_images_exist_and_overlays_differ(bundle, tmp_path, capsys):
    from matplotlib.image import imread
    out = tmp_path / "out"
    code, stdout, _ = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, *FAST], capsys)
    assert code == 0 and "report:" in stdout
    report = out / "report"
    html = (report / "index.html").read_text()
    for png in ("figure2_attention.png", "figure3_saliency.png", "counterfactuals.png", "slice_weights.png"):
        assert (report / png).stat().st_size > 1000 and png in html
        assert imread(report / png).ndim == 3
    ct = imread(report / "panels" / "ct.png")[..., :3]
    for name in ["saliency_p95", "saliency_mean"] + [f"attention_{n}" for n in ATTENTION_NAMES]:
        panel = imread(report / "panels" / f"{name}.png")[..., :3]
        assert panel.shape == ct.shape
        assert np.abs(panel - ct).max() > 0.1, name          # an overlay is visible
    assert (report / "panels" / "saliency_p95.png").exists()


def test_nifti_output_keeps_the_geometry(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, "--format", "nifti",
                      "--no-report", *FAST], capsys)
    assert code == 0
    ct = read_volume(chest_ct_path())
    for path in map_paths(out, ".nii.gz"):
        assert geometry_equal(read_volume(path), ct, exact=False, tol=1e-4), path.name
    assert not (out / "report").exists()


def test_dicom_series_written_by_the_test(bundle, tmp_path, capsys):
    ct = read_volume(chest_ct_path())
    dicom = tmp_path / "dicom"
    write_dicom_series(ct, dicom)
    series = read_volume(dicom)
    out = tmp_path / "out"
    code, stdout, _ = run(["analyze", dicom, "--model", bundle, "--out", out, *FAST, "--json"], capsys)
    assert code == 0
    doc = json.loads(stdout)
    assert validate_json(doc) == [] and doc["input"]["shape_kji"] == list(ct.shape)
    for path in map_paths(out, ".nrrd"):
        assert geometry_equal(read_volume(path), series, exact=True), path.name
    assert len(list(dicom.iterdir())) == ct.shape[0]          # the input folder is untouched


def test_existing_output_needs_overwrite(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(out)
    code, _, err = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, *FAST], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == before
    code, _, _ = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, *FAST, "--no-report",
                      "--overwrite"], capsys)
    assert code == 0 and not (out / "keep.txt").exists() and (out / "result.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # no temporary folder left


def test_interrupt_while_writing_leaves_nothing(bundle, tmp_path, capsys, monkeypatch):
    import ACATCore.report as report

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "make_report", boom)
    out = tmp_path / "out"
    code, _, err = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, *FAST], capsys)
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def _bad_inputs(folder: Path) -> dict:
    """name -> path of each kind of bad input of the data issue's list."""
    ct = read_volume(chest_ct_path())
    cases = {}
    import SimpleITK as sitk
    cases["2-D image"] = folder / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ct.array[10]), str(cases["2-D image"]))
    cases["4-D image"] = folder / "four.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 6, 8, 8), np.int16), isVector=False), str(cases["4-D image"]))
    cases["colour"] = folder / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 8, 8, 3), np.uint8), isVector=True), str(cases["colour"]))
    nan = ct.array.astype(np.float32)
    nan[5, 5, 5] = np.nan
    cases["NaN"] = folder / "nan.nrrd"
    write_volume(ct.with_array(nan), cases["NaN"])
    cases["constant"] = folder / "constant.nrrd"
    write_volume(ct.with_array(np.full(ct.shape, 40, np.int16)), cases["constant"])
    cases["MR range"] = folder / "mr.nrrd"
    write_volume(ct.with_array(np.clip(ct.array + 1024, 0, None).astype(np.int16)), cases["MR range"])
    cases["too few slices"] = folder / "thin.nrrd"
    write_volume(Volume(ct.array[:2]), cases["too few slices"])
    good = folder / "good.nrrd"
    write_volume(ct, good, compress=False)
    cases["truncated"] = folder / "truncated.nrrd"
    cases["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["corrupt header"] = folder / "header.nrrd"
    cases["corrupt header"].write_bytes(b"NRRD0004\ntype: nonsense\ndimension: 9x\n\n" + b"\0" * 100)
    cases["missing"] = folder / "missing.nrrd"
    empty = folder / "empty_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    cases["DICOM folder without images"] = empty
    good.unlink()
    return cases


def test_each_bad_input_exits_2_with_one_line(bundle, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name, path in _bad_inputs(tmp_path / "in").items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, stdout, err = run(["analyze", path, "--model", bundle, "--out", out, *FAST], capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("acat: error: "), (name, err)
        assert not out.exists(), name


def test_bad_model_and_options_exit_2(bundle, tmp_path, capsys):
    ct = chest_ct_path()
    corrupted = tmp_path / "corrupted"
    shutil.copytree(bundle, corrupted)
    data = bytearray((corrupted / "acat.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (corrupted / "acat.safetensors").write_bytes(bytes(data))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundle, incomplete)
    (incomplete / "autoencoder.safetensors").unlink()
    for argv, needle in [
        (["--model", corrupted], "SHA-256"),
        (["--model", incomplete], "autoencoder"),
        (["--model", "no_such_model"], "no_such_model"),
        (["--model", bundle, "--steps", "-3"], "steps"),
        (["--model", bundle, "--device", "cuda:7"], "device"),
        (["--model", bundle, "--smoothing", "-1"], "smoothing"),
        (["--model", bundle, "--smoothing", "nan"], "smoothing"),
    ]:
        out = tmp_path / "out"
        code, _, err = run(["analyze", ct, "--out", out, *FAST, *argv], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()
    code, _, err = run(["info", corrupted], capsys)
    assert code == 2 and "SHA-256" in err


def test_batch_over_a_folder_and_a_datalist(bundle, tmp_path, capsys):
    ct = read_volume(chest_ct_path())
    cases = tmp_path / "cases"
    write_volume(ct, cases / "chest_a.nrrd")
    write_volume(Volume(np.zeros((3, 8, 8), np.int16)), cases / "broken.nrrd")
    write_dicom_series(ct, cases / "chest_dicom")
    out = tmp_path / "out"
    code, _, err = run(["analyze", cases, "--model", bundle, "--out", out, *FAST, "--no-report"], capsys)
    assert code == 2 and "broken" in err                     # one case failed: exit 2, the others done
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["case"] for r in rows] == ["broken", "chest_a", "chest_dicom"]
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert rows[1]["predicted_class"] in ("normal", "findings") and float(rows[1]["probability"]) >= 0.5
    for r in rows[1:]:
        doc = json.loads((out / r["case"] / "result.json").read_text())
        assert validate_json(doc) == []
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"class_names": ["a", "b"], "test": [{"image": "cases/chest_a.nrrd", "label": 0}]}))
    out2 = tmp_path / "out2"
    code, stdout, _ = run(["analyze", datalist, "--model", bundle, "--out", out2, *FAST, "--no-report", "--json"],
                          capsys)
    assert code == 0 and [c["case"] for c in json.loads(stdout)["cases"]] == ["chest_a"]


def test_info_prints_the_model_card(bundle, capsys):
    code, out, _ = run(["info", bundle], capsys)
    assert code == 0 and "acat_lung" in out and "window [-1000.0, 400.0]" in out and "(verified)" in out
    code, out, _ = run(["info", bundle / "classifier.safetensors", "--json"], capsys)
    assert code == 0 and json.loads(out)["model_name"] == "lung_resnet50"


def test_synth_delegates_to_the_generator(tmp_path, capsys):
    code, _, _ = run(["synth", "--task", "lung", "--n", "1", "--seed", "3", "--out", tmp_path / "synth"], capsys)
    assert code == 0 and (tmp_path / "synth" / "datalist.json").exists()


def test_demo_runs_shipped_bundles_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    """``make demo`` with only a lung bundle shipped: analyses the chest CT, reports the brain one missing."""
    from ACATCore import demo
    resources = tmp_path / "Resources"
    make_bundle(resources / "models" / "lung", "lung")
    monkeypatch.setenv("ACAT_RESOURCES", str(resources))
    code = demo.main(["--out", str(tmp_path / "demo"), "--coverage", "sampled"])
    out, err = capsys.readouterr()
    assert code == 0
    assert (tmp_path / "demo" / "lung" / "report" / "index.html").exists()
    assert "no shipped brain model" in out and "report:" in out
    assert not (tmp_path / "demo" / "brain").exists()


def test_search_defaults_fista_7_steps_and_gd_is_the_papers_20(bundle, tmp_path, capsys):
    """Default: FISTA, 7 steps, no early stop; --solver gd: the paper's gradient descent, 20 steps;
    what ran is in result.json's settings."""
    for extra, optimizer, steps in (([], "fista", 7), (["--solver", "gd"], "sgd", 20),
                                    (["--solver", "gd", "--steps", "3"], "sgd", 3)):
        out = tmp_path / f"out_{optimizer}_{steps}"
        code, _, err = run(["analyze", chest_ct_path(), "--model", bundle, "--out", out, "--coverage", "sampled",
                            "--quiet", "--no-report", *extra], capsys)
        assert code == 0, err
        settings = json.loads((out / "result.json").read_text())["settings"]
        assert settings["search"]["optimizer"] == optimizer and settings["steps"] == steps
        assert settings["early_stop"] is None and settings["smoothing"] == SHOWN_SMOOTHING


def test_early_stop_option_parses_probabilities_and_none(capsys):
    from ACATCore import cli
    parser = cli.build_parser()
    assert parser.parse_args(["analyze", "x", "--model", "lung", "--out", "o"]).early_stop is None
    assert parser.parse_args(["analyze", "x", "--model", "lung", "--out", "o", "--early-stop", "none"]).early_stop is None
    assert parser.parse_args(["analyze", "x", "--model", "lung", "--out", "o", "--early-stop", "0.99"]).early_stop == 0.99
    for bad in ("0", "1.5", "soon"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["analyze", "x", "--model", "lung", "--out", "o", "--early-stop", bad])
        assert exc.value.code == 2
        assert "probability" in capsys.readouterr().err


def test_output_that_holds_the_input_is_refused_even_with_overwrite(bundle, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "scan.nrrd"
    shutil.copy(chest_ct_path(), scan)
    before = snapshot(data)
    for out in (data, scan, tmp_path):
        code, _, err = run(["analyze", scan, "--model", bundle, "--out", out, *FAST, "--overwrite"], capsys)
        assert code == 2 and "input" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(data) == before


def test_analyze_says_when_acat_gives_its_baselines_probabilities(tmp_path, capsys):
    """An ACAT that kept its start (the shipped brain bundle's) predicts as its baseline: the printed
    result says so, so nobody reads its attention masks as the reason; an ACAT that differs does not."""
    from ACATCore.cli import _print_result
    from ACATCore.result import SAME_AS_BASELINE_NOTE, AnalysisResult
    vol = Volume(array=np.zeros((2, 3, 3), np.float32))
    cases = (([0.1, 0.9], [0.1, 0.9], True), ([0.2, 0.8], [0.1, 0.9], False), ([0.1, 0.9], None, False))
    for acat, base, said in cases:
        result = AnalysisResult(input=vol, class_names=["normal", "findings"], probabilities=np.array(acat),
                                saliency=vol, attention={}, counterfactuals={}, slice_weights=np.ones(2),
                                slices_seen=np.arange(2),
                                baseline_probabilities=None if base is None else np.array(base))
        _print_result(result, tmp_path)
        assert (SAME_AS_BASELINE_NOTE in capsys.readouterr().out) is said, (acat, base)
    for spec, why in (({"lung_box": True}, " (those holding the lungs)"),
                      ({"brain_extraction": True}, " (those holding the brain)"), ({}, "")):
        result.model_card = {"preprocessing": spec}          # the slices a model that finds its organ skips
        _print_result(result, tmp_path)
        assert f"model saw 2 of 2 slices{why}\n" in capsys.readouterr().out


def test_acat_alone_prints_usage_on_stderr(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and out == "" and err.startswith("usage: acat") and "acat: error:" in err


@pytest.mark.parametrize("key", ["lung_extraction", "lung_box"])
def test_a_lung_model_that_finds_the_lungs_refuses_a_head_ct(tmp_path, capsys, key):
    from ACATCore.resources import resource_path
    lungs_only = make_bundle(tmp_path / "bundle", "lung", preprocessing_extra={key: True})
    head = resource_path("data", "ACATSampleHeadCT.nrrd")
    code, _, err = run(["analyze", head, "--model", lungs_only, "--out", tmp_path / "head", *FAST], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no lungs were found" in err and "brain model" in err
    assert not (tmp_path / "head").exists()
    code, _, err = run(["analyze", chest_ct_path(), "--model", lungs_only, "--out", tmp_path / "chest", *FAST,
                        "--coverage", "full"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "chest" / "result.json").read_text())
    assert result["model"]["preprocessing"][key] is True
    from ACATCore.io import read_volume
    from ACATCore.lung_mask import find_lungs, lung_slices
    chest = read_volume(chest_ct_path())                          # its slice axis runs inferior -> superior
    first, count = lung_slices(find_lungs(np.asarray(chest.array), chest.spacing)) if key == "lung_box" else (0, 34)
    assert result["slices_seen"] == list(range(first, first + count))     # full coverage: the lungs' slices
