"""Fuzz suite of ``acat analyze``: bad and odd inputs, outputs, model cards, batch lists and signals.

Every case is generated at test time from a seeded random generator (``FUZZ_SEED``) and checked
against the CLI's contract:

- exit 0 with a ``result.json`` that follows the schema (and, where the input was damaged, at least
  one ``warning:`` line on stderr that is also in result.json's ``warnings``), or exit 2 with exactly
  one ``acat: error: ...`` line on stderr (a batch: one per failed case); never a traceback, never a
  line of ITK/GDCM/MetaIO chatter (the suite captures file descriptor 2);
- every input file unchanged byte for byte (and none deleted);
- no temporary folder left beside the output.

Most cases run ``ACATCore.cli.main`` in-process with a tiny bundle and the fastest settings; the
signal cases run the ``acat`` process and kill it. Categories and counts: docs/analyze.md, Reliability.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ACATCore.cli import main
from ACATCore.io import write_dicom_series, write_volume
from ACATCore.report import validate_json
from ACATCore.volume import Volume
from pipeline_helpers import make_bundle, one_thread

FUZZ_SEED = 20261202
FAST = ["--coverage", "sampled", "--steps", "1", "--quiet", "--no-report"]
FORMATS = {"nrrd-raw": (".nrrd", False), "nrrd-gzip": (".nrrd", True), "mha-raw": (".mha", False),
           "mha-zlib": (".mha", True), "nii": (".nii", False), "nii-gz": (".nii.gz", True)}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def base_ct(shape=(8, 40, 40), direction=None) -> Volume:
    """A small chest-like CT in HU: air, a body, two lungs, noise."""
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    a = np.full(shape, -1000.0)
    a[(i / 0.9) ** 2 + (j / 0.7) ** 2 < 1] = 40
    for side in (-0.4, 0.4):
        a[((i - side) / 0.3) ** 2 + (j / 0.45) ** 2 < 1] = -850
    a += rng.normal(0, 15, shape)
    return Volume(a.astype(np.int16), spacing=(0.9, 0.9, 3.0), origin=(-18.0, -18.0, 0.0),
                  direction=np.eye(3) if direction is None else direction)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    bundle = make_bundle(root / "bundle", "lung", size=[32, 32], slices=6)
    ct = base_ct()
    files = {name: write_volume(ct, root / "base" / f"{name}{suffix}", compress=compress).read_bytes()
             for name, (suffix, compress) in FORMATS.items()}
    series = root / "base" / "series"
    write_dicom_series(ct, series)
    return {"root": root, "bundle": bundle, "ct": ct, "files": files, "series": series}


# ----------------------------------------------------------------------------------- the contract
def snapshot(paths) -> dict:
    """Every file under ``paths`` -> SHA-256 of its bytes (links: their target's name)."""
    out = {}
    for p in paths:
        p = Path(p)
        items = [p] if not p.is_dir() or p.is_symlink() else [p, *sorted(p.rglob("*"))]
        for q in items:
            key = os.fsencode(str(q))
            if q.is_symlink():
                out[key] = ("link", os.readlink(q))
            elif q.is_file():
                out[key] = hashlib.sha256(q.read_bytes()).hexdigest()
            elif q.exists() and not q.is_dir():
                out[key] = "special"
    return out


def leftovers(folder: Path) -> list:
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir() if (".tmp-" in p.name or ".old-" in p.name
            or p.name.startswith(".acat-")) and not p.name.endswith("-live1234")]


