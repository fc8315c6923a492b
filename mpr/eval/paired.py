"""Paired comparison of two methods that played the same games.

Every routing method plays the same games with the same seeds, so the difference in success between
two methods is measured game by game: the games both win or both lose carry no information about
which is better, and the intervals are far narrower than two independent Wilson intervals suggest.

  d = compare({"g1": True, "g2": False, ...}, {"g1": True, "g2": True, ...})
  # {"n": 2, "delta": -0.5, "ci": [-1.0, 0.0], "only_a": 0, "only_b": 1, "p_mcnemar": 1.0}

`delta` is success(a) − success(b) over the games both played; `ci` a 95% paired bootstrap interval
(games resampled with replacement, a fixed seed: the same outcomes give the same interval); `p_mcnemar`
the exact two-sided McNemar test on the discordant games (a binomial test of only_a against
only_a + only_b at one half).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from mpr.errors import UserError


def mcnemar_exact(only_a: int, only_b: int) -> float:
  """Two-sided exact McNemar p-value: P(a split at least this uneven | the discordant games split evenly)."""
  n, k = only_a + only_b, min(only_a, only_b)
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)


def bootstrap_ci(diffs: np.ndarray, *, draws: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
  """Percentile interval of the mean of per-game differences, games resampled with replacement."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(diffs), size=(draws, len(diffs)))
  means = diffs[idx].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def compare(a: Mapping[str, bool], b: Mapping[str, bool], *, draws: int = 10_000, seed: int = 0) -> dict:
  """a vs b on the games both played (keyed by game id); refuses when they share none or differ in games."""
  if set(a) != set(b):
    missing = sorted(set(a) ^ set(b))
    raise UserError(f"paired comparison needs the same games on both sides; {len(missing)} differ "
                    f"(e.g. {missing[:3]})")
  if not a:
    raise UserError("paired comparison of two methods with no games")
  games = sorted(a)
  x = np.array([a[g] for g in games], np.float64)
  y = np.array([b[g] for g in games], np.float64)
  only_a, only_b = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
  lo, hi = bootstrap_ci(x - y, draws=draws, seed=seed)
  return {"n": len(games), "delta": float(np.mean(x - y)), "ci": [lo, hi], "only_a": only_a, "only_b": only_b,
          "p_mcnemar": mcnemar_exact(only_a, only_b)}
