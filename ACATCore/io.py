"""Reading and writing CT volumes with their geometry (SimpleITK underneath).

- :func:`read_volume` reads NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
  (``.mha``, ``.mhd``), a single DICOM file, or a DICOM series folder. A folder holding several series
  gives the one whose ``SeriesInstanceUID`` is asked for, else the one with the most files; which one
  was taken is logged, warned, and stored in ``volume.metadata["series_uid"]``.
- :func:`write_volume` writes the same file formats; a path without one of those suffixes (or ending
  in ``/``) is written as a DICOM series folder (one CT slice per file, int16 HU).
- :func:`validate_ct` checks that a volume is a CT that ACAT can analyse and raises
  :class:`ACATCore.errors.InputError` with one line saying what to do otherwise.

Geometry is kept exactly for NRRD and MetaImage; NIfTI stores the direction as float32 (about 1e-7),
DICOM stores positions as decimal strings (about 1e-6 mm). A DICOM reader orders slices along the
slice normal, so a left-handed volume (slice axis opposite to row x column) comes back with its
slices reversed and a right-handed direction: every voxel keeps its physical position.
Input files are never modified.
Warnings worth showing the user (which series, gantry tilt, DICOM files left out, duplicated or missing
slices, no PixelSpacing) go to ``volume.metadata["warnings"]`` as well as to :mod:`warnings` and
:mod:`logging`.

Robustness: before ITK allocates anything, a NRRD/MetaImage/NIfTI header's claimed size is checked
against :data:`MAX_VOXELS` and against the bytes the file (or its detached data file) really holds;
compressed data is decompressed in chunks, to its end, to check it is complete and its checksum right
(:mod:`ACATCore.file_checks`). Devices, pipes and sockets are refused; names with bytes that are not
UTF-8 reach ITK through temporary symbolic links; what ITK/GDCM/MetaIO print on stderr is captured
(:func:`native_output_captured`) and only used to word the error.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .file_checks import (DICOM_SUFFIXES, FILE_SUFFIXES, MAX_VOXELS, check_file_header, check_voxels,
                          display_path, file_suffix)
from .volume import Volume

log = logging.getLogger(__name__)

MIN_SLICES = 5  # fewer slices than this is not a volume ACAT can analyse


def _warn(volume_warnings: list, message: str) -> None:
    volume_warnings.append(message)
    log.warning(message)
    warnings.warn(message, stacklevel=3)



def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# ------------------------------------------------------------------------------------ native noise
_capture_lock = threading.RLock()
_capture_depth = [0]


class _Captured:
    text = ""


@contextlib.contextmanager
def native_output_captured():
    """Capture what ITK, GDCM and MetaIO print on the process's stderr (file descriptor 2) while
    the block runs; the text is in ``.text`` afterwards (used for error messages, never shown)."""
    cap = _Captured()
    with _capture_lock:
        if _capture_depth[0]:
            yield cap
            return
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield cap
            return
        _capture_depth[0] += 1
        tmp = tempfile.TemporaryFile()
        try:
            os.dup2(tmp.fileno(), 2)
            yield cap
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            _capture_depth[0] -= 1
            try:
                tmp.seek(0)
                cap.text = tmp.read(65536).decode("utf-8", "replace")
            finally:
                tmp.close()


@contextlib.contextmanager
def _linked_parent(path: Path, prefix: str):
    """(temp folder, its link "d" to ``path``'s parent folder): plain names SimpleITK can pass to C++."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        parent = os.path.abspath(os.fsencode(str(path.parent)))
        os.symlink(parent, os.path.join(os.fsencode(tmp), b"d"))
        yield tmp, parent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)     # only links: their targets are untouched