def run_cli(argv, capfd):
    code = main([a if isinstance(a, (str, bytes)) else str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def check_contract(code, stdout, err, out: Path, before: dict, inputs, damaged=False, expect=None,
                   batch=False):
    """Assert the CLI contract for one run; returns the result.json document (or None)."""
    assert "Traceback" not in err, err
    assert code in ((0, 2) if expect is None else expect), (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    for ln in lines:                         # only our own lines: no ITK/GDCM/MetaIO chatter
        assert ln.startswith(("acat: error: ", "warning: ")), err
    errors = [ln for ln in lines if ln.startswith("acat: error: ")]
    doc = None
    if code == 0:
        assert not errors, err
        if not batch:
            doc = json.loads((out / "result.json").read_text())
            assert validate_json(doc) == [], doc
            warned = [ln for ln in lines if ln.startswith("warning: ")]
            assert len(warned) == len(doc["warnings"]), (err, doc["warnings"])
            if damaged:
                assert doc["warnings"], "a damaged input was accepted without a warning"
    else:
        assert (len(errors) >= 1 if batch else len(errors) == 1), err
        if not batch:
            assert len(lines) == 1 or all(ln.startswith("warning: ") for ln in lines if ln not in errors), err
    assert snapshot(inputs) == before, "an input was changed or deleted"
    parent = Path(os.path.realpath(out)).parent if out is not None else None
    if parent is not None:
        assert leftovers(parent) == [], leftovers(parent)
    return doc


def analyze_case(env, capfd, tmp_path, source, damaged=False, expect=None, extra=(), out=None,
                 inputs=None, batch=False, model=None):
    inputs = [source] if inputs is None else inputs
    before = snapshot(inputs)
    out = tmp_path / "out" if out is None else out
    code, stdout, err = run_cli(["analyze", source, "--model", model or env["bundle"], "--out", out, *FAST,
                                 *extra], capfd)
    return code, check_contract(code, stdout, err, out, before, inputs, damaged=damaged, expect=expect,
                                batch=batch), err


def cases(category, n, seed_offset=0):
    """``n`` seeded random generators for one category: the cases differ by their draws."""
    return [pytest.param(FUZZ_SEED + 1000 * seed_offset + i, id=f"{category}-{i}") for i in range(n)]


# ----------------------------------------------------------------------------------- truncation
TRUNC = [(fmt, i) for fmt in FORMATS for i in range(7)]


@pytest.mark.parametrize("fmt,i", TRUNC, ids=[f"truncation-{f}-{i}" for f, i in TRUNC])
def test_truncation(env, capfd, tmp_path, fmt, i):
    rng = random.Random(FUZZ_SEED + i * 31 + len(fmt))
    data = env["files"][fmt]
    keep = [0, 1, 100, 200][i] if i < 4 else rng.randrange(300, len(data) - 1)
    path = tmp_path / f"cut{FORMATS[fmt][0]}"
    path.write_bytes(data[:keep])
    code, _, _ = analyze_case(env, capfd, tmp_path, path, expect=(2,))


@pytest.mark.parametrize("seed", cases("truncation-dicom", 7))
def test_truncation_dicom_slice(env, capfd, tmp_path, seed):
    rng = random.Random(seed)
    series = tmp_path / "series"
    shutil.copytree(env["series"], series)
    files = sorted(series.iterdir())
    victim = files[rng.randrange(len(files))]
    victim.write_bytes(victim.read_bytes()[: rng.randrange(0, victim.stat().st_size - 1)])
    analyze_case(env, capfd, tmp_path, series, damaged=True)


# ----------------------------------------------------------------------------------- bit flips
FLIPS = [(fmt, i) for fmt in FORMATS for i in range(8)]


@pytest.mark.parametrize("fmt,i", FLIPS, ids=[f"bitflip-{f}-{i}" for f, i in FLIPS])
def test_bit_flips(env, capfd, tmp_path, fmt, i):
    """Random bits flipped in the header (even cases) or anywhere (odd): a valid result or one error;
    a flip in compressed data must never be read as an image silently (its checksum fails)."""
    rng = random.Random(FUZZ_SEED + 7 * i + 1000 * len(fmt))
    data = bytearray(env["files"][fmt])
    header = {".nii": 348, ".nii.gz": 30}.get(FORMATS[fmt][0], data.find(b"\n\n") + 2 if b"\n\n" in data
                                              else data.find(b"LOCAL\n") + 6)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(0, max(2, header)) if i % 2 == 0 else rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    path = tmp_path / f"flip{FORMATS[fmt][0]}"
    path.write_bytes(bytes(data))
    analyze_case(env, capfd, tmp_path, path)


# ----------------------------------------------------------------------------------- header fields
def _nrrd_with(field, value, raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.lower().startswith(field.encode() + b":")]
    return b"\n".join(lines + [f"{field}: {value}".encode()]) + b"\n\n" + body


NRRD_FIELDS = [("sizes", "2048 2048 1024"), ("sizes", "40 40"), ("sizes", "40 40 8 2"), ("sizes", "0 40 8"),
               ("sizes", "-5 40 8"), ("sizes", "40 40 800"), ("sizes", "99999999999 1 1"), ("type", "nonsense"),
               ("type", "double"), ("type", "uchar"), ("dimension", "2"), ("dimension", "9"),
               ("encoding", "gzip"), ("encoding", "bzip2"), ("encoding", "hex"), ("encoding", "ascii"),
               ("byte skip", "100000"), ("byte skip", "-1"), ("space directions", "(0,0,0) (0,1,0) (0,0,1)"),
               ("space directions", "(nan,0,0) (0,1,0) (0,0,1)"), ("endian", "big"), ("kinds", "RGB-color domain domain")]
MHA_FIELDS = [("DimSize", "2048 2048 1024"), ("DimSize", "40 40"), ("DimSize", "0 40 8"), ("ElementType", "MET_FLOAT"),
              ("ElementType", "MET_NOPE"), ("CompressedData", "True"), ("HeaderSize", "100000"),
              ("NDims", "2"), ("NDims", "7"), ("ElementSpacing", "0 0 0"), ("ElementSpacing", "-1 1 1"),
              ("ElementNumberOfChannels", "3"), ("ElementDataFile", "missing.raw"), ("ElementDataFile", "LIST")]
NIFTI_FIELDS = [("bitpix", 8), ("bitpix", 0), ("datatype", 16), ("datatype", 9999), ("vox_offset", 0.0),
                ("vox_offset", -352.0), ("vox_offset", float("nan")), ("vox_offset", float("inf")),
                ("vox_offset", 1e12), ("vox_offset", 353.5), ("dim0", 2), ("dim0", 8), ("dim1", 0), ("dim1", 30000),
                ("dim3", 32000), ("pixdim1", 0.0), ("pixdim1", float("nan")), ("sform", 0), ("scl_slope", float("inf"))]


@pytest.mark.parametrize("field,value", NRRD_FIELDS, ids=[f"header-nrrd-{f}-{v}".replace(" ", "_")
                                                          for f, v in NRRD_FIELDS])
def test_header_nrrd(env, capfd, tmp_path, field, value):
    path = tmp_path / "h.nrrd"
    path.write_bytes(_nrrd_with(field, value, env["files"]["nrrd-raw"]))
    analyze_case(env, capfd, tmp_path, path)


@pytest.mark.parametrize("field,value", MHA_FIELDS, ids=[f"header-mha-{f}-{v}".replace(" ", "_")
                                                         for f, v in MHA_FIELDS])
def test_header_mha(env, capfd, tmp_path, field, value):
    raw = env["files"]["mha-raw"]
    head, sep, body = raw.partition(b"ElementDataFile = LOCAL\n")
    lines = [ln for ln in head.split(b"\n") if ln and not ln.startswith(field.encode() + b" ")]
    if field == "ElementDataFile":
        data = b"\n".join(lines) + f"\nElementDataFile = {value}\n".encode() + body
    else:
        data = b"\n".join(lines + [f"{field} = {value}".encode()]) + b"\n" + sep + body
    path = tmp_path / "h.mha"
    path.write_bytes(data)
    analyze_case(env, capfd, tmp_path, path)


@pytest.mark.parametrize("field,value", NIFTI_FIELDS, ids=[f"header-nifti-{f}-{v}" for f, v in NIFTI_FIELDS])
def test_header_nifti(env, capfd, tmp_path, field, value):
    data = bytearray(env["files"]["nii"])
    at = {"bitpix": (72, "<i2"), "datatype": (70, "<i2"), "vox_offset": (108, "<f4"), "dim0": (40, "<i2"),
          "dim1": (42, "<i2"), "dim3": (46, "<i2"), "pixdim1": (80, "<f4"), "sform": (254, "<i2"),
          "scl_slope": (112, "<f4")}[field]
    raw = np.array([value], dtype=at[1]).tobytes()
    data[at[0]:at[0] + len(raw)] = raw
    path = tmp_path / "h.nii"
    path.write_bytes(bytes(data))
    analyze_case(env, capfd, tmp_path, path)


@pytest.mark.parametrize("plane", ["coronal", "sagittal"], ids=["header-coronal", "header-sagittal"])
def test_header_non_axial_storage_and_report(env, capfd, tmp_path, plane):
    """A volume stored as coronal or sagittal planes: analysed, report included (no IndexError)."""
    from ACATCore.preprocessing import canonical_axes
    # coronal: k -> P, j -> -S, i -> L; sagittal: k -> L, j -> -S, i -> P (direction columns: i, j, k)
    perm = {"coronal": (1, 0, 2), "sagittal": (2, 0, 1)}[plane]
    d = {"coronal": [[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]],
         "sagittal": [[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]]}[plane]
    array = np.ascontiguousarray(np.transpose(env["ct"].array, perm))
    vol = Volume(array, spacing=(0.9, 3.0, 0.9), direction=np.array(d))
    assert canonical_axes(vol.direction)[0] != (0, 1, 2)
    path = write_volume(vol, tmp_path / f"{plane}.nrrd")
    before = snapshot([path])
    out = tmp_path / "out"
    code, stdout, err = run_cli(["analyze", path, "--model", env["bundle"], "--out", out, "--coverage", "sampled",
                                 "--steps", "1", "--quiet"], capfd)
    check_contract(code, stdout, err, out, before, [path], expect=(0,))
    assert (out / "report" / "figure2_attention.png").is_file()


# ----------------------------------------------------------------------------------- DICOM series
DICOM_FAULTS = ["missing", "truncated", "garbage", "empty", "duplicate", "same-position", "no-position",
                "spacing-0", "spacing-negative", "no-spacing", "notes-file", "two-series", "undecodable-name",
                "fifo", "rows-differ", "all-garbage"]


def _edit_dicom(files, fn):
    import pydicom
    for f in files:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


@pytest.mark.parametrize("fault,i", [(f, i) for f in DICOM_FAULTS for i in range(2)],
                         ids=[f"dicom-{f}-{i}" for f in DICOM_FAULTS for i in range(2)])
def test_dicom_series_faults(env, capfd, tmp_path, fault, i):
    rng = random.Random(FUZZ_SEED + 13 * i + sum(map(ord, fault)))
    series = tmp_path / "series"
    shutil.copytree(env["series"], series)
    files = sorted(series.iterdir())
    victim = files[rng.randrange(1, len(files) - 1)]
    damaged = fault in ("missing", "truncated", "garbage", "empty", "duplicate", "no-spacing", "notes-file",
                        "two-series", "rows-differ")
    if fault == "missing":
        victim.unlink()
    elif fault == "truncated":
        victim.write_bytes(victim.read_bytes()[: rng.randrange(200, victim.stat().st_size - 10)])
    elif fault == "garbage":
        victim.write_bytes(b"\0" * 128 + b"DICM" + rng.randbytes(rng.randrange(10, 3000)))
    elif fault == "empty":
        victim.write_bytes(b"")
    elif fault == "duplicate":
        shutil.copy(victim, series / f"copy_{i}.dcm")
    elif fault == "same-position":
        _edit_dicom(files, lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 0]))
    elif fault == "no-position":
        _edit_dicom(files if i == 0 else [victim], lambda ds: delattr(ds, "ImagePositionPatient"))
    elif fault == "spacing-0":
        _edit_dicom(files if i == 0 else [victim], lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    elif fault == "spacing-negative":
        _edit_dicom(files, lambda ds: setattr(ds, "PixelSpacing", [-1, -1]))
    elif fault == "no-spacing":
        _edit_dicom(files, lambda ds: delattr(ds, "PixelSpacing"))
    elif fault == "notes-file":
        (series / "notes.txt").write_text("not an image")
    elif fault == "two-series":
        other = tmp_path / "other"
        write_dicom_series(base_ct(shape=(6, 40, 40)), other)
        for f in other.iterdir():
            shutil.move(str(f), series / f"b_{f.name}")
        other.rmdir()
    elif fault == "undecodable-name":
        os.rename(victim, os.path.join(os.fsencode(str(series)), b"slice_\xff\xfe.dcm"))
    elif fault == "fifo":
        os.mkfifo(series / "pipe.dcm")
    elif fault == "rows-differ":
        import pydicom
        ds = pydicom.dcmread(victim)
        ds.Rows = ds.Rows // 2
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(victim)
    elif fault == "all-garbage":
        for f in files:
            f.write_bytes(rng.randbytes(500))
    code, doc, err = analyze_case(env, capfd, tmp_path, series, damaged=damaged)
    if fault in ("same-position", "spacing-negative", "all-garbage") or (fault == "no-position" and i == 0) \
            or (fault == "spacing-0" and i == 0):
        assert code == 2, err


# ----------------------------------------------------------------------------------- paths
PATH_KINDS = ["undecodable", "undecodable-dir", "spaces", "unicode", "newline", "dev-null", "dev-zero", "fifo",
              "empty-folder", "folder-of-text", "symlink", "symlink-loop", "dangling-symlink", "missing",
              "long-name", "relative", "no-suffix", "wrong-suffix", "dash-name", "socket", "unreadable-folder",
              "nul-in-name", "dot-file", "json-not-datalist"]


@pytest.mark.parametrize("kind", PATH_KINDS, ids=[f"paths-{k}" for k in PATH_KINDS])
def test_paths(env, capfd, tmp_path, kind, monkeypatch):
    ct_bytes = env["files"]["nrrd-raw"]
    inputs = None
    expect = None
    if kind == "undecodable":
        p = os.path.join(os.fsencode(str(tmp_path)), b"ct_\xff\xfe\xc3(.nrrd")
        Path(os.fsdecode(p)).write_bytes(ct_bytes)
        source = os.fsdecode(p)
        expect = (0,)
    elif kind == "undecodable-dir":
        d = Path(os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"dir_\xe9")))
        d.mkdir()
        (d / "ct.nrrd").write_bytes(ct_bytes)
        source, expect = d / "ct.nrrd", (0,)
    elif kind in ("spaces", "unicode", "newline", "dash-name"):
        name = {"spaces": "my ct  scan.nrrd", "unicode": "tête_胸部_ct.nrrd", "newline": "a\nb.nrrd",
                "dash-name": "-ct.nrrd"}[kind]
        source = tmp_path / name
        source.write_bytes(ct_bytes)
        expect = (0,)
    elif kind in ("dev-null", "dev-zero"):
        source, inputs, expect = "/dev/null" if kind == "dev-null" else "/dev/zero", [], (2,)
    elif kind == "fifo":
        source = tmp_path / "pipe.nrrd"
        os.mkfifo(source)
        expect = (2,)
    elif kind == "socket":
        import socket
        source = tmp_path / "s.nrrd"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(source))
        expect = (2,)
    elif kind == "empty-folder":
        source = tmp_path / "empty"
        source.mkdir()
        expect = (2,)
    elif kind == "folder-of-text":
        source = tmp_path / "texts"
        source.mkdir()
        for n in range(3):
            (source / f"note{n}.txt").write_text("hello")
        expect = (2,)
    elif kind == "symlink":
        real = tmp_path / "real.nrrd"
        real.write_bytes(ct_bytes)
        source = tmp_path / "link.nrrd"
        source.symlink_to(real)
        inputs, expect = [real, source], (0,)
    elif kind == "symlink-loop":
        source = tmp_path / "loop.nrrd"
        source.symlink_to(tmp_path / "loop2.nrrd")
        (tmp_path / "loop2.nrrd").symlink_to(source)
        inputs, expect = [], (2,)
    elif kind == "dangling-symlink":
        source = tmp_path / "dangling.nrrd"
        source.symlink_to(tmp_path / "nowhere.nrrd")
        inputs, expect = [], (2,)
    elif kind == "missing":
        source, inputs, expect = tmp_path / "missing.nrrd", [], (2,)
    elif kind == "long-name":
        source, inputs, expect = tmp_path / ("x" * 300 + ".nrrd"), [], (2,)
    elif kind == "relative":
        (tmp_path / "rel.nrrd").write_bytes(ct_bytes)
        monkeypatch.chdir(tmp_path)
        source, inputs, expect = "rel.nrrd", [tmp_path / "rel.nrrd"], (0,)
    elif kind == "no-suffix":
        source = tmp_path / "ctfile"
        source.write_bytes(ct_bytes)
    elif kind == "wrong-suffix":
        source = tmp_path / "ct.nii"
        source.write_bytes(ct_bytes)         # a NRRD named .nii
    elif kind == "unreadable-folder":
        d = tmp_path / "locked"
        d.mkdir()
        (d / "ct.nrrd").write_bytes(ct_bytes)
        source = d / "ct.nrrd"
        source.chmod(0)
        inputs = [source]
    elif kind == "nul-in-name":
        source, inputs, expect = str(tmp_path) + "/a\0b.nrrd", [], (2,)
    elif kind == "dot-file":
        source = tmp_path / ".hidden.nrrd"
        source.write_bytes(ct_bytes)
        expect = (0,)
    elif kind == "json-not-datalist":
        source = tmp_path / "x.json"
        source.write_text(json.dumps({"hello": 1}))
        expect = (2,)
    try:
        analyze_case(env, capfd, tmp_path, source, expect=expect, inputs=inputs)
    finally:
        if kind == "socket":
            sock.close()
        if kind == "unreadable-folder":
            source.chmod(0o644)


