"""SuperCM: semi-supervised learning and domain adaptation through differentiable clustering.

The Clustering Module (head, loss, centroid rules) lives in :mod:`supercm.cm` and
needs nothing but PyTorch::

    from supercm import ClusteringModule, cm_loss

The trainer, base methods, datasets and command line are in the sub-packages
(``supercm.train``, ``supercm.methods``, ``supercm.data``, ``supercm.cli``).
"""

from .cm import CENTROID_RULES, ClusteringModule, CMLossTerms, CMOutput, class_sums, cm_loss, cm_loss_terms

__version__ = "0.1.0"

__all__ = [
    "CENTROID_RULES",
    "CMLossTerms",
    "CMOutput",
    "ClusteringModule",
    "__version__",
    "class_sums",
    "cm_loss",
    "cm_loss_terms",
]
