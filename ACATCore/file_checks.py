"""Checks of a CT file's header against the file, before ITK allocates anything.

NRRD, MetaImage and NIfTI headers claim a size; :func:`check_file_header` checks it against
:data:`MAX_VOXELS` and against the bytes the file (or its detached data file) really holds, and
decompresses compressed data in chunks, to its end, to check it is complete (nothing the size of the
image is held). Every failure is one :class:`~ACATCore.errors.InputError` saying what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError

FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


# ------------------------------------------------------------------------------------ limits
# The largest volume ACAT reads: 2^29 voxels (e.g. 512 x 512 x 2048). Every header's claimed size is
# checked against this and against the bytes the file really holds BEFORE anything is allocated.
MAX_VOXELS = 1 << 29
_CHUNK = 1 << 20


def display_path(path) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (undecodable file names) as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")



def file_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in FILE_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(s):
            return s
    return ""



def check_voxels(size, components, shown) -> None:
    n = int(np.prod([max(0, int(s)) for s in size], dtype=object)) * max(1, int(components or 1))
    if n > MAX_VOXELS:
        dims = " x ".join(str(int(s)) for s in size)
        raise InputError(f"{shown} claims {dims} voxels ({n:,}), more than ACAT reads ({MAX_VOXELS:,}); "
                         "crop or downsample the CT")



# ------------------------------------------------------------------------------------ header checks
_NRRD_TYPE_SIZE = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(["short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"], 2),
    **dict.fromkeys(["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"], 4),
    **dict.fromkeys(["longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"], 8),
}
_MET_TYPE_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                  "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                  "MET_DOUBLE": 8}
# NIfTI datatype code -> bits per voxel
_NIFTI_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64,
                 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}


def check_file_header(path: Path) -> None:
    """Check a NRRD, MetaImage or NIfTI header against the file: sane dimensions, at most
    :data:`MAX_VOXELS`, and (raw data) enough bytes or (compressed data) a stream that really
    decompresses to the size claimed (counted in chunks: nothing the size of the image is held).
    Raises :class:`InputError`; other formats are left to ITK."""
    suffix = file_suffix(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if suffix in (".nii", ".nii.gz"):
        _check_nifti(path)
    elif head.startswith(b"NRRD000") or suffix in (".nrrd", ".nhdr"):
        _check_nrrd(path)
    elif suffix in (".mha", ".mhd"):
        _check_metaimage(path)


def _corrupt(path, what: str) -> InputError:
    return InputError(f"cannot read {display_path(path)}: {what}; re-export or copy the CT again")


def _claimed(path, dims, bytes_per_voxel) -> int:
    dims = [int(d) for d in dims]
    if not dims or any(d < 1 for d in dims):
        raise _corrupt(path, f"corrupt header (dimensions {dims})")
    check_voxels(dims, 1, display_path(path))
    return int(np.prod(dims, dtype=object)) * int(bytes_per_voxel)


def _count_decompressed(path, start: int, needed: int, kind: str) -> tuple:
    """Decompress the stream at ``start`` chunk by chunk (nothing the size of the image is held) to
    its end, so that its checksum is verified; ``(bytes it yields, whether it ended)``, counting
    stops a little beyond ``needed``."""
    import bz2
    import zlib
    got = 0
    d = bz2.BZ2Decompressor() if kind == "bzip2" else zlib.decompressobj(47)   # zlib or gzip header
    with open(path, "rb") as f:
        f.seek(start)
        try:
            while got <= needed + _CHUNK:
                if kind == "bzip2":
                    data = f.read(_CHUNK) if d.needs_input else b""
                    if d.needs_input and not data:
                        break
                    out = d.decompress(data, max_length=_CHUNK)
                else:
                    data = d.unconsumed_tail or f.read(_CHUNK)
                    if not data:
                        break
                    out = d.decompress(data, _CHUNK)
                got += len(out)
                if d.eof:
                    break
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise _corrupt(path, f"the compressed image data cannot be decoded ({exc})") from None
    return got, d.eof


def _check_compressed(path, start, needed, kind):
    got, ended = _count_decompressed(path, start, needed, kind)
    if got < needed or (not ended and got <= needed + _CHUNK):
        raise _corrupt(path, f"the compressed image data is truncated or corrupt ({min(got, needed):,} of "
                             f"{needed:,} bytes, {'complete' if ended else 'no end of stream'})")


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
    if not raw.startswith(b"NRRD000"):
        raise _corrupt(path, "not a NRRD file (no NRRD magic)")
    end = raw.find(b"\n\n")
    sep = 2
    if end < 0:
        end, sep = raw.find(b"\r\n\r\n"), 4
    fields = {}
    for line in raw[: end if end >= 0 else len(raw)].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    try:
        dims = [int(v) for v in fields.get("sizes", "").split()]
        ndim = int(fields.get("dimension", len(dims)))
    except ValueError:
        raise _corrupt(path, "corrupt NRRD header (sizes)") from None
    if not dims or ndim != len(dims) or not 1 <= ndim <= 16:
        raise _corrupt(path, f"corrupt NRRD header (dimension {fields.get('dimension')}, sizes {fields.get('sizes')})")
    size = _NRRD_TYPE_SIZE.get(" ".join(fields.get("type", "").lower().split()))
    needed = _claimed(path, dims, size or 1)
    detached = fields.get("data file") or fields.get("datafile")
    if size is None:
        return          # unknown type: ITK says so
    encoding = fields.get("encoding", "raw").lower()
    if detached:
        _check_detached(path, detached, needed, encoding, fields.get("byte skip", fields.get("byteskip", "0")))
        return
    if end < 0:
        raise _corrupt(path, "the NRRD header has no end (no blank line before the data)")
    start = end + sep
    for _ in range(max(0, int(fields.get("line skip", fields.get("lineskip", "0")) or 0))):
        nl = raw.find(b"\n", start)
        start = nl + 1 if nl >= 0 else start
    skip = fields.get("byte skip", fields.get("byteskip", "0")) or "0"
    try:
        skip = int(skip)
    except ValueError:
        raise _corrupt(path, "corrupt NRRD header (byte skip)") from None
    file_size = path.stat().st_size
    if encoding == "raw":
        available = file_size - start - max(skip, 0) if skip >= 0 else file_size
        if available < needed:
            raise _corrupt(path, f"the file is truncated ({max(available, 0):,} of {needed:,} bytes of image data)")
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        _check_compressed(path, start + max(skip, 0), needed, "bzip2" if encoding.startswith("bz") else "gzip")
    elif encoding in ("ascii", "text", "txt"):
        if (file_size - start) < needed // max(size, 1):
            raise _corrupt(path, "the file is truncated (fewer numbers than voxels)")
    elif encoding == "hex":
        if (file_size - start) < 2 * needed:
            raise _corrupt(path, "the file is truncated")


def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    fields, start = {}, None
    pos = 0
    for line in raw.split(b"\n"):
        pos += len(line) + 1
        text = line.decode("latin-1").strip()
        if "=" not in text:
            continue
        key, _, value = text.partition("=")
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            start = pos
            break
    if start is None or "dimsize" not in fields:
        return          # not a header we understand: ITK decides
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        ndim = int(fields.get("ndims", len(dims)))
        channels = int(fields.get("elementnumberofchannels", "1") or 1)
    except ValueError:
        raise _corrupt(path, "corrupt MetaImage header (DimSize)") from None
    if ndim != len(dims) or not 1 <= ndim <= 16 or channels < 1:
        raise _corrupt(path, f"corrupt MetaImage header (NDims {fields.get('ndims')}, DimSize {fields['dimsize']})")
    etype = fields.get("elementtype", "").upper().replace("_ARRAY", "")
    size = _MET_TYPE_SIZE.get(etype)
    needed = _claimed(path, dims + [channels], size or 1)
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1", "yes")
    if size is None:
        return          # an unknown type: ITK says so
    if fields.get("elementdatafile", "").upper() != "LOCAL":
        _check_detached(path, fields.get("elementdatafile", ""), needed, "zlib" if compressed else "raw",
                        fields.get("headersize", "0"))
        return
    file_size = path.stat().st_size
    if compressed:
        _check_compressed(path, start, needed, "zlib")
    else:
        header_size = int(fields.get("headersize", "0") or 0) if fields.get("headersize", "0").lstrip("-").isdigit() else 0
        available = file_size if header_size == -1 else file_size - start - max(header_size, 0)
        if available < needed:
            raise _corrupt(path, f"the file is truncated ({max(available, 0):,} of {needed:,} bytes of image data)")


def _check_detached(header: Path, name: str, needed: int, encoding: str, skip) -> None:
    """The data file a NRRD/MetaImage header names (one file, not a list or pattern): present and
    holding the claimed bytes (raw) or a stream that decompresses to them."""
    name = name.strip()
    if not name or name.upper().startswith("LIST") or "%" in name or " " in name:
        return          # a list of slice files: ITK checks each
    data = Path(name) if os.path.isabs(name) else header.parent / name
    if not data.is_file():
        raise _corrupt(header, f"its data file {display_path(name)} is missing")
    try:
        skip = int(skip or 0)
    except ValueError:
        skip = 0
    if encoding == "raw":
        available = data.stat().st_size - max(skip, 0) if skip >= 0 else data.stat().st_size
        if available < needed:
            raise _corrupt(header, f"its data file is truncated ({max(available, 0):,} of {needed:,} bytes)")
    elif encoding in ("gzip", "gz", "zlib", "bzip2", "bz2"):
        _check_compressed(data, max(skip, 0), needed, "bzip2" if encoding.startswith("bz") else "gzip")


def _check_nifti(path: Path) -> None:
    """Raise InputError when a NIfTI header is inconsistent or the file holds fewer bytes than it promises."""
    import gzip
    import zlib
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"the NIfTI file is corrupt ({exc})") from None
    if len(head) < 348:
        raise _corrupt(path, "the NIfTI file is truncated (incomplete header)")
    for endian in "<>":
        size = int(np.frombuffer(head, endian + "i4", 1, 0)[0])
        if size == 348:   # NIfTI-1
            dim = np.frombuffer(head, endian + "i2", 8, 40).astype(np.int64)
            datatype = int(np.frombuffer(head, endian + "i2", 1, 70)[0])
            bitpix = int(np.frombuffer(head, endian + "i2", 1, 72)[0])
            offset = float(np.frombuffer(head, endian + "f4", 1, 108)[0])
            magic, minimum = head[344:347], 352
            break
        if size == 540 and len(head) >= 540:   # NIfTI-2
            dim = np.frombuffer(head, endian + "i8", 8, 16)
            datatype = int(np.frombuffer(head, endian + "i2", 1, 12)[0])
            bitpix = int(np.frombuffer(head, endian + "i2", 1, 14)[0])
            offset = float(np.frombuffer(head, endian + "i8", 1, 168)[0])
            magic, minimum = head[4:7], 544
            break
    else:
        raise _corrupt(path, "not a NIfTI header")
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or (dim[1:ndim + 1] < 1).any():
        raise _corrupt(path, f"corrupt NIfTI header (dimensions {[int(d) for d in dim[1:max(ndim, 0) + 1][:7]]})")
    if datatype not in _NIFTI_BITPIX:
        raise _corrupt(path, f"corrupt NIfTI header (unknown datatype {datatype})")
    if bitpix != _NIFTI_BITPIX[datatype]:
        raise _corrupt(path, f"corrupt NIfTI header (bitpix {bitpix} does not match datatype {datatype}, "
                             f"which has {_NIFTI_BITPIX[datatype]} bits)")
    if not np.isfinite(offset) or offset != int(offset) or (magic in (b"n+1", b"n+2") and offset < minimum) \
            or offset < 0:
        raise _corrupt(path, f"corrupt NIfTI header (vox_offset {offset:g}: the image data would overlap the header)")
    needed = int(offset) + _claimed(path, dim[1:ndim + 1], bitpix // 8)
    if gz:
        try:
            got = 0
            with gzip.open(path, "rb") as f:     # to the end: the gzip CRC is checked there
                while got <= needed + 16 * _CHUNK:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"the NIfTI file is truncated or corrupt ({exc})") from None
    else:
        got = path.stat().st_size
    if got < needed:
        raise _corrupt(path, f"the NIfTI file is truncated ({got:,} of {needed:,} bytes)")