# ----------------------------------------------------------------------------------- outputs
OUTPUT_KINDS = ["is-input-file", "is-parent-of-input", "is-parent-of-input-overwrite", "is-dicom-folder",
                "parent-of-dicom-overwrite", "inside-dicom-folder", "is-batch-folder", "contains-batch",
                "inside-batch-folder", "datalist-entry-parent", "is-datalist", "below-a-file", "name-300",
                "name-240", "read-only-parent", "symlink-to-folder", "dangling-symlink", "symlink-to-input-parent",
                "exists-not-empty", "exists-empty", "exists-overwrite", "stale-temporaries", "stale-old",
                "live-temporary", "is-dev-null", "root", "empty-string", "deep-new-path", "undecodable-out",
                "dot"]


@pytest.mark.parametrize("kind", OUTPUT_KINDS, ids=[f"outputs-{k}" for k in OUTPUT_KINDS])
def test_outputs(env, capfd, tmp_path, kind, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    ct = data / "scan.nrrd"
    ct.write_bytes(env["files"]["nrrd-raw"])
    series = data / "series"
    shutil.copytree(env["series"], series)
    source, extra, expect, inputs = ct, [], (2,), [data]
    out = tmp_path / "out"
    if kind == "is-input-file":
        out = ct
    elif kind in ("is-parent-of-input", "is-parent-of-input-overwrite"):
        out = data
        extra = ["--overwrite"] if kind.endswith("overwrite") else []
    elif kind == "is-dicom-folder":
        source, out, extra = series, series, ["--overwrite"]
    elif kind == "parent-of-dicom-overwrite":
        source, out, extra = series, data, ["--overwrite"]
    elif kind == "inside-dicom-folder":
        source, out = series, series / "results"
    elif kind == "is-batch-folder":
        source, out, extra = data, data, ["--overwrite", "--batch"]
    elif kind == "contains-batch":
        source, out, extra = data, tmp_path, ["--overwrite"]
    elif kind == "inside-batch-folder":
        source, out = data, data / "results"
    elif kind in ("datalist-entry-parent", "is-datalist"):
        lst = tmp_path / "list.json"
        lst.write_text(json.dumps({"test": [{"image": str(ct)}]}))
        source, inputs = lst, [data, lst]
        out, extra = (data, ["--overwrite"]) if kind == "datalist-entry-parent" else (lst, ["--overwrite"])
    elif kind == "below-a-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif kind == "name-300":
        out = tmp_path / ("o" * 300)
    elif kind == "name-240":
        out = tmp_path / ("o" * 240)            # fits, but its temporary sibling would not
    elif kind == "read-only-parent":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = ro / "out"
        if os.geteuid() == 0:                    # root writes anyway: a read-only bind is not available
            expect = (0,)
    elif kind == "symlink-to-folder":
        real = tmp_path / "real_out"
        real.mkdir()
        (real / "old.txt").write_text("old")
        out = tmp_path / "link_out"
        out.symlink_to(real)
        extra, expect = ["--overwrite"], (0,)
    elif kind == "dangling-symlink":
        out = tmp_path / "link_out"
        out.symlink_to(tmp_path / "not_yet")
        expect = (0,)
    elif kind == "symlink-to-input-parent":
        out = tmp_path / "link_out"
        out.symlink_to(data)
        extra = ["--overwrite"]
    elif kind == "exists-not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        inputs = [data, out]
    elif kind == "exists-empty":
        out.mkdir()
        expect = (0,)
    elif kind == "exists-overwrite":
        out.mkdir()
        (out / "old.txt").write_text("old")
        extra, expect = ["--overwrite"], (0,)
    elif kind in ("stale-temporaries", "stale-old"):
        dead = _dead_pid()
        stale = tmp_path / f".out.{'tmp' if kind == 'stale-temporaries' else 'old'}-{dead}-abcd1234"
        stale.mkdir()
        (stale / "saliency.nrrd").write_text("half")
        if kind == "stale-old":
            out.mkdir()
            (out / "result.json").write_text("{}")
            extra = ["--overwrite"]
        expect = (0,)
    elif kind == "live-temporary":
        live = tmp_path / f".out.tmp-{os.getppid()}-live1234"   # a running process's: left alone
        live.mkdir()
        expect = (0,)
    elif kind == "is-dev-null":
        out = Path("/dev/null")
    elif kind == "root":
        out, extra = Path("/"), ["--overwrite"]
    elif kind == "empty-string":
        out = ""
    elif kind == "deep-new-path":
        out, expect = tmp_path / "a" / "b" / "c" / "out", (0,)
    elif kind == "undecodable-out":
        out, expect = Path(os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"out_\xff"))), (0,)
    elif kind == "dot":
        monkeypatch.chdir(data)
        out, extra = Path("."), ["--overwrite"]
    before = snapshot(inputs)
    code, stdout, err = run_cli(["analyze", source, "--model", env["bundle"], "--out", out, *FAST, *extra], capfd)
    try:
        check_contract(code, stdout, err, Path(out) if str(out) else tmp_path / "x", before, inputs,
                       expect=expect, batch=kind in ("is-batch-folder", "contains-batch", "inside-batch-folder"))
    finally:
        if kind == "read-only-parent":
            (tmp_path / "ro").chmod(0o755)
    if kind == "symlink-to-folder":
        assert out.is_symlink() and (tmp_path / "real_out" / "result.json").is_file()
        assert not (tmp_path / "real_out" / "old.txt").exists()
    if kind == "stale-temporaries":
        assert not stale.exists()
    if kind == "live-temporary":
        assert live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------- model cards
