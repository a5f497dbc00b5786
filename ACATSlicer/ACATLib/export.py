"""Write the nodes of one analysis to a folder: maps as NRRD (float32 values), tables as CSV, the peak as markups
JSON, and ``summary.json`` (probabilities, predicted class, peak, model, files)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .geometry import set_node_array
from .results import KIND_ATTRIBUTE, SCALE_ATTRIBUTE, ResultNodes, map_values, table_rows


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def _write(scene, node, storage_class: str, path: Path) -> None:
    import slicer
    storage = getattr(slicer, storage_class)()
    scene.AddNode(storage)
    try:
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise OSError(f"could not write {path}")
    finally:
        scene.RemoveNode(storage)


def _write_volume(scene, node, path: Path) -> None:
    """Write a result volume; 8-bit display maps are written as their float32 values."""
    if node.GetAttribute(SCALE_ATTRIBUTE) is None:
        _write(scene, node, "vtkMRMLVolumeArchetypeStorageNode", path)
        return
    import slicer
    tmp = slicer.vtkMRMLScalarVolumeNode()
    tmp.CopyOrientation(node)
    set_node_array(tmp, map_values(node))
    scene.AddNode(tmp)
    try:
        _write(scene, tmp, "vtkMRMLVolumeArchetypeStorageNode", path)
    finally:
        scene.RemoveNode(tmp)


def export_result_nodes(scene, nodes: ResultNodes, folder, overwrite: bool = False) -> list:
    """Write every output of ``nodes`` into ``folder`` (created); returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, files = [], {}

    def target(name):
        path = folder / name
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose an empty folder or allow overwriting")
        return path

    for kind, node in nodes.volumes.items():
        path = target(_safe(kind.replace(":", "_")) + ".nrrd")
        _write_volume(scene, node, path)
        written.append(path)
        files[kind] = path.name
    for key, node in (("probabilities", nodes.probability_table), ("slice_weights", nodes.slice_weight_table)):
        if node is not None:
            path = target(f"{key}.csv")
            _write(scene, node, "vtkMRMLTableStorageNode", path)
            written.append(path)
            files[key] = path.name
    if nodes.peak_point is not None:
        path = target("peak.mrk.json")
        _write(scene, nodes.peak_point, "vtkMRMLMarkupsJsonStorageNode", path)
        written.append(path)
        files["peak"] = path.name
    summary = {
        "input": nodes.input_node.GetName(),
        "predicted_class": nodes.predicted_class,
        "probabilities": dict(zip(nodes.class_names, [float(p) for p in np.asarray(nodes.probabilities).ravel()]))
        if nodes.probabilities is not None else {},
        "files": files,
        "kinds": {k: n.GetAttribute(KIND_ATTRIBUTE) for k, n in nodes.volumes.items()},
    }
    if nodes.peak_point is not None and nodes.peak_point.GetNumberOfControlPoints():
        ras = [0.0, 0.0, 0.0]
        nodes.peak_point.GetNthControlPointPosition(0, ras)
        summary["peak_ras"] = ras
        summary["peak_label"] = nodes.peak_point.GetNthControlPointLabel(0)
    if nodes.probability_table is not None:
        summary["probability_table"] = [list(r) for r in table_rows(nodes.probability_table)]
    path = target("summary.json")
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    written.append(path)
    return written
