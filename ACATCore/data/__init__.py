"""Data: datalists (JSON/CSV/MosMed), stratified splits, territories, ACAT-Synth (``data.synth``)."""
from .datalists import all_items, image_paths, load_datalist, mosmed_datalist, mosmed_items, save_datalist
from .splits import split_counts, stratified_split
from .territories import TERRITORIES, TERRITORY_LABELS, territory_at, territory_map

__all__ = ["load_datalist", "all_items", "image_paths", "save_datalist", "mosmed_items", "mosmed_datalist",
           "stratified_split", "split_counts", "TERRITORIES", "TERRITORY_LABELS", "territory_map", "territory_at"]