CARD_EDITS = [
    ("acat", "class_names", None), ("acat", "class_names", []), ("acat", "class_names", ["normal"]),
    ("acat", "class_names", ["a", "b", "c"]), ("acat", "class_names", [1, 2]), ("acat", "class_names", ["a", "a"]),
    ("classifier", "class_names", ["normal"]), ("acat", "class_names", "normal,findings"),
    ("acat", "preprocessing.window", [float("-inf"), 400]), ("acat", "preprocessing.window", [-1000, float("inf")]),
    ("acat", "preprocessing.window", [float("nan"), 400]), ("acat", "preprocessing.window", [400, -1000]),
    ("acat", "preprocessing.window", ["a", "b"]), ("acat", "preprocessing.window", None),
    ("acat", "preprocessing.slices", 0), ("acat", "preprocessing.slices", -3), ("acat", "preprocessing.slices", 100000),
    ("acat", "preprocessing.slices", "11"), ("acat", "preprocessing.slices", 1.5), ("acat", "preprocessing.slices", True),
    ("acat", "preprocessing.size", [100000, 100000]), ("acat", "preprocessing.size", [-32, 32]),
    ("acat", "preprocessing.size", [32]), ("acat", "preprocessing.orientation", "RAS-sideways"),
    ("acat", "preprocessing.brain_extraction", "yes"), ("acat", "preprocessing", None),
    ("acat", "model_config.layers", [1000000, 1, 1, 1]), ("acat", "model_config.layers", [100, 100, 100, 100]),
    ("acat", "model_config.block_inplanes", [100000, 8, 8, 8]), ("acat", "model_config.block_inplanes", [-4, 8, 8, 8]),
    ("acat", "model_config.num_classes", 3), ("acat", "model_config.num_classes", 10 ** 30),
    ("acat", "model_config.dropout", 2.0), ("acat", "model_config.slice_hidden", 10 ** 6),
    ("acat", "model_config.colour", "red"), ("acat", "model_config", [1, 2]),
    ("autoencoder", "model_config.stem_channels", 10 ** 6), ("autoencoder", "model_config.blocks_per_stage", 5000),
    ("acat", "model_name", "acat_knee"), ("acat", "model_name", None), ("acat", "schema_version", 99),
    ("acat", "schema_version", "1"), ("acat", "sha256", "0" * 64), ("acat", "sha256", None),
    ("acat", "task", "brain"),
]
CARD_DAMAGE = ["nan-weights", "inf-weights", "unsealed-edit", "no-card-hash", "card-not-json", "card-deep",
               "card-huge-number", "card-empty", "weights-truncated", "weights-garbage", "card-missing",
               "card-is-folder", "weights-header-huge", "pickle-renamed"]


