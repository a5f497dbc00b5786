"""Volume node <-> ``ACATCore.volume.Volume``, keeping the geometry exact.

Slicer keeps a volume's geometry in RAS (origin, spacing, IJK-to-RAS directions stored separately on
the node); a ``Volume`` is LPS with the same separation (origin, spacing, direction columns). The
conversion only flips the signs of the first two physical axes, so a round trip node -> Volume ->
node reproduces origin, spacing and directions bit for bit.

Arrays: a node's ``vtkImageData`` is x-fastest, which is exactly numpy ``(k, j, i)`` C order, the
``Volume`` convention; no axis is swapped.
"""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from ACATCore.errors import InputError
from ACATCore.volume import Volume

_FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)


def _matrix_to_numpy(matrix: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def ijk_to_ras_matrix(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as numpy (local coordinates, before any parent transform)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def _directions_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    return _matrix_to_numpy(m)[:3, :3]


def volume_from_node(node) -> Volume:
    """A ``Volume`` (LPS, HU array copied) from a scalar volume node.

    The geometry is the node's own (its local frame); a parent transform, if any, is recorded in
    ``metadata["parent_transform_id"]`` and result nodes are placed under the same transform.
    """
    if node is None:
        raise InputError("no input volume selected; choose a CT volume")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{node.GetName()}' holds no image data; load a CT volume first")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(f"volume '{node.GetName()}' has {scalars.GetNumberOfComponents()} components per "
                         "voxel; ACAT needs a single-component (grey-level) CT volume")
    ni, nj, nk = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(nk, nj, ni).copy()
    direction_lps = _FLIP @ _directions_ras(node)
    origin_lps = _FLIP @ np.asarray(node.GetOrigin(), dtype=np.float64)
    metadata = {"name": node.GetName(), "slicer_node_id": node.GetID()}
    if node.GetTransformNodeID():
        metadata["parent_transform_id"] = node.GetTransformNodeID()
    return Volume(array=array, spacing=tuple(node.GetSpacing()), origin=tuple(origin_lps),
                  direction=direction_lps, metadata=metadata)


def _vtk_array(array: np.ndarray):
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    flat = np.ascontiguousarray(array).ravel(order="C")
    return numpy_support.numpy_to_vtk(flat, deep=True)


def set_node_array(node, array: np.ndarray) -> None:
    """Replace the node's voxels with ``array`` (numpy ``(k, j, i)``), keeping its geometry."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {array.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = _vtk_array(array)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)


def set_node_geometry(node, volume: Volume) -> None:
    """Set the node's origin, spacing and IJK-to-RAS directions from ``volume`` (LPS -> RAS)."""
    direction_ras = _FLIP @ volume.direction
    node.SetOrigin(*(float(v) for v in _FLIP @ np.asarray(volume.origin, dtype=np.float64)))
    node.SetSpacing(*(float(v) for v in volume.spacing))
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(direction_ras[r, c]))
    node.SetIJKToRASDirectionMatrix(m)


def update_node_from_volume(node, volume: Volume) -> None:
    """Write ``volume`` (array and geometry) into an existing scalar volume node."""
    set_node_geometry(node, volume)
    set_node_array(node, volume.array)


def node_from_volume(scene, volume: Volume, name: str = "ACAT volume", node=None,
                     display: bool = True):
    """A new (or the given) scalar volume node holding ``volume``, with default display nodes."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    update_node_from_volume(node, volume)
    if display and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
