"""KL-ST labels (which steps need the high tier) and the ranking metrics that score a router.

  tau = threshold(d_train, quantile=0.8)     # or threshold(d, tau=0.3) to fix it by hand
  y = labels(d, tau)                         # 1 = sensitive: route high when d >= tau
  w0, w1 = class_weights(y)                  # balanced: n / (2 n_c)
  auroc(p_high, y), average_precision(p_high, y)

Pure numpy. d is the per-step KL between the tiers; NaN marks steps whose KL is unknown, which
`threshold` ignores and `labels` refuses (callers drop those steps first).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mpr.errors import UserError


def _finite(d) -> np.ndarray:
  x = np.asarray(d, np.float64).ravel()
  x = x[np.isfinite(x)]
  if x.size == 0:
    raise UserError("no finite KL values to threshold (empty or all-NaN d)")
  return x


def threshold(d, tau: Optional[float] = None, quantile: Optional[float] = None) -> float:
  """τ: given directly, or the `quantile` of the finite d. Either way both classes must occur."""
  if (tau is None) == (quantile is None):
    raise UserError(f"give exactly one of tau and quantile (got tau={tau}, quantile={quantile})")
  x = _finite(d)
  lo, hi = float(x.min()), float(x.max())
  if tau is not None:
    t = float(tau)
    if not lo <= t <= hi:
      raise UserError(f"tau={t:g} is outside the KL data range [{lo:g}, {hi:g}]")
    how = f"tau={t:g}"
  else:
    if not 0.0 < quantile < 1.0:
      raise UserError(f"quantile must be in (0, 1), got {quantile}")
    t = float(np.quantile(x, quantile))
    how = f"quantile {quantile:g} (tau={t:g})"
  pos = int((x >= t).sum())
  if pos in (0, x.size):
    raise UserError(f"{how} puts all {x.size} steps in one class (KL data range [{lo:g}, {hi:g}])")
  return t


def labels(d, tau: float) -> np.ndarray:
  """int64 [N]: 1 where d >= tau (the step is sensitive to precision), else 0."""
  x = np.asarray(d, np.float64)
  if not np.all(np.isfinite(x)):
    raise UserError(f"labels: {int((~np.isfinite(x)).sum())} steps have an unknown (non-finite) KL")
  return (x >= tau).astype(np.int64)


def class_weights(y) -> tuple[float, float]:
  """(w0, w1) = n / (2 n_c): both classes weigh the same in total."""
  y = np.asarray(y)
  n1 = int((y == 1).sum())
  n0 = int((y == 0).sum())
  if n0 == 0 or n1 == 0:
    raise UserError(f"class weights need both classes, got {n0} low and {n1} high labels")
  n = n0 + n1
  return n / (2 * n0), n / (2 * n1)


def _both_classes(scores, y, what: str) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).ravel()
  y = np.asarray(y).ravel()
  if s.shape != y.shape:
    raise UserError(f"{what}: {s.size} scores but {y.size} labels")
  if not ((y == 1).any() and (y == 0).any()):
    raise UserError(f"{what} needs both classes among the labels")
  return s, y == 1


def ranks(x) -> np.ndarray:
  """1-based ranks of x, tied values sharing their mean rank."""
  _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
  last = np.cumsum(counts)                       # the rank of the last member of each tie group
  return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(scores, y) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half.

  Mann-Whitney form: with average ranks r over all scores, (Σ r_pos − n1 (n1 + 1) / 2) / (n1 n0).
  """
  s, pos = _both_classes(scores, y, "AUROC")
  r = ranks(s)
  n1 = int(pos.sum())
  n0 = s.size - n1
  return float((r[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def average_precision(scores, y) -> float:
  """Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds, highest first (sklearn's AP)."""
  s, pos = _both_classes(scores, y, "average precision")
  order = np.argsort(-s, kind="stable")
  s, pos = s[order], pos[order]
  tp = np.cumsum(pos)
  fp = np.cumsum(~pos)
  cut = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]    # last index of each tie group
  precision = tp[cut] / (tp[cut] + fp[cut])
  recall = tp[cut] / tp[-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# --- per-step signals from the tiers' action distributions -----------------------------------------

DIRECTIONS = ("high_low", "low_high", "symmetric")


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.exp(x - m).sum())


def divergence(logits_high, logits_low, direction: str = "high_low") -> float:
  """d_t between the tiers' action distributions (over the same admissible commands).

  high_low = KL(p_high ‖ p_low), the paper's natural choice: large where the low tier puts little
  mass on what the high tier would do. low_high swaps the roles; symmetric is their mean.
  """
  if direction not in DIRECTIONS:
    raise UserError(f"unknown KL direction {direction!r}; known: {list(DIRECTIONS)}")
  lh, ll = _log_softmax(logits_high), _log_softmax(logits_low)
  fwd = float(np.sum(np.exp(lh) * (lh - ll)))
  rev = float(np.sum(np.exp(ll) * (ll - lh)))
  return max({"high_low": fwd, "low_high": rev, "symmetric": 0.5 * (fwd + rev)}[direction], 0.0)


def entropy(logits) -> float:
  lp = _log_softmax(logits)
  return float(-np.sum(np.exp(lp) * lp))


def margin(logits) -> float:
  """Top-1 minus top-2 probability (1 when there is a single command)."""
  p = np.sort(np.exp(_log_softmax(logits)))[::-1]
  return float(p[0] - (p[1] if p.size > 1 else 0.0))
