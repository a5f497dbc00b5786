"""Which outputs of an analysis are loaded into Slicer (the user's choice; no vtk, no torch).

A full-size float32 map of a 512 x 512 x 300 CT is 315 MB; loading every output of a brain run
(saliency, four attention masks, three counterfactual scans and three differences) would add about
3 GB per run. So only the outputs the user asks for travel back from the worker and become nodes:
by default the saliency map and the fused attention mask.
"""
from __future__ import annotations

OUTPUT_GROUPS = ("saliency", "fused attention", "stage attention", "differences", "counterfactuals")
DEFAULT_OUTPUTS = ("saliency", "fused attention")
STAGE_ATTENTION = ("early", "middle", "late")


def check_outputs(outputs) -> tuple:
    """``outputs`` (None: the defaults) as a tuple of known groups; an unknown group is an error."""
    outputs = DEFAULT_OUTPUTS if outputs is None else tuple(outputs)
    unknown = [o for o in outputs if o not in OUTPUT_GROUPS]
    if unknown:
        raise ValueError(f"unknown ACAT output(s) {unknown}; choose from {', '.join(OUTPUT_GROUPS)}")
    return outputs


def wanted_parts(result, outputs) -> tuple:
    """(keep the saliency?, attention names to keep, counterfactual classes to keep) of ``result``
    for ``outputs`` (None: everything the result holds). Differences need the counterfactuals."""
    attention = list((result.attention or {}).keys())
    counterfactuals = list((result.counterfactuals or {}).keys())
    if outputs is None:
        return result.saliency is not None, attention, counterfactuals
    outputs = check_outputs(outputs)
    names = [n for n in attention if (n == "fused" and "fused attention" in outputs)
             or (n in STAGE_ATTENTION and "stage attention" in outputs)]
    cfs = counterfactuals if ("counterfactuals" in outputs or "differences" in outputs) else []
    return result.saliency is not None and "saliency" in outputs, names, cfs


def outputs_from_flags(saliency=True, fused_attention=True, stage_attention=False, differences=False,
                       counterfactuals=False) -> tuple:
    """The output groups of the module's "Load outputs" check boxes."""
    flags = (saliency, fused_attention, stage_attention, differences, counterfactuals)
    return tuple(group for group, on in zip(OUTPUT_GROUPS, flags) if on)
