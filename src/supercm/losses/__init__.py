"""The pure losses, one small module each: tensors in, a scalar (or a target) out.

None knows about the trainer, so a term in :mod:`supercm.methods` (or a user's own code) calls them
as they are:

* :mod:`~supercm.losses.grl` — gradient reversal (:func:`grad_reverse`, :class:`GradientReversal`)
  and DANN's reversal schedule :func:`dann_lambda`;
* :mod:`~supercm.losses.domain_adversarial` — :class:`DomainDiscriminator` and :func:`dann_loss` (DANN);
* :mod:`~supercm.losses.class_confusion` — minimum class confusion, :func:`mcc_loss` (MCC);
* :mod:`~supercm.losses.nuclear_norm` — batch nuclear-norm maximisation, :func:`bnm_loss` (BNM);
* :mod:`~supercm.losses.divergence` — the KL divergences of VAT (:func:`kl`, :func:`kl_logits`) and
  :func:`unit_rows`;
* :mod:`~supercm.losses.pseudo_label` — :func:`pseudo_label_target`;
* :mod:`~supercm.losses.confidence` — FixMatch's :func:`confident_labels` and :func:`masked_cross_entropy`;
* :mod:`~supercm.losses.self_adaptive` — FreeMatch's :func:`update_confidence_state`,
  :func:`self_adaptive_thresholds` and :func:`fairness_loss`.

SuperCM's own loss lives with its head in :mod:`supercm.cm`.
"""

from .class_confusion import mcc_loss
from .confidence import confident_labels, masked_cross_entropy
from .divergence import kl, kl_logits, unit_rows
from .domain_adversarial import DomainDiscriminator, dann_loss
from .grl import GradientReversal, GradReverse, dann_lambda, dann_lambda_progress, grad_reverse
from .nuclear_norm import BNM_NORMALISATIONS, bnm_loss
from .pseudo_label import pseudo_label_target
from .self_adaptive import fairness_loss, self_adaptive_thresholds, update_confidence_state

__all__ = [
    "BNM_NORMALISATIONS",
    "DomainDiscriminator",
    "GradReverse",
    "GradientReversal",
    "bnm_loss",
    "confident_labels",
    "dann_lambda",
    "dann_lambda_progress",
    "dann_loss",
    "fairness_loss",
    "grad_reverse",
    "kl",
    "kl_logits",
    "masked_cross_entropy",
    "mcc_loss",
    "pseudo_label_target",
    "self_adaptive_thresholds",
    "unit_rows",
    "update_confidence_state",
]
