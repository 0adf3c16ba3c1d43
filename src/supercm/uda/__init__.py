"""Unsupervised domain adaptation losses, one small pure module per loss (SPEC §6).

Each takes tensors and returns a scalar loss; none knows about the trainer, so a base
method or a regulariser can call it as it is:

* :mod:`~supercm.uda.grl` — gradient reversal (:func:`grad_reverse`, :class:`GradientReversal`)
  and DANN's reversal schedule :func:`dann_lambda`;
* :mod:`~supercm.uda.dann` — :class:`DomainDiscriminator` and :func:`dann_loss`;
* :mod:`~supercm.uda.mcc` — minimum class confusion, :func:`mcc_loss`;
* :mod:`~supercm.uda.bnm` — batch nuclear-norm maximisation, :func:`bnm_loss`.
"""

from .bnm import BNM_NORMALISATIONS, bnm_loss
from .dann import DomainDiscriminator, dann_loss
from .grl import GradientReversal, GradReverse, dann_lambda, grad_reverse
from .mcc import mcc_loss

__all__ = [
    "BNM_NORMALISATIONS",
    "DomainDiscriminator",
    "GradReverse",
    "GradientReversal",
    "bnm_loss",
    "dann_lambda",
    "dann_loss",
    "grad_reverse",
    "mcc_loss",
]