def _copy_bundle(env, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(env["bundle"], folder)
    return folder


def _edit(card_file: Path, dotted: str, value, reseal=True):
    from ACATCore.checkpoint import card_digest
    card = json.loads(card_file.read_text())
    keys = dotted.split(".")
    target = card
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    if reseal:
        card["card_sha256"] = card_digest(card)
    card_file.write_text(json.dumps(card))


@pytest.mark.parametrize("part,field,value", CARD_EDITS,
                         ids=[f"cards-{p}-{f}-{str(v)[:20]}".replace(" ", "") for p, f, v in CARD_EDITS])
def test_model_card_edits(env, capfd, tmp_path, part, field, value):
    """A deliberately edited (re-sealed) card: checked on its merits before any tensor is made."""
    bundle = _copy_bundle(env, tmp_path)
    _edit(bundle / f"{part}.json", field, value)
    ct = tmp_path / "ct.nrrd"
    ct.write_bytes(env["files"]["nrrd-raw"])
    code, _, err = analyze_case(env, capfd, tmp_path, ct, model=bundle, inputs=[ct, bundle], expect=(2,))
    code, _, err = run_cli(["info", bundle], capfd)
    assert code in (0, 2) and "Traceback" not in err


@pytest.mark.parametrize("damage", CARD_DAMAGE, ids=[f"cards-{d}" for d in CARD_DAMAGE])
def test_model_file_damage(env, capfd, tmp_path, damage):
    import torch
    from safetensors.torch import load_file, save_file

    from ACATCore.checkpoint import card_digest, sha256_of
    bundle = _copy_bundle(env, tmp_path)
    weights, card_file = bundle / "acat.safetensors", bundle / "acat.json"
    if damage in ("nan-weights", "inf-weights"):
        tensors = load_file(str(weights))
        key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
        tensors[key][0] = float("nan") if damage == "nan-weights" else float("inf")
        save_file(tensors, str(weights), metadata={"model_name": "acat_lung", "format": "acat-model"})
        card = json.loads(card_file.read_text())
        card["sha256"] = sha256_of(weights)            # a matching hash: the values themselves are refused
        card["card_sha256"] = card_digest(card)
        card_file.write_text(json.dumps(card))
    elif damage == "unsealed-edit":
        _edit(card_file, "class_names", ["findings", "normal"], reseal=False)
    elif damage == "no-card-hash":
        card = json.loads(card_file.read_text())
        del card["card_sha256"]
        card_file.write_text(json.dumps(card))
    elif damage == "card-not-json":
        card_file.write_text("{not json")
    elif damage == "card-deep":
        card_file.write_text("[" * 200000 + "]" * 200000)
    elif damage == "card-huge-number":
        card_file.write_text('{"schema_version": ' + "9" * 100000 + "}")
    elif damage == "card-empty":
        card_file.write_bytes(b"")
    elif damage == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "weights-garbage":
        weights.write_bytes(os.urandom(5000))
    elif damage == "card-missing":
        card_file.unlink()
    elif damage == "card-is-folder":
        card_file.unlink()
        card_file.mkdir()
    elif damage == "weights-header-huge":
        weights.write_bytes((10 ** 15).to_bytes(8, "little") + b"{}")
    elif damage == "pickle-renamed":
        import pickle
        weights.write_bytes(pickle.dumps({"a": torch.zeros(3)}))
    ct = tmp_path / "ct.nrrd"
    ct.write_bytes(env["files"]["nrrd-raw"])
    analyze_case(env, capfd, tmp_path, ct, model=bundle, inputs=[ct, bundle], expect=(2,))
    code, _, err = run_cli(["info", bundle], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("acat: error: "), err


# ----------------------------------------------------------------------------------- batch lists
BATCH_KINDS = ["json-deep", "json-huge-number", "json-not-utf8", "json-bom", "json-empty-list", "json-numbers",
               "json-nul-entry", "json-missing-files", "json-huge-file", "csv-latin1", "csv-bom", "csv-huge-field",
               "csv-nul", "csv-empty", "csv-only-header", "csv-missing-file", "names-collide", "summary-name",
               "case-insensitive-names", "mixed-good-bad", "dicom-subfolders", "same-file-twice", "nested-lists",
               "json-array-of-strings", "csv-no-header", "unicode-names"]


@pytest.mark.parametrize("kind", BATCH_KINDS, ids=[f"batch-{k}" for k in BATCH_KINDS])
def test_batch_lists(env, capfd, tmp_path, kind):
    ct_bytes = env["files"]["nrrd-raw"]
    cases = tmp_path / "cases"
    cases.mkdir()
    good = cases / "good.nrrd"
    good.write_bytes(ct_bytes)
    source, expect, names = None, None, None
    if kind == "json-deep":
        source = tmp_path / "deep.json"
        source.write_text("[" * 200000 + "]" * 200000)
        expect = (2,)
    elif kind == "json-huge-number":
        source = tmp_path / "num.json"
        source.write_text('{"test": [{"image": "cases/good.nrrd", "label": ' + "7" * 100000 + "}]}")
        expect = (2,)
    elif kind == "json-not-utf8":
        (cases / "caf\xe9.nrrd").write_bytes(ct_bytes)
        source = tmp_path / "l1.json"
        source.write_bytes('{"test": [{"image": "cases/caf\xe9.nrrd"}]}'.encode("latin-1"))
        expect = (0, 2)
    elif kind == "json-bom":
        source = tmp_path / "bom.json"
        source.write_bytes(b"\xef\xbb\xbf" + json.dumps({"test": [{"image": "cases/good.nrrd"}]}).encode())
        expect = (0,)
    elif kind == "json-empty-list":
        source = tmp_path / "e.json"
        source.write_text("[]")
        expect = (2,)
    elif kind == "json-numbers":
        source = tmp_path / "n.json"
        source.write_text(json.dumps({"test": [{"image": 5}, {"image": None}, {"image": ["a"]}]}))
        expect = (2,)
    elif kind == "json-nul-entry":
        source = tmp_path / "nul.json"
        source.write_text(json.dumps({"test": [{"image": "cases/go\0od.nrrd"}, {"image": "cases/good.nrrd"}]}))
        expect = (0,)
    elif kind == "json-missing-files":
        source = tmp_path / "m.json"
        source.write_text(json.dumps({"test": [{"image": "cases/nothere.nrrd"}, {"image": "cases/good.nrrd"}]}))
        expect = (2,)
    elif kind == "json-huge-file":
        source = tmp_path / "big.json"
        with open(source, "wb") as f:
            f.truncate(65 << 20)               # sparse: 65 MB of zeros, over the limit
        expect = (2,)
    elif kind == "csv-latin1":
        (cases / "caf\xe9.nrrd").write_bytes(ct_bytes)
        source = tmp_path / "l1.csv"
        source.write_bytes("image,label\ncases/caf\xe9.nrrd,0\n".encode("latin-1"))
        expect = (0, 2)
    elif kind == "csv-bom":
        source = tmp_path / "bom.csv"
        source.write_bytes(b"\xef\xbb\xbfimage,label\ncases/good.nrrd,1\n")
        expect, names = (0,), ["good"]
    elif kind == "csv-huge-field":
        source = tmp_path / "huge.csv"
        source.write_text("image,notes\ncases/good.nrrd," + "x" * (200 << 10) + "\n")
        expect = (2,)
    elif kind == "csv-nul":
        source = tmp_path / "nul.csv"
        source.write_bytes(b"image\ncases/go\0od.nrrd\n")
        expect = (2,)
    elif kind == "csv-empty":
        source = tmp_path / "empty.csv"
        source.write_bytes(b"")
        expect = (2,)
    elif kind == "csv-only-header":
        source = tmp_path / "h.csv"
        source.write_text("image,label\n")
        expect = (2,)
    elif kind == "csv-missing-file":
        source = tmp_path / "m.csv"
        source.write_text("image\ncases/nothere.nrrd\n")
        expect = (2,)
    elif kind == "names-collide":
        for n in ("a.nrrd", "a.nii.gz", "a_1.mha"):
            write_volume(env["ct"], cases / n)
        good.unlink()
        source, expect, names = cases, (0,), ["a", "a_1", "a_2"]
    elif kind == "summary-name":
        (cases / "summary.csv.nrrd").write_bytes(ct_bytes)
        source, expect = cases, (0,)
    elif kind == "case-insensitive-names":
        (cases / "GOOD.nrrd").write_bytes(ct_bytes)
        source, expect = cases, (0,)
    elif kind == "mixed-good-bad":
        (cases / "bad.nrrd").write_bytes(ct_bytes[:300])
        source, expect = cases, (2,)
    elif kind == "dicom-subfolders":
        shutil.copytree(env["series"], cases / "series")
        source, expect = cases, (0,)
    elif kind == "same-file-twice":
        source = tmp_path / "twice.json"
        source.write_text(json.dumps([str(good), "cases/good.nrrd", str(good)]))
        expect = (0,)
    elif kind == "nested-lists":
        source = tmp_path / "nested.json"
        source.write_text(json.dumps({"a": [[{"image": "cases/good.nrrd"}]], "b": {"image": "x"}}))
        expect = (2,)
    elif kind == "json-array-of-strings":
        source = tmp_path / "arr.json"
        source.write_text(json.dumps(["cases/good.nrrd"]))
        expect = (0,)
    elif kind == "csv-no-header":
        source = tmp_path / "nh.csv"
        source.write_text("cases/good.nrrd\n")
        expect = (0,)
    elif kind == "unicode-names":
        (cases / "胸部.nrrd").write_bytes(ct_bytes)
        source, expect = cases, (0,)
    out = tmp_path / "out"
    inputs = [cases, source] if source != cases else [cases]
    before = snapshot(inputs)
    code, stdout, err = run_cli(["analyze", source, "--model", env["bundle"], "--out", out, *FAST, "--json"], capfd)
    check_contract(code, stdout, err, out, before, inputs, expect=expect, batch=True)
    if code == 0 and out.is_dir() and (out / "summary.csv").is_file():
        import csv
        rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
        assert len({r["case"].lower() for r in rows}) == len(rows)
        for r in rows:
            if r["status"] == "ok":
                doc = json.loads((out / r["case"] / "result.json").read_text())
                assert validate_json(doc) == []
        if names is not None:
            assert sorted(r["case"] for r in rows) == names
    elif code == 0:
        assert (out / "summary.csv").is_file()


# ----------------------------------------------------------------------------------- signals
SIGNAL_CASES = [("TERM", "write"), ("INT", "write"), ("TERM", "analysis"), ("INT", "analysis"), ("KILL", "write")]

def _forked_cli(argv, stage: str, folder: Path):
    """Run ``main(argv)`` in a forked child (torch is already imported: no start-up cost) that
    stops for 30 s inside ``stage`` ("analysis": before the counterfactual search; "write": after
    the first map file is written). Returns ``(pid, fd)``: the child writes one byte on ``fd``
    when it is inside the stage; its stdout/stderr go to ``folder``/child.out and child.err."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child
        code = 99
        try:
            os.close(r)
            for fd, name in ((1, "child.out"), (2, "child.err")):
                target = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            # as in a terminal: a runner started in the background (nohup, CI) may ignore SIGINT
            signal.signal(signal.SIGINT, signal.default_int_handler)
            import ACATCore.io as io
            import ACATCore.pipeline as pipeline

            def pause():
                os.write(w, b"!")
                time.sleep(30)
            if stage == "write":
                real_write = io.write_volume

                def slow_write(*a, **k):
                    path = real_write(*a, **k)
                    pause()
                    return path
                io.write_volume = slow_write
            else:
                real_search = pipeline._counterfactual_saliency

                def slow_search(*a, **k):
                    pause()
                    return real_search(*a, **k)
                pipeline._counterfactual_saliency = slow_search
            code = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _wait(pid, timeout=60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not stop")


@pytest.mark.parametrize("sig,stage", SIGNAL_CASES, ids=[f"signals-{s}-{t}" for s, t in SIGNAL_CASES])
def test_signals(env, capfd, tmp_path, sig, stage):
    """SIGTERM and SIGINT during the analysis or the write: exit 143/130, one line, nothing left;
    SIGKILL during the write: the next run removes the stale temporary folder."""
    import select
    ct = tmp_path / "ct.nrrd"
    ct.write_bytes(env["files"]["nrrd-raw"])
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    before = snapshot([ct])
    pid, fd = _forked_cli(["analyze", str(ct), "--model", str(env["bundle"]), "--out", str(out), *FAST],
                          stage, tmp_path)
    try:
        ready, _, _ = select.select([fd], [], [], 120)
        assert ready and os.read(fd, 1) == b"!", (tmp_path / "child.err").read_text()
        os.kill(pid, getattr(signal, f"SIG{sig}"))
        code = _wait(pid)
    finally:
        os.close(fd)
    err = (tmp_path / "child.err").read_text()
    assert "Traceback" not in err, err
    assert snapshot([ct]) == before
    assert not out.exists()
    if sig == "KILL":
        assert code == -signal.SIGKILL
        assert leftovers(out.parent)                    # the killed run's temporary folder ...
        code, stdout, err = run_cli(["analyze", ct, "--model", env["bundle"], "--out", out, *FAST], capfd)
        check_contract(code, stdout, err, out, before, [ct], expect=(0,))   # ... removed by the next run
        return
    assert code == (143 if sig == "TERM" else 130), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ("terminated" in lines[0] or "interrupted" in lines[0]), err
    assert leftovers(out.parent) == []


# ----------------------------------------------------------------------------------- command line
ARGV_CASES = [[], ["analyze"], ["nonsense"], ["analyze", "{ct}"], ["analyze", "{ct}", "--out", "{out}"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--device", "meta"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--device", "mps"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--device", "xpu"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--device", "cuda:99"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--device", ""],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--steps", "-1"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--steps", "1e9"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--alpha", "nan"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--alpha", "inf"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--early-stop", "2"],
              ["analyze", "{ct}", "--model", "{bundle}", "--out", "{out}", "--format", "png"],
              ["analyze", "{ct}", "--model", "", "--out", "{out}"],
              ["analyze", "{ct}", "--model", "/dev/null", "--out", "{out}"],
              ["info"], ["info", "nothing"], ["info", "/dev/null"], ["info", "{ct}"]]


@pytest.mark.parametrize("argv", ARGV_CASES, ids=[f"paths-argv-{i}" for i in range(len(ARGV_CASES))])
def test_command_line(env, capfd, tmp_path, argv):
    ct = tmp_path / "ct.nrrd"
    ct.write_bytes(env["files"]["nrrd-raw"])
    argv = [a.format(ct=ct, out=tmp_path / "out", bundle=env["bundle"]) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:                      # argparse: exit 2 with one line
        code = exc.code
    _, err = capfd.readouterr()
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("acat: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    if argv:
        assert len(err.strip().splitlines()) == 1, err
    else:
        assert err.startswith("usage: acat")      # `acat` alone: usage and one error line, on stderr
    assert not (tmp_path / "out").exists()
