"""Data: datalists (JSON/CSV/MosMed), stratified splits, cached datasets, territories, ACAT-Synth.

The torch/MONAI dataset is imported lazily (``from ACATCore.data.datasets import CTDataset``) so
that using datalists or territories does not import MONAI.
"""
from .datalists import load_datalist, mosmed_datalist, mosmed_items, save_datalist
from .splits import split_counts, stratified_split
from .territories import TERRITORIES, TERRITORY_LABELS, territory_at, territory_map

__all__ = ["load_datalist", "save_datalist", "mosmed_items", "mosmed_datalist", "stratified_split",
           "split_counts", "TERRITORIES", "TERRITORY_LABELS", "territory_map", "territory_at", "CTDataset"]


def __getattr__(name):
    if name == "CTDataset":
        from .datasets import CTDataset
        return CTDataset
    raise AttributeError(name)