@contextlib.contextmanager
def _itk_read_path(path: Path):
    """A path string SimpleITK can take for ``path``: itself, or (a name with bytes that are not
    UTF-8, which SimpleITK cannot pass to C++) a symbolic link with a plain name in a temp folder."""
    text = str(path)
    if _utf8_ok(text):
        yield text
        return
    with _linked_parent(path, "acat-read-") as (tmp, _):
        if _utf8_ok(path.name):
            yield os.path.join(tmp, "d", path.name)
        else:
            link = os.path.join(tmp, "input" + (file_suffix(path) or ".img"))
            os.symlink(os.path.abspath(os.fsencode(str(path))), os.fsencode(link))
            yield link


@contextlib.contextmanager
def _itk_write_path(path: Path):
    """Like :func:`_itk_read_path` for a file to be written (the file lands at ``path``)."""
    text = str(path)
    if _utf8_ok(text):
        yield text
        return
    with _linked_parent(path, "acat-write-") as (tmp, parent):
        name = path.name if _utf8_ok(path.name) else ".acat-write" + (file_suffix(path) or ".img")
        yield os.path.join(tmp, "d", name)
        if name != path.name:
            os.replace(os.path.join(parent, os.fsencode(name)), os.fsencode(str(path)))


def _itk_reason(exc, native: str = "") -> str:
    """The useful last line of an ITK exception (no C++ file names, no stale errno)."""
    lines = [re.sub(r"^\[\w+\]\s*", "", ln.strip()) for ln in (str(exc) + "\n" + native).splitlines()
             if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Exception thrown", "sitk::ERROR", "Error in ",
                                                       "itk::ERROR", "WARNING", "Warning"))
             and not re.match(r"^(/|[A-Za-z]:\\).*\.(cxx|cpp|h|hxx)", ln)]
    reason = lines[-1] if lines else "unknown reason"
    reason = re.sub(r"\s*\(?Reason: [^)]*\)?", "", reason)       # errno left over from another call
    reason = re.sub(r"\S*acat-read-\S*", "the file", reason)
    return reason.strip()[:160] or "unknown reason"


# ------------------------------------------------------------------------------------ reading
def read_volume(path, series_uid: str | None = None, check_ct: bool = False) -> Volume:
    """Read a CT volume (file or DICOM series folder) into a :class:`Volume` with its geometry.

    Raises :class:`InputError` for a missing, unreadable, truncated or corrupt file, a device or
    pipe, a header claiming more voxels than the file holds (checked before anything is allocated),
    a folder without DICOM images, an unknown ``series_uid``, and for images that are not 3-D scalar
    volumes. A DICOM series with left-out, duplicated or missing slices is read with a warning
    (``volume.metadata["warnings"]``) or refused when its geometry cannot be known.
    With ``check_ct=True`` the volume also goes through :func:`validate_ct`.
    """
    path = Path(path)
    shown = display_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{shown} does not exist: give the path of a CT file or DICOM folder") from None
    except OSError as exc:
        raise InputError(f"cannot read {shown} ({exc.strerror or exc}); check the path and its permissions") from None
    notes: list = []
    metadata = {"source": shown}
    if stat.S_ISDIR(st.st_mode):
        image, uid = _read_dicom_series(path, series_uid, notes)
        metadata["series_uid"] = uid
    elif not stat.S_ISREG(st.st_mode):
        raise InputError(f"{shown} is not a regular file (a device, pipe or socket); give a CT file or DICOM folder")
    else:
        if series_uid is not None:
            raise InputError(f"series_uid was given but {shown} is a file: give the DICOM folder instead")
        image = _read_file(path)
    volume = _image_to_volume(image, shown)
    volume.metadata.update(metadata)
    volume.metadata["warnings"] = notes
    if check_ct:
        validate_ct(volume)
    return volume


def _read_file(path: Path) -> sitk.Image:
    shown = display_path(path)
    if path.stat().st_size == 0:
        raise InputError(f"{shown} is empty (0 bytes): re-export the CT as NIfTI, NRRD or DICOM")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {shown}: permission denied")
    check_file_header(path)     # sizes claimed by the header against the file, before ITK allocates
    with _itk_read_path(path) as name, native_output_captured() as native:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(name)
            reader.ReadImageInformation()
            check_voxels(reader.GetSize(), reader.GetNumberOfComponents(), shown)
            image = reader.Execute()
            error = None
        except RuntimeError as exc:
            error = exc
    if error is not None:
        raise InputError(f"cannot read {shown}: it is unreadable, truncated or not an image "
                         f"({_itk_reason(error, native.text)}); re-export the CT as NIfTI, NRRD or DICOM") from None
    return image


