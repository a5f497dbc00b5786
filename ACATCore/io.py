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
Warnings worth showing the user (which series, gantry tilt) go to ``volume.metadata["warnings"]``
as well as to :mod:`warnings` and :mod:`logging`.
"""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .volume import Volume

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
MIN_SLICES = 5  # fewer slices than this is not a volume ACAT can analyse


def _warn(volume_warnings: list, message: str) -> None:
    volume_warnings.append(message)
    log.warning(message)
    warnings.warn(message, stacklevel=3)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in FILE_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


# ------------------------------------------------------------------------------------ reading
def read_volume(path, series_uid: str | None = None, check_ct: bool = False) -> Volume:
    """Read a CT volume (file or DICOM series folder) into a :class:`Volume` with its geometry.

    Raises :class:`InputError` for a missing, unreadable or truncated file, a folder without DICOM
    images, an unknown ``series_uid``, and for images that are not 3-D scalar volumes.
    With ``check_ct=True`` the volume also goes through :func:`validate_ct`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist: give the path of a CT file or DICOM folder")
    notes: list = []
    metadata = {"source": str(path)}
    if path.is_dir():
        image, uid = _read_dicom_series(path, series_uid, notes)
        metadata["series_uid"] = uid
    else:
        if series_uid is not None:
            raise InputError(f"series_uid was given but {path} is a file: give the DICOM folder instead")
        image = _read_file(path)
    volume = _image_to_volume(image, path)
    volume.metadata.update(metadata)
    volume.metadata["warnings"] = notes
    if check_ct:
        validate_ct(volume)
    return volume


def _read_file(path: Path) -> sitk.Image:
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): re-export the CT as NIfTI, NRRD or DICOM")
    if _suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path)  # ITK silently zero-fills a truncated NIfTI
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [re.sub(r"^\[\w+\]\s*", "", ln.strip()) for ln in str(exc).splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("Exception thrown")]
        reason = lines[-1] if lines else "unknown reason"
        raise InputError(f"cannot read {path}: it is unreadable, truncated or not an image "
                         f"({reason[:160]}); re-export the CT as NIfTI, NRRD or DICOM") from None


def _check_nifti_complete(path: Path) -> None:
    """Raise InputError when a NIfTI file holds fewer bytes than its header promises."""
    bad = f"cannot read {path}: the NIfTI file is truncated or corrupt; re-export or copy it again"
    try:
        if path.name.lower().endswith(".gz"):
            import gzip
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InputError(f"{bad} ({exc})") from None
    if len(data) < 348:
        raise InputError(bad)
    for endian in "<>":
        size = int(np.frombuffer(data, endian + "i4", 1, 0)[0])
        if size == 348:   # NIfTI-1
            dim = np.frombuffer(data, endian + "i2", 8, 40).astype(np.int64)
            bitpix = int(np.frombuffer(data, endian + "i2", 1, 72)[0])
            offset = int(np.frombuffer(data, endian + "f4", 1, 108)[0])
            break
        if size == 540 and len(data) >= 540:   # NIfTI-2
            dim = np.frombuffer(data, endian + "i8", 8, 16)
            bitpix = int(np.frombuffer(data, endian + "i2", 1, 14)[0])
            offset = int(np.frombuffer(data, endian + "i8", 1, 168)[0])
            break
    else:
        raise InputError(f"cannot read {path}: not a NIfTI header (corrupt file?); re-export the CT")
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or (dim[1:ndim + 1] < 1).any():
        raise InputError(f"cannot read {path}: corrupt NIfTI header (dimensions {dim[1:ndim + 1]}); re-export the CT")
    needed = offset + int(np.prod(dim[1:ndim + 1])) * bitpix // 8
    if len(data) < needed:
        raise InputError(f"{bad} ({len(data)} of {needed} bytes)")


def _read_dicom_series(folder: Path, series_uid, notes: list):
    reader = sitk.ImageSeriesReader()
    try:
        uids = list(reader.GetGDCMSeriesIDs(str(folder)) or [])
    except RuntimeError:
        uids = []
    if not uids:
        raise InputError(f"no DICOM images found in folder {folder}: choose the folder that holds the "
                         "CT series' .dcm files")
    files_of = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    if series_uid is not None:
        if series_uid not in files_of:
            raise InputError(f"series {series_uid} is not in {folder}; it holds {', '.join(uids)}")
        uid = series_uid
    else:
        uid = max(uids, key=lambda u: len(files_of[u]))
        if len(uids) > 1:
            _warn(notes, f"{folder} holds {len(uids)} DICOM series; reading the largest, {uid} "
                         f"({len(files_of[uid])} files); pass series_uid to choose another")
    files = files_of[uid]
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {uid} in {folder} ({str(exc).strip()[-120:]}); "
                         "check that the files are complete CT images") from None
    _check_gantry_tilt(reader, files, image, notes)
    return image, uid


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


def _image_to_volume(image: sitk.Image, path: Path) -> Volume:
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
    return _image_to_volume(image, Path("<image>"))


# ------------------------------------------------------------------------------------ writing
def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix; no known suffix: a DICOM series folder).

    Returns the path written. DICOM series store int16 (HU rounded to integers).
    """
    path = Path(path)
    if _suffix(path) in FILE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume_to_image(volume), str(path), compress)
        return path
    if _suffix(path) in DICOM_SUFFIXES:
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
        writer.SetFileName(str(name))
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
