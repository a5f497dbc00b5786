"""Stratified train / validation / test splits (the paper: 70 / 15 / 15, three seeds)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import ConfigError

SPLIT_NAMES = ("training", "validation", "test")


def split_counts(n: int, fractions) -> list:
    """Whole counts summing to ``n`` in the given proportions (largest remainder)."""
    fractions = np.asarray(fractions, dtype=float)
    if (fractions < 0).any() or fractions.sum() <= 0:
        raise ConfigError(f"split fractions {fractions.tolist()} must be >= 0 with a positive sum")
    exact = n * fractions / fractions.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def stratified_split(items: list, fractions=(0.7, 0.15, 0.15), seed: int = 0, key: str = "label",
                     names=SPLIT_NAMES) -> dict:
    """Split ``items`` (dicts) into ``names`` keeping each ``key`` value's proportions.

    Deterministic for a given seed and item order; every class is shuffled with its own stream of
    ``numpy.random.default_rng(seed)`` and cut by :func:`split_counts`. Items keep their order of
    appearance within each split.
    """
    if len(fractions) != len(names):
        raise ConfigError(f"{len(fractions)} split fractions for {len(names)} split names")
    by_class = defaultdict(list)
    for index, item in enumerate(items):
        if key not in item:
            raise ConfigError(f"item {index} has no {key!r} to stratify on")
        by_class[str(item[key])].append(index)
    rng = np.random.default_rng(seed)
    assigned = {}
    for cls in sorted(by_class):
        indices = np.asarray(by_class[cls])
        indices = indices[rng.permutation(len(indices))]
        start = 0
        for name, count in zip(names, split_counts(len(indices), fractions)):
            for index in indices[start:start + count]:
                assigned[int(index)] = name
            start += count
    return {name: [item for index, item in enumerate(items) if assigned[index] == name] for name in names}
