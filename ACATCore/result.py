"""`AnalysisResult`: everything one ACAT analysis produces, on the input volume's grid.

One type serves the Python API, the CLI (JSON + NRRD + report) and the Slicer module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .volume import Volume

ATTENTION_NAMES = ("early", "middle", "late", "fused")
SAME_AS_BASELINE_NOTE = "ACAT gives its baseline's probabilities: its attention does not change this prediction"


@dataclass
class AnalysisResult:
    input: Volume                      # the input (reference geometry); never modified
    class_names: list                  # e.g. ["no lesion", "left", "right", "both"]
    probabilities: np.ndarray          # (C,) ACAT class probabilities, summing to 1
    saliency: Volume                   # counterfactual saliency in [0, 1] on the input grid
    attention: dict                    # name in ATTENTION_NAMES -> Volume in [0, 1]-ish on the input grid
    counterfactuals: dict              # class name -> Volume (HU) on the input grid
    slice_weights: np.ndarray          # (K,) per input slice k; NaN where the model saw no slice
    slices_seen: np.ndarray            # int indices k of input slices the model saw
    baseline_probabilities: Optional[np.ndarray] = None  # (C,) of the baseline classifier
    peak_index: Optional[tuple] = None   # (i, j, k): the maximum of the most salient region (salient_peak)
    peak_lps: Optional[tuple] = None     # its LPS position in mm
    peak_territory: Optional[str] = None  # brain only: vascular territory holding the peak
    model_card: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)   # stage -> seconds
    settings: dict = field(default_factory=dict)  # how the analysis was run (coverage, steps, alpha, ...)
    warnings: list = field(default_factory=list)

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.predicted_index]

    @property
    def same_as_baseline(self) -> bool:
        """True when ACAT's probabilities equal its baseline classifier's (an ACAT whose gates are 0, as
        one that kept its identity start): then its attention masks are not the reason for the prediction
        (``SAME_AS_BASELINE_NOTE`` says so wherever the result is shown)."""
        base = self.baseline_probabilities
        return base is not None and bool(np.allclose(np.asarray(self.probabilities, dtype=np.float64),
                                                     np.asarray(base, dtype=np.float64), rtol=0.0, atol=1e-6))
