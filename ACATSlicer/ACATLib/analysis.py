"""What the module's logic does, without Qt: analyse a volume node here or in a background process.

``ACAT.py``'s ``ACATLogic`` only forwards to these functions with ``slicer.mrmlScene``, so all of it
is tested on a real MRML scene (slicer-core) outside Slicer.
"""
from __future__ import annotations

import shutil
from typing import Optional

from .engine import check_options, run_engine
from .geometry import volume_from_node
from .outputs import DEFAULT_OUTPUTS, check_outputs
from .results import ResultNodes, result_to_nodes
from .runner import BackgroundAnalysis


def model_spec(model: str, model_file=None) -> str:
    """The ``model`` argument of the engine: "brain", "lung" or a model file / bundle path."""
    if model == "file":
        if not model_file or str(model_file).strip() in ("", "."):
            raise ValueError("choose a model file (.safetensors with its .json model card)")
        return str(model_file)
    return model


def find_python_slicer() -> Optional[str]:
    """Slicer's ``PythonSlicer`` launcher (on the PATH inside Slicer), or None."""
    return shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe")


def process(scene, input_node, options: dict, outputs=DEFAULT_OUTPUTS, threshold_percentile: float = 95.0,
            report=None) -> ResultNodes:
    """Analyse ``input_node`` in this process (blocks) and return the nodes of the chosen outputs."""
    if input_node is None:
        raise ValueError("select an input volume")
    outputs = check_outputs(outputs)
    result = run_engine(volume_from_node(input_node), check_options(options), report=report)
    return result_to_nodes(scene, result, input_node, threshold_percentile=threshold_percentile, outputs=outputs)


def start_background(input_node, options: dict, outputs=DEFAULT_OUTPUTS, python_executable=None,
                     launcher=None, **kwargs) -> BackgroundAnalysis:
    """Start the analysis of ``input_node`` in a separate process (``PythonSlicer`` inside Slicer);
    only the chosen ``outputs`` come back. Poll, wait or cancel the returned job."""
    if input_node is None:
        raise ValueError("select an input volume")
    job = BackgroundAnalysis(volume_from_node(input_node), options, python_executable=python_executable,
                             launcher=launcher, outputs=outputs, **kwargs)
    return job.start()


def finish_background(scene, job: BackgroundAnalysis, input_node, threshold_percentile: float = 95.0) -> ResultNodes:
    """The nodes of a finished background job (its result holds only the outputs asked for)."""
    return result_to_nodes(scene, job.result, input_node, threshold_percentile=threshold_percentile,
                           outputs=job.outputs)