MAX_DICOM_FILES = 20000


def _names(paths, limit: int = 3) -> str:
    shown = [display_path(Path(p).name) for p in paths[:limit]]
    return ", ".join(shown) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _read_dicom_series(folder: Path, series_uid, notes: list):
    """Read one DICOM series of ``folder`` (see :func:`read_volume`).

    GDCM only sees a private folder of links to the folder's regular, non-empty files (so that file
    names that are not UTF-8, pipes or devices never reach it). Every file GDCM leaves out, every
    duplicated slice position and every gap is reported; a series without positions, with all its
    slices at one position or with an invalid PixelSpacing is refused."""
    shown = display_path(folder)
    try:
        entries = sorted(os.scandir(os.fsencode(str(folder))), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list the folder {shown} ({exc.strerror or exc})") from None
    files, empty = [], []
    for e in entries:
        if e.name.startswith(b"."):
            continue
        try:
            if not e.is_file():
                continue
            size = e.stat().st_size
        except OSError:
            continue
        (files if size > 0 else empty).append(os.fsdecode(e.path))
    if len(files) > MAX_DICOM_FILES:
        raise InputError(f"{shown} holds {len(files)} files, more than ACAT reads as one series "
                         f"({MAX_DICOM_FILES}); give the folder of one CT series")
    farm = tempfile.mkdtemp(prefix="acat-dicom-")
    try:
        original = {}
        for i, f in enumerate(files):
            link = os.path.join(farm, f"{i:06d}")
            os.symlink(os.path.abspath(os.fsencode(f)), link)
            original[link] = f
        return _read_dicom_links(folder, farm, original, empty, series_uid, notes)
    finally:
        shutil.rmtree(farm, ignore_errors=True)          # links only


def _read_dicom_links(folder, farm, original, empty, series_uid, notes):
    shown = display_path(folder)
    reader = sitk.ImageSeriesReader()
    with native_output_captured():
        try:
            uids = list(reader.GetGDCMSeriesIDs(farm) or [])
        except RuntimeError:
            uids = []
        files_of = {uid: list(reader.GetGDCMSeriesFileNames(farm, uid)) for uid in uids}
    if not uids:
        raise InputError(f"no DICOM images found in folder {shown}: choose the folder that holds the "
                         "CT series' .dcm files")
    if series_uid is not None:
        if series_uid not in files_of:
            raise InputError(f"series {series_uid} is not in {shown}; it holds {', '.join(uids)}")
        uid = series_uid
    else:
        uid = max(uids, key=lambda u: len(files_of[u]))
        if len(uids) > 1:
            _warn(notes, f"{shown} holds {len(uids)} DICOM series; reading the largest, {uid} "
                         f"({len(files_of[uid])} files); pass series_uid to choose another")
    if empty:
        _warn(notes, f"{len(empty)} empty (0-byte) file(s) in {shown} left out: {_names(empty)}")
    listed = {f for fs in files_of.values() for f in fs}
    left_out = [original[f] for f in sorted(original) if f not in listed
                and os.path.basename(original[f]).upper() not in ("DICOMDIR", "LOCKFILE", "VERSION")]
    if left_out:
        _warn(notes, f"{len(left_out)} file(s) in {shown} are not readable DICOM images and were left "
                     f"out: {_names(left_out)}")
    files = _checked_series_files(files_of[uid], original, shown, notes)
    reader, image, error, native = _execute_series(files)
    if error is not None:
        bad = _unreadable_slices(files)
        if bad and len(bad) < len(files):
            _warn(notes, f"{len(bad)} DICOM slice(s) of series {uid} in {shown} are truncated or corrupt "
                         f"and were left out: {_names([original[f] for f in bad])}")
            files = _checked_series_files([f for f in files if f not in bad], original, shown, notes,
                                          report_dropped=False)
            reader, image, error, native = _execute_series(files)
    if error is not None:
        raise InputError(f"cannot read DICOM series {uid} in {shown} ({_itk_reason(error, native.text)}); "
                         "check that the files are complete CT images") from None
    _check_gantry_tilt(reader, files, image, notes)
    return image, uid


def _execute_series(files) -> tuple:
    """Read a DICOM series: (reader, image or None, the RuntimeError or None, captured native output)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = error = None
    with native_output_captured() as native:
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            error = exc
    return reader, image, error, native


def _unreadable_slices(files) -> set:
    bad = set()
    for f in files:
        with native_output_captured():
            try:
                r = sitk.ImageFileReader()
                r.SetFileName(f)
                r.Execute()
            except RuntimeError:
                bad.add(f)
    return bad


def _floats_of(reader, key, n):
    if not reader.HasMetaDataKey(key):
        return None
    try:
        values = [float(v) for v in reader.GetMetaData(key).strip().split("\\")]
    except ValueError:
        return []
    return values if len(values) == n else []


def _checked_series_files(files, original, shown, notes, report_dropped: bool = True) -> list:
    """The series' files in GDCM's order without duplicated positions; checks positions and spacing."""
    infos = []
    unreadable = []
    voxels = 0
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        with native_output_captured():
            try:
                r.ReadImageInformation()
            except RuntimeError:
                unreadable.append(f)
                continue
        size = r.GetSize()
        voxels += int(np.prod([int(s) for s in size], dtype=object))
        infos.append((f, _floats_of(r, "0020|0032", 3), _floats_of(r, "0020|0037", 6),
                      _floats_of(r, "0028|0030", 2)))
    if voxels > MAX_VOXELS:
        raise InputError(f"the DICOM series in {shown} claims {voxels:,} voxels, more than ACAT reads "
                         f"({MAX_VOXELS:,}); crop or downsample the CT")
    if unreadable and report_dropped:
        _warn(notes, f"{len(unreadable)} DICOM slice(s) in {shown} have unreadable headers and were left out: "
                     f"{_names([original[f] for f in unreadable])}")
    if not infos:
        raise InputError(f"no readable DICOM images in {shown}; check that the files are complete CT images")
    if len(infos) == 1:
        return [infos[0][0]]
    missing = [f for f, ipp, _, _ in infos if not ipp]
    if missing:
        raise InputError(f"{len(missing)} of {len(infos)} DICOM slices in {shown} have no valid "
                         "ImagePositionPatient (0020,0032): the slice order and spacing are unknown; "
                         "re-export the series with positions")
    spacings = [ps for _, _, _, ps in infos]
    if any(ps == [] or (ps and not all(math.isfinite(v) and v > 0 for v in ps)) for ps in spacings):
        bad = next(ps for ps in spacings if ps == [] or (ps and not all(math.isfinite(v) and v > 0 for v in ps)))
        raise InputError(f"the DICOM series in {shown} has an invalid PixelSpacing (0028,0030) {bad}: the "
                         "voxel size is unknown; fix the header or re-export the series")
    if any(ps is None for ps in spacings):
        _warn(notes, f"the DICOM series in {shown} has no PixelSpacing (0028,0030): read with 1 mm x 1 mm "
                     "pixels, so distances and sizes may be wrong")
    iop = next((o for _, _, o, _ in infos if o), None) or [1, 0, 0, 0, 1, 0]
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    if not np.linalg.norm(normal) > 0:
        raise InputError(f"the DICOM series in {shown} has an invalid ImageOrientationPatient (0020,0037) {iop}")
    normal = normal / np.linalg.norm(normal)
    pos = np.array([np.asarray(ipp) @ normal for _, ipp, _, _ in infos])
    order = np.argsort(pos, kind="stable")
    steps = np.diff(pos[order])
    if np.ptp(pos) < 1e-4:
        raise InputError(f"all {len(infos)} DICOM slices in {shown} lie at the same position: the slice "
                         "spacing is unknown (duplicated files, or not a CT volume)")
    typical = float(np.median(steps[steps > 1e-4]))
    dup = set()
    for n, step in enumerate(steps):
        if step < max(1e-4, 0.01 * typical):
            dup.add(int(order[n + 1]))
    if dup and report_dropped:
        _warn(notes, f"{len(dup)} DICOM slice(s) in {shown} repeat the position of another slice and were "
                     f"left out: {_names([original[infos[i][0]] for i in sorted(dup)])}")
    kept = [i for i in range(len(infos)) if i not in dup]
    kpos = np.sort(pos[kept])
    ksteps = np.diff(kpos)
    if len(ksteps) and (ksteps.max() > 1.5 * typical or ksteps.min() < 0.67 * typical):
        gap = int(np.argmax(ksteps))
        _warn(notes, f"uneven DICOM slice spacing in {shown} ({ksteps.min():.3g}..{ksteps.max():.3g} mm, "
                     f"typically {typical:.3g} mm; missing slice(s) near {kpos[gap]:.1f}..{kpos[gap + 1]:.1f} mm "
                     "along the slice normal?): the volume is read on an even grid and slices beyond the gap "
                     "are displaced; check the series")
    kept.sort(key=lambda i: pos[i])       # along the slice normal (GDCM falls back to names on duplicates)
    return [infos[i][0] for i in kept]


def _check_gantry_tilt(reader, files, image, notes) -> None:
    """Warn when the slice positions do not run along the slice normal (gantry tilt / shear)."""
    tilt = 0.0
    try:
        if reader.HasMetaDataKey(0, "0018|1120"):
            tilt = float(reader.GetMetaData(0, "0018|1120").strip() or 0.0)
    except (RuntimeError, ValueError):
        tilt = 0.0
    sheared = False
    if len(files) > 1:
        try:
            p0 = np.array([float(v) for v in reader.GetMetaData(0, "0020|0032").split("\\")])
            p1 = np.array([float(v) for v in reader.GetMetaData(len(files) - 1, "0020|0032").split("\\")])
            step = p1 - p0
            normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
            if np.linalg.norm(step) > 0:
                cos = abs(step @ normal) / np.linalg.norm(step)
                sheared = cos < np.cos(np.deg2rad(0.5))
        except (RuntimeError, ValueError):
            pass
    if abs(tilt) > 0.01 or sheared:
        _warn(notes, f"gantry tilt ({tilt:g} deg) or sheared slice positions: the volume is read on a "
                     "non-tilted grid and may be geometrically distorted; resample (de-tilt) it first")


def _image_to_volume(image: sitk.Image, path) -> Volume:
    dim = image.GetDimension()
    if dim != 3:
        kind = "2-D" if dim == 2 else f"{dim}-D"
        raise InputError(f"{path} is a {kind} image; ACAT needs a 3-D CT volume (a stack of axial slices)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); give a greyscale CT in Hounsfield units")
    return Volume(array=sitk.GetArrayFromImage(image), spacing=image.GetSpacing(),
                  origin=image.GetOrigin(), direction=np.asarray(image.GetDirection()).reshape(3, 3))


def volume_to_image(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a Volume (same array values and geometry)."""
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(np.asarray(volume.direction, dtype=float).ravel()))
    return image


