"""Loss terms, registered by name: base methods and the regularisers stacked on them.

Adding one is a new file here; the trainer does not change.
"""

from . import bnm, dann, fixmatch, freematch, mcc, mean_teacher, pi_model, pseudo_label, supercm, supervised, vat  # noqa: F401  (registration)
from .base import METHODS, Batch, Term, build_method, check_terms, frozen_batchnorm_stats, register

__all__ = ["METHODS", "Batch", "Term", "build_method", "check_terms", "frozen_batchnorm_stats", "register"]
