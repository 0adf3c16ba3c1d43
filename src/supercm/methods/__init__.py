"""Base methods, registered by name. Adding one is a new file here; the trainer does not change."""

from . import mean_teacher, pi_model, pseudo_label, supervised, vat  # noqa: F401  (registration)
from .base import METHODS, SSLMethod, StepInputs, build_method, frozen_batchnorm_stats, register

__all__ = ["METHODS", "SSLMethod", "StepInputs", "build_method", "frozen_batchnorm_stats", "register"]