def image_to_volume(image: sitk.Image) -> Volume:
    """The Volume of a 3-D scalar SimpleITK image."""
    return _image_to_volume(image, "<image>")


# ------------------------------------------------------------------------------------ writing
def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix; no known suffix: a DICOM series folder).

    Returns the path written. DICOM series store int16 (HU rounded to integers).
    """
    path = Path(path)
    if file_suffix(path) in FILE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = volume_to_image(volume)
        with _itk_write_path(path) as name, native_output_captured() as native:
            try:
                sitk.WriteImage(image, name, compress)
                error = None
            except RuntimeError as exc:
                error = exc
        if error is not None:
            raise OSError(f"cannot write {display_path(path)} ({_itk_reason(error, native.text)})")
        return path
    if file_suffix(path) in DICOM_SUFFIXES:
        raise InputError(f"{path}: a CT volume is written as a DICOM series folder; give a folder path")
    write_dicom_series(volume, path)
    return path


def write_dicom_series(volume: Volume, folder, series_description: str = "ACAT",
                       patient_id: str = "ACAT", modality: str = "CT") -> list:
    """Write ``volume`` as a DICOM series (one int16 slice per file) into ``folder``; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError("only 3-D volumes can be written as a DICOM series")
    hu = np.clip(np.rint(array.astype(np.float64)), -32768, 32767).astype(np.int16)
    image = volume_to_image(volume.with_array(hu))
    direction = np.asarray(volume.direction, dtype=float)
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    uid_root = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000) % 10**12) + "." + str(os.getpid())
    study_uid, series_uid = uid_root + ".1", uid_root + ".2"
    iop = "\\".join(f"{v:.10g}" for v in np.concatenate([direction[:, 0], direction[:, 1]]))
    common = [
        ("0008|0060", modality), ("0008|0020", now_date), ("0008|0030", now_time),
        ("0008|0021", now_date), ("0008|0031", now_time), ("0008|103e", series_description),
        ("0010|0010", "ACAT^Synthetic"), ("0010|0020", patient_id), ("0020|000d", study_uid),
        ("0020|000e", series_uid), ("0020|0011", "1"), ("0020|0037", iop),
        ("0018|0050", f"{volume.spacing[2]:.10g}"), ("0018|0088", f"{volume.spacing[2]:.10g}"),
        ("0028|1052", "0"), ("0028|1053", "1"), ("0028|1054", "HU"),
    ]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in common:
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{uid_root}.3.{k + 1}")
        name = folder / f"slice_{k:04d}.dcm"
        with _itk_write_path(name) as target, native_output_captured():
            writer.SetFileName(target)
            writer.Execute(slice_image)
        files.append(name)
    return files


