"""Paired comparison: McNemar's exact test and the paired bootstrap, against hand-computed values."""
import math

import numpy as np
import pytest

from mpr.errors import UserError
from mpr.eval import paired


def test_mcnemar_exact_matches_the_binomial_tail():
  assert paired.mcnemar_exact(0, 0) == 1.0
  assert paired.mcnemar_exact(3, 3) == 1.0
  # 10 discordant games all one way: 2 · 0.5^10.
  assert paired.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
  # 8 vs 2: 2 · (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 · 56 / 1024.
  assert paired.mcnemar_exact(8, 2) == pytest.approx(112 / 1024)
  assert paired.mcnemar_exact(2, 8) == paired.mcnemar_exact(8, 2)


def test_compare_counts_discordant_games_and_is_deterministic():
  a = {f"g{i}": i % 4 != 0 for i in range(40)}          # wins 30
  b = {f"g{i}": i % 2 == 0 for i in range(40)}          # wins 20
  d = paired.compare(a, b)
  assert d["n"] == 40 and d["delta"] == pytest.approx(10 / 40)
  # a-only: odd i (20 games, a wins all of them); b-only: i % 4 == 0 (10 games).
  assert (d["only_a"], d["only_b"]) == (20, 10)
  assert d["p_mcnemar"] == pytest.approx(2 * sum(math.comb(30, i) for i in range(11)) / 2 ** 30)
  # The bootstrap interval is close to the normal one: mean ± 1.96 · sd / √n, sd² = 30/40 − 0.25².
  se = math.sqrt((30 / 40 - 0.25 ** 2) / 40)
  assert d["ci"] == pytest.approx([0.25 - 1.96 * se, 0.25 + 1.96 * se], abs=0.03)
  assert paired.compare(a, b) == d                      # fixed seed: same outcomes, same interval


def test_pairing_narrows_the_interval_when_methods_agree():
  """Two methods that differ on 6 of 300 games: the paired interval is far inside the unpaired spread."""
  a = {f"g{i}": i % 3 != 0 for i in range(300)}
  b = dict(a)
  for i in range(1, 19, 3):                             # 6 games a wins and b loses
    b[f"g{i}"] = False
  d = paired.compare(a, b)
  assert d["delta"] == pytest.approx(6 / 300) and (d["only_a"], d["only_b"]) == (6, 0)
  assert 0.0 <= d["ci"][0] and d["ci"][1] < 0.05
  # The bootstrap interval of identical methods is a point at 0.
  assert paired.compare(a, a)["ci"] == [0.0, 0.0]


def test_bootstrap_ci_covers_the_mean():
  diffs = np.array([1.0] * 30 + [0.0] * 60 + [-1.0] * 10)
  lo, hi = paired.bootstrap_ci(diffs)
  assert lo < 0.2 < hi and lo > 0.0


def test_games_must_match():
  with pytest.raises(UserError, match="same games"):
    paired.compare({"g1": True}, {"g2": True})
  with pytest.raises(UserError, match="no games"):
    paired.compare({}, {})
