"""The counterfactual searches the fresh-case benchmarks (bench_brain.py, bench_lung.py) compare, as
``ACATCore.analyze`` keyword arguments:

  default     analyze's own search (``DEFAULT_SEARCH``: FISTA with adaptive steps, 7 steps, no early stop)
  paper       the paper's: plain gradient descent, 20 steps, no early stop (``--solver gd``)
  early       the paper's gradient descent with early stop at target probability 0.9 (analyze's default
              until 2026-12-02)
  fista-early FISTA with adaptive steps, 7 steps at most, early stop at 0.9 (the brain bundle's training
              maps: made with early stop 0.9, which FISTA-7 reproduces at Pearson 0.996)
  unsmoothed  analyze's own search, the shown map not smoothed (``smoothing=0``: the paper's map and its
              peak; analyze's default until 2026-12-03)
"""
from ACATCore.counterfactual_options import FAST_SEARCH, FAST_STEPS, PAPER_SEARCH, PAPER_STEPS

SEARCHES = {
    "default": {},
    "paper": {"counterfactual_options": PAPER_SEARCH, "steps": PAPER_STEPS, "early_stop": None},
    "early": {"counterfactual_options": PAPER_SEARCH, "steps": PAPER_STEPS, "early_stop": 0.9},
    "fista-early": {"counterfactual_options": FAST_SEARCH, "steps": FAST_STEPS, "early_stop": 0.9},
    "unsmoothed": {"smoothing": 0},
}