# ------------------------------------------------------------------------------------ checking
def validate_ct(volume: Volume, min_slices: int = MIN_SLICES, check_hu: bool = True) -> None:
    """Raise :class:`InputError` unless ``volume`` is a 3-D scalar CT in Hounsfield units ACAT can analyse."""
    array = np.asarray(volume.array)
    if array.ndim == 4 and array.shape[-1] in (2, 3, 4):
        raise InputError(f"the image has {array.shape[-1]} components per voxel (colour or vector image); "
                         "give a greyscale CT in Hounsfield units")
    if array.ndim != 3:
        raise InputError(f"the image is {array.ndim}-D; ACAT needs a 3-D CT volume (a stack of axial slices)")
    if array.size == 0:
        raise InputError("the volume is empty (no voxels); give a complete CT volume")
    if min(array.shape) == 1:
        raise InputError(f"the volume has shape {array.shape}: a single 2-D slice; give the whole CT series")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"voxel type {array.dtype} is not a real number; give a CT in Hounsfield units")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError("the volume contains NaN or infinite values; fix or re-export the CT")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(f"the volume is constant ({lo}); give a real CT scan, not a blank image")
    if array.shape[0] < min_slices:
        raise InputError(f"the volume has only {array.shape[0]} slices; ACAT needs at least {min_slices} "
                         "axial slices: give the whole series")
    if check_hu:
        sample = array[::max(1, array.shape[0] // 16), ::2, ::2]
        p_lo, p_hi = np.percentile(sample, [0.5, 99.5])
        if p_lo > -200 or p_lo < -3100 or p_hi > 5000:
            raise InputError(f"intensities {p_lo:.0f}..{p_hi:.0f} do not look like CT Hounsfield units "
                             "(no air or fat below -200 HU, or values out of range); give a CT in HU "
                             "(MR/PET are not supported; apply the DICOM rescale slope/intercept)")
