"""The paper's two tasks and their class names, in label order (model cards carry the same names)."""

TASKS = ("brain", "lung")
BRAIN_CLASS_NAMES = ("no lesion", "left", "right", "both")
LUNG_CLASS_NAMES = ("normal", "findings")
CLASS_NAMES = {"brain": BRAIN_CLASS_NAMES, "lung": LUNG_CLASS_NAMES}
