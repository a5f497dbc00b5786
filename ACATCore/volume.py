"""The `Volume`: a CT image array with its physical geometry.

Conventions (the same as SimpleITK, so that I/O is loss-free):
- ``array`` is indexed ``[k, j, i]`` (slice, row, column), i.e. numpy order ``(z, y, x)``.
- ``spacing`` and ``origin`` are ``(x, y, z)`` in millimetres, physical space is LPS.
- ``direction`` is a 3x3 matrix whose *columns* are the LPS directions of the i, j, k axes.
Physical point of voxel (i, j, k): ``origin + direction @ (spacing * (i, j, k))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def index_to_physical(self, ijk) -> np.ndarray:
        """LPS point(s) of voxel index/indices given as (..., 3) in (i, j, k) order."""
        ijk = np.asarray(ijk, dtype=np.float64)
        m = self.ijk_to_lps()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def physical_to_index(self, lps) -> np.ndarray:
        """Continuous (i, j, k) index/indices of LPS point(s) given as (..., 3)."""
        lps = np.asarray(lps, dtype=np.float64)
        m = np.linalg.inv(self.ijk_to_lps())
        return lps @ m[:3, :3].T + m[:3, 3]

    def with_array(self, array: np.ndarray, **metadata) -> "Volume":
        """A new Volume with the same geometry and another array of the same shape."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array, direction=self.direction.copy(),
                       metadata={**self.metadata, **metadata})
