"""CT input/output: round trips with geometry, DICOM series, and every kind of bad input."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from ACATCore.errors import InputError
from ACATCore.io import read_volume, validate_ct, write_dicom_series, write_volume
from ACATCore.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()


def ct_like(shape=(12, 20, 24), direction=OBLIQUE, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, shape).astype(np.int16)
    return Volume(array, spacing=(0.7, 0.8, 2.5), origin=(10.5, -20.25, 33.125), direction=direction)


def assert_same_geometry(a: Volume, b: Volume, atol: float):
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol, rtol=0)


@pytest.mark.parametrize("name, atol", [("ct.nrrd", 1e-12), ("ct.mha", 1e-12), ("ct.nii.gz", 1e-6),
                                        ("ct.nii", 1e-6), ("dicom_series", 1e-6)])
def test_round_trip_keeps_array_and_geometry(tmp_path, name, atol):
    volume = ct_like()
    written = write_volume(volume, tmp_path / name)
    back = read_volume(written)
    assert back.array.shape == volume.array.shape
    np.testing.assert_array_equal(back.array, volume.array)
    assert_same_geometry(back, volume, atol)
    # the same voxel is at the same physical place
    np.testing.assert_allclose(back.index_to_physical([3, 4, 5]), volume.index_to_physical([3, 4, 5]), atol=1e-5)


def test_ras_stored_nifti_keeps_physical_positions(tmp_path):
    volume = ct_like(direction=np.diag([-1.0, -1.0, 1.0]))
    back = read_volume(write_volume(volume, tmp_path / "ras.nii.gz"))
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    np.testing.assert_allclose(back.index_to_physical([[0, 0, 0], [23, 19, 11]]),
                               volume.index_to_physical([[0, 0, 0], [23, 19, 11]]), atol=1e-5)


def test_left_handed_volume_through_dicom_keeps_physical_positions(tmp_path):
    volume = ct_like(direction=np.diag([1.0, 1.0, -1.0]))
    back = read_volume(write_volume(volume, tmp_path / "series"))
    np.testing.assert_array_equal(back.array, volume.array[::-1])
    np.testing.assert_allclose(back.index_to_physical([1, 2, 0]), volume.index_to_physical([1, 2, 11]), atol=1e-5)


def test_dicom_series_float_input_is_rounded_and_has_ct_tags(tmp_path):
    volume = ct_like()
    volume = volume.with_array(volume.array.astype(np.float32) + 0.4)
    files = write_dicom_series(volume, tmp_path / "series")
    assert len(files) == volume.array.shape[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|0060").strip() == "CT"
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, np.rint(volume.array))
    assert back.metadata["series_uid"] == reader.GetMetaData("0020|000e").strip()


def test_folder_with_two_series_takes_the_largest_or_the_one_asked(tmp_path):
    folder = tmp_path / "two"
    write_dicom_series(ct_like(shape=(6, 8, 8), seed=1), folder / "a")
    big = ct_like(shape=(9, 8, 8), seed=2)
    write_dicom_series(big, folder / "b")
    for f in (folder / "a").iterdir():
        f.rename(folder / ("a_" + f.name))
    for f in (folder / "b").iterdir():
        f.rename(folder / ("b_" + f.name))
    with pytest.warns(UserWarning, match="2 DICOM series"):
        chosen = read_volume(folder)
    assert chosen.array.shape[0] == 9
    assert "largest" in chosen.metadata["warnings"][0]
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    other = [u for u in uids if u != chosen.metadata["series_uid"]][0]
    assert read_volume(folder, series_uid=other).array.shape[0] == 6
    with pytest.raises(InputError, match="not in"):
        read_volume(folder, series_uid="1.2.3.4")


def test_gantry_tilt_is_warned(tmp_path):
    import pydicom
    files = write_dicom_series(ct_like(direction=np.eye(3)), tmp_path / "tilt")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        position = [float(v) for v in ds.ImagePositionPatient]
        position[1] += k * 2.5 * np.tan(np.deg2rad(15))        # 15 degree tilt: y shifts with z
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.GantryDetectorTilt = "15"
        ds.save_as(path)
    with pytest.warns(UserWarning, match="gantry tilt"):
        volume = read_volume(tmp_path / "tilt")
    assert any("tilt" in w for w in volume.metadata["warnings"])


def test_real_dicom_slice_reads_and_is_refused_as_a_volume():
    import pydicom.data as pydicom_data
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    volume = read_volume(path)
    assert volume.array.shape == (1, 128, 128)
    assert volume.spacing[0] == pytest.approx(0.661468, abs=1e-5)
    with pytest.raises(InputError, match="single 2-D slice"):
        validate_ct(volume)


def test_reading_never_modifies_the_file(tmp_path):
    path = write_volume(ct_like(), tmp_path / "ct.nii.gz")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    read_volume(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_validate_accepts_a_ct():
    array = np.full((8, 16, 16), -1000, dtype=np.int16)
    array[:, 4:12, 4:12] = 40
    validate_ct(Volume(array))


# ---------------------------------------------------------------------------- bad input
def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_give_input_error(tmp_path, suffix):
    path = write_volume(ct_like(), tmp_path / ("ct" + suffix))
    _truncate(path, lambda n: n // 2)
    with pytest.raises(InputError, match="truncated|unreadable"):
        read_volume(path)


def test_corrupted_headers_give_input_error(tmp_path):
    nrrd = tmp_path / "bad.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: nonsense\ndimension: 3\nsizes: 4 4\n\n" + bytes(100))
    nii = write_volume(ct_like(), tmp_path / "bad.nii")
    data = bytearray(nii.read_bytes())
    data[40:56] = b"\xff" * 16                     # the dim[] field
    nii.write_bytes(bytes(data))
    garbage = tmp_path / "garbage.mha"
    garbage.write_bytes(b"not an image at all" * 10)
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    for path in (nrrd, nii, garbage, empty):
        with pytest.raises(InputError) as info:
            read_volume(path)
        assert "\n" not in str(info.value)


def test_missing_path_and_empty_dicom_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nothing.nii.gz")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM images"):
        read_volume(tmp_path / "folder")


def test_truncated_dicom_files_give_input_error(tmp_path):
    files = write_dicom_series(ct_like(), tmp_path / "series")
    for path in files:
        _truncate(path, lambda n: n - 300)
    with pytest.raises(InputError):
        read_volume(tmp_path / "series")


def test_2d_4d_and_vector_images_give_input_error(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(tmp_path / "2d.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 5, 20, 20), np.int16), isVector=False),
                    str(tmp_path / "4d.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 20, 20, 3), np.uint8), isVector=True),
                    str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="2-D"):
        read_volume(tmp_path / "2d.nrrd")
    with pytest.raises(InputError, match="4-D"):
        read_volume(tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="components"):
        read_volume(tmp_path / "rgb.nrrd")


def _ct_array():
    array = np.full((8, 16, 16), -1000.0, dtype=np.float32)
    array[:, 4:12, 4:12] = 40
    return array


@pytest.mark.parametrize("make, pattern", [
    (lambda a: a[0], "2-D"),
    (lambda a: np.stack([a, a], axis=-1)[..., :3], "components|4-D"),
    (lambda a: np.where(a > 0, np.nan, a), "NaN"),
    (lambda a: np.where(a > 0, np.inf, a), "NaN or infinite"),
    (lambda a: np.zeros((0, 16, 16), np.float32), "empty"),
    (lambda a: np.full_like(a, 40), "constant"),
    (lambda a: (a + 1000) * 2, "Hounsfield"),              # MR-like: 0..2080, no negative values
    (lambda a: a[:3], "only 3 slices"),
    (lambda a: a[:1], "single 2-D slice"),
])
def test_validate_ct_refuses_bad_volumes(make, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        validate_ct(Volume(make(_ct_array())))
    assert "\n" not in str(info.value)


def test_read_volume_can_validate(tmp_path):
    mr = Volume((np.random.default_rng(0).random((8, 16, 16)) * 900).astype(np.int16))
    path = write_volume(mr, tmp_path / "mr.nrrd")
    assert read_volume(path).array.shape == (8, 16, 16)
    with pytest.raises(InputError, match="Hounsfield"):
        read_volume(path, check_ct=True)


def test_real_compressed_head_ct_slice_through_a_written_series(tmp_path):
    import pydicom.data as pydicom_data                            # pydicom-data is a test extra
    path = pydicom_data.get_testdata_file("693_J2KR.dcm")            # JPEG 2000 head CT slice
    assert path is not None, "pydicom-data (a test extra) must provide 693_J2KR.dcm"
    one = read_volume(path)
    assert one.array.shape == (1, 512, 512) and one.array.min() < -1000 and one.array.max() > 1000
    stack = Volume(np.repeat(one.array, 6, axis=0), spacing=(*one.spacing[:2], 5.0), origin=one.origin,
                   direction=one.direction)
    back = read_volume(write_volume(stack, tmp_path / "head"), check_ct=True)
    np.testing.assert_array_equal(back.array, stack.array)
    assert_same_geometry(back, stack, 1e-6)


def test_dicom_series_faults_are_warned_or_refused(tmp_path):
    """A missing or duplicated slice is read with a warning; no positions or a bad PixelSpacing is refused."""
    import shutil

    import pydicom
    volume = ct_like(direction=np.eye(3))
    files = write_dicom_series(volume, tmp_path / "gap")
    files[5].unlink()
    back = read_volume(tmp_path / "gap")
    assert back.shape[0] == volume.shape[0] - 1 and any("uneven" in w for w in back.metadata["warnings"])
    files = write_dicom_series(volume, tmp_path / "dup")
    shutil.copy(files[3], tmp_path / "dup" / "a_copy.dcm")
    back = read_volume(tmp_path / "dup")
    np.testing.assert_array_equal(back.array, volume.array)           # order kept, copy left out
    assert any("repeat the position" in w for w in back.metadata["warnings"])
    for name, edit, needle in [("nopos", lambda ds: delattr(ds, "ImagePositionPatient"), "ImagePositionPatient"),
                               ("ps0", lambda ds: setattr(ds, "PixelSpacing", [0, 0]), "PixelSpacing"),
                               ("same", lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 0]), "same position")]:
        for f in write_dicom_series(volume, tmp_path / name):
            ds = pydicom.dcmread(f)
            edit(ds)
            ds.save_as(f)
        with pytest.raises(InputError, match=needle):
            read_volume(tmp_path / name)


def test_header_sizes_are_checked_before_reading(tmp_path):
    huge = tmp_path / "huge.nrrd"
    huge.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 512 512 1000\nencoding: raw\n\n" + bytes(1 << 16))
    with pytest.raises(InputError, match="truncated"):
        read_volume(huge)
    nii = write_volume(ct_like(), tmp_path / "ct.nii")
    data = bytearray(nii.read_bytes())
    data[108:112] = np.float32(np.nan).tobytes()                     # vox_offset
    nii.write_bytes(bytes(data))
    with pytest.raises(InputError, match="vox_offset"):
        read_volume(nii)
