"""Label-free model-selection scores for domain adaptation: each reads no target label.

Every function returns a *score*: higher is better, so a selection rule keeps the iterate with the
largest one (:class:`~supercm.evaluation.Selection`). ``p_i = softmax(logits_i)`` over K classes,
``H(p) = −Σ_k p_k log p_k`` (natural log). Computed in float64.

* :func:`entropy_score` — ``−(1/n) Σ_i H(p_i)`` on target rows: confident predictions score high.
* :func:`im_score` — information maximisation, ``H((1/n) Σ_i p_i) − (1/n) Σ_i H(p_i)``: confident
  *and* diverse (the mutual information between input and predicted class; its maximum is log K).
* :func:`snd_score` — soft neighbourhood density (Saito et al., ICCV 2021): with
  ``z_i = p_i / ‖p_i‖`` (the softmax outputs, L2-normalised, as the authors' code does) and
  ``s_ij = z_i·z_j / τ`` (τ = 0.05), ``q_i = softmax_{j≠i}(s_ij)`` over the *other* target rows;
  the score is ``(1/n) Σ_i H(q_i)``: target points with many close neighbours score high. (The
  authors' code masks the diagonal to −1/τ instead of removing it; its weight is then below
  e^(−1/τ) = 2·10⁻⁹ of a neighbour's.)
* :func:`dev_score` — deep embedded validation (You et al., ICML 2019): ``−R_DEV``, the importance-
  weighted source-validation loss with the control variate. Density ratios
  ``w(x) = p_T(x)/p_S(x) = (n_S/n_T) · P(target|x)/P(source|x)`` come from a logistic-regression
  domain classifier on the features (:func:`density_ratios`); with the per-sample validation losses
  ``l_i``, ``R_DEV = mean(w·l) + η·mean(w) − η`` and ``η = −Cov(w·l, w)/Var(w)`` (sample
  covariance and variance; η = 0 when all weights are equal). E[w] = 1 under the source, so the
  control variate removes the part of the estimator's variance that the weights' own spread causes
  without moving its mean. The loss is the cross-entropy (the paper's ℓ is any loss; the authors'
  code passes the 0/1 error, which is flat when the source-validation accuracy is 98–99 %).
  Where some validation row's ratio exceeds ``e^DEV_MAX_LOG_RATIO`` (domains the classifier separates,
  as on a run whose alignment failed), DEV has **no score** (NaN, which a rule never picks): one such
  row dominates both ``mean(w·l)`` and ``η·mean(w)``, and in float64 their difference, which the
  estimator is, drowns in the rounding of terms ``e^30`` times larger (and ``e^710`` overflows).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: τ of SND (Saito et al. 2021).
SND_TEMPERATURE = 0.05
#: Inverse regularisation strengths C the domain classifier of DEV chooses from, by held-out log-loss.
DOMAIN_CLASSIFIER_C = (0.01, 0.1, 1.0, 10.0)
#: Largest log density ratio at which DEV is still resolved in float64: with ratios up to e^30 ≈ 10^13
#: the rounding of ``mean(w·l)`` and ``η·mean(w)`` (about 2·10⁻¹⁶ · 10^13 / n of the loss) stays far
#: below the differences between iterates; beyond it DEV has no score (module docstring).
DEV_MAX_LOG_RATIO = 30.0


def _probs(logits: Tensor) -> Tensor:
    return torch.softmax(logits.double(), dim=1)


def entropy(p: Tensor) -> Tensor:
    """Row entropies ``−Σ_k p_k log p_k`` of probability rows (0·log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(dim=1)


def entropy_score(logits: Tensor) -> float:
    """``−mean_i H(softmax(logits_i))``."""
    return -float(entropy(_probs(logits)).mean())


def im_score(logits: Tensor) -> float:
    """``H(mean_i p_i) − mean_i H(p_i)`` (information maximisation)."""
    p = _probs(logits)
    return float(entropy(p.mean(dim=0, keepdim=True))[0] - entropy(p).mean())


def snd_score(logits: Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of the rows' L2-normalised softmax outputs (module docstring)."""
    z = torch.nn.functional.normalize(_probs(logits), dim=1)
    s = z @ z.T / temperature
    s.fill_diagonal_(-math.inf)  # a point is not its own neighbour
    return float(entropy(torch.softmax(s, dim=1)).mean())


def density_ratios(source: Tensor, target: Tensor, query: Tensor, *, seed: int = 0) -> np.ndarray:
    """``p_T(x)/p_S(x)`` at the rows of ``query``: ``exp`` of :func:`log_density_ratios` (``inf`` where
    that exceeds float64)."""
    with np.errstate(over="ignore"):
        return np.exp(log_density_ratios(source, target, query, seed=seed))


def log_density_ratios(source: Tensor, target: Tensor, query: Tensor, *, seed: int = 0) -> np.ndarray:
    """``log p_T(x)/p_S(x)`` at the rows of ``query``, from a logistic-regression domain classifier trained
    on ``source`` vs ``target`` feature rows (standardised by their joint mean and std). Its C is the one
    of :data:`DOMAIN_CLASSIFIER_C` with the lowest log-loss on a held-out 20 % (seeded, stratified; the
    classifier fitted on the other 80 % is used, as in the authors' code, which picks by accuracy: flat
    across C when the domains overlap, while the ratios need calibrated probabilities); ``log w = logit
    P(target|x) + log(n_S/n_T)``, ``n_S, n_T`` the rows it was fitted on."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    xs, xt = source.double().cpu().numpy(), target.double().cpu().numpy()
    x = np.concatenate([xs, xt])
    y = np.r_[np.zeros(len(xs)), np.ones(len(xt))]
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0

    def fit(a, b, c):
        return LogisticRegression(C=c, max_iter=2000).fit((a - mean) / std, b)

    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    fitted = [fit(x_fit, y_fit, c) for c in DOMAIN_CLASSIFIER_C]
    clf = min(fitted, key=lambda f: log_loss(y_held, f.predict_proba((x_held - mean) / std), labels=[0, 1]))
    q = (query.double().cpu().numpy() - mean) / std
    return clf.decision_function(q) + math.log((y_fit == 0).sum() / (y_fit == 1).sum())


def dev_risk(weights, losses) -> float:
    """The DEV estimator ``mean(w·l) + η·mean(w) − η``, ``η = −Cov(w·l, w)/Var(w)`` (ddof 1)."""
    w, l = np.asarray(weights, np.float64).ravel(), np.asarray(losses, np.float64).ravel()
    if w.shape != l.shape or w.size < 2:
        raise ValueError(f"DEV needs one weight per loss and at least 2 of them, got {w.size} and {l.size}")
    wl = w * l
    var = np.var(w, ddof=1)
    eta = -np.cov(wl, w, ddof=1)[0, 1] / var if var > 0 else 0.0
    return float(wl.mean() + eta * w.mean() - eta)


def dev_score(source_features: Tensor, target_features: Tensor, val_features: Tensor, val_logits: Tensor,
              val_labels: Tensor, *, seed: int = 0) -> float:
    """``−R_DEV`` of the source-validation rows (cross-entropy losses, ratios from :func:`density_ratios`);
    NaN where a ratio exceeds ``e^DEV_MAX_LOG_RATIO`` (module docstring)."""
    losses = torch.nn.functional.cross_entropy(val_logits.double(), val_labels.long(), reduction="none")
    log_w = log_density_ratios(source_features, target_features, val_features, seed=seed)
    if not log_w.max() <= DEV_MAX_LOG_RATIO:
        return float("nan")
    return -dev_risk(np.exp(log_w), losses.cpu().numpy())


__all__ = ["DEV_MAX_LOG_RATIO", "DOMAIN_CLASSIFIER_C", "SND_TEMPERATURE", "density_ratios", "dev_risk", "dev_score",
           "entropy", "entropy_score", "im_score", "log_density_ratios", "snd_score"]
