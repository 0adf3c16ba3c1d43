"""Analyses of trained runs: proxy A-distance, pictures, comparison reports, β/δ tuning.

``pad`` and ``compare`` need only the core dependencies; ``plot`` needs matplotlib
(``pip install supercm[plot]``) and ``tune`` needs Optuna (``pip install supercm[tune]``),
imported when those functions are called.
"""

from .pad import PADResult, flawed_proxy_a_distance, pad_from_error, proxy_a_distance

__all__ = ["PADResult", "flawed_proxy_a_distance", "pad_from_error", "proxy_a_distance"]
