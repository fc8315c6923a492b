"""GRPO objective of the router: rewards, group advantages, the clipped loss and its gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.router import grpo


def test_config_defaults_and_overrides():
  c = grpo.grpo_config(lams=(0.5,))
  assert (c.group_size, c.lams, c.clip, c.beta, c.epochs_per_iter, c.seeds, c.advantages) == \
         (8, (0.5,), 0.2, 0.1, 2, (0,), ("center",))


def test_episode_reward_by_hand():
  assert grpo.episode_reward(True, 2, 10, 0.2) == pytest.approx(0.96)     # 1 − 0.2·0.2
  assert grpo.episode_reward(False, 10, 20, 0.2) == pytest.approx(-0.1)   # 0 − 0.2·0.5
  assert grpo.episode_reward(True, 0, 0, 0.2) == 1.0                      # no steps: no cost
  with pytest.raises(UserError):
    grpo.episode_reward(True, 11, 10, 0.2)


def test_group_advantages_by_hand():
  # Rewards 0.96, 0.9, 0, −0.1: mean 0.44, deviations .52 .46 −.44 −.54,
  # population variance (.2704 + .2116 + .1936 + .2916) / 4 = .2418.
  adv = grpo.group_advantages([0.96, 0.9, 0.0, -0.1], eps=1e-6)
  std = math.sqrt(0.2418)
  assert adv == pytest.approx([0.52 / (std + 1e-6), 0.46 / (std + 1e-6),
                               -0.44 / (std + 1e-6), -0.54 / (std + 1e-6)])
  assert np.all(grpo.group_advantages([0.1] * 8) == 0.0)     # equal group: exact zeros
  # "center" keeps a one-outcome group's cost differences at their size; "std" blows them up to ±1.
  costs = [1 - 0.1 * 0.2, 1 - 0.1 * 0.4]
  np.testing.assert_allclose(grpo.group_advantages(costs, scale="center"), [0.01, -0.01])
  np.testing.assert_allclose(grpo.group_advantages(costs), [1.0, -1.0], atol=1e-3)
  with pytest.raises(UserError, match="advantages must be among"):
    grpo.group_advantages(costs, scale="max")
  with pytest.raises(UserError):
    grpo.group_advantages([])


def _ln(x):
  return float(np.log(x))


def _hand_batch():
  """Three real rows and one padding row of garbage; probabilities chosen to be exact fractions."""
  logits_new = np.array([[0, _ln(3)], [0, 0], [_ln(3), 0], [9.0, -7.0]], np.float32)
  actions = np.array([1, 0, 1, 0], np.int32)
  logp_old = np.array([_ln(0.6), _ln(0.5), _ln(0.5), -200.0], np.float32)   # padding: r = exp(200) = inf
  adv = np.array([1.0, -0.5, -1.0, 1e30], np.float32)
  logits_ref = np.zeros((4, 2), np.float32)
  weights = np.array([1, 1, 1, 0], np.float32)
  return logits_new, actions, logp_old, adv, logits_ref, weights


def test_loss_equals_hand_computation():
  clip, beta = 0.2, 0.1
  value, m = grpo.loss(*map(jnp.asarray, _hand_batch()), clip=clip, beta=beta)
  # Row ratios: .75/.6 = 1.25 (A=+1, clipped to 1.2), .5/.5 = 1 (A=−.5), .25/.5 = .5 (A=−1:
  # min(−.5, .8·−1) = −.8). Surrogate mean (1.2 − .5 − .8)/3, loss is its negative.
  pg = -(1.2 - 0.5 - 0.8) / 3
  kl_row = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)   # rows 1 and 3; row 2 is 0
  kl = 2 * kl_row / 3
  assert float(value) == pytest.approx(pg + beta * kl, abs=1e-6)
  assert float(m["pg_loss"]) == pytest.approx(pg, abs=1e-6)
  assert float(m["kl_ref"]) == pytest.approx(kl, abs=1e-6)
  assert float(m["clip_fraction"]) == pytest.approx(2 / 3)
  k3 = (0.25 - np.log(1.25)) + (-0.5 - np.log(0.5))       # (r − 1) − log r, rows 1 and 3
  assert float(m["approx_kl_old"]) == pytest.approx(k3 / 3, abs=1e-6)
  assert float(m["p_high"]) == pytest.approx((0.75 + 0.5 + 0.25) / 3, abs=1e-6)
  h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  assert float(m["entropy"]) == pytest.approx((2 * h + np.log(2)) / 3, abs=1e-6)


def test_padding_rows_do_not_change_the_loss_or_the_gradient():
  full = grpo.loss(*map(jnp.asarray, _hand_batch()), clip=0.2, beta=0.1)
  real = grpo.loss(*(jnp.asarray(x[:3]) for x in _hand_batch()), clip=0.2, beta=0.1)
  assert float(full[0]) == pytest.approx(float(real[0]), abs=1e-7)
  for k in real[1]:
    assert float(full[1][k]) == pytest.approx(float(real[1][k]), abs=1e-7)
  args = list(map(jnp.asarray, _hand_batch()))
  g = jax.grad(lambda lg: grpo.loss(lg, *args[1:], clip=0.2, beta=0.1)[0])(args[0])
  assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[3] == 0.0)


def test_kl_term_is_zero_when_new_equals_ref():
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
  args = (logits, jnp.array([0, 1, 1, 0, 1, 0]), jnp.full((6,), -0.7), jnp.linspace(-1, 1, 6),
          logits, jnp.ones((6,)))
  with_kl, m = grpo.loss(*args, clip=0.2, beta=5.0)
  without, _ = grpo.loss(*args, clip=0.2, beta=0.0)
  assert abs(float(m["kl_ref"])) < 1e-7
  assert float(with_kl) == pytest.approx(float(without), abs=1e-6)


def _grad(logits, logp_old, adv):
  f = lambda lg: grpo.loss(lg, jnp.array([1]), jnp.array([logp_old]), jnp.array([adv]),
                           jnp.zeros((1, 2)), jnp.ones((1,)), clip=0.2, beta=0.0)[0]
  return jax.grad(f)(jnp.asarray(logits, jnp.float32))


def test_clipping_stops_the_gradient_for_large_ratios():
  # p(high) = .5 now, .1 when sampled: r = 5 ≫ 1.2 with A > 0, so the objective is flat.
  assert np.all(np.asarray(_grad([[0.0, 0.0]], _ln(0.1), 1.0)) == 0.0)
  # Inside the clip range the same row does pull.
  assert np.abs(np.asarray(_grad([[0.0, 0.0]], _ln(0.5), 1.0))).sum() > 0


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_one_sgd_step_moves_logp_of_the_taken_action_with_the_advantage(adv):
  logits = jnp.zeros((1, 2))
  stepped = logits - 0.1 * _grad(logits, _ln(0.5), adv)
  before = jax.nn.log_softmax(logits)[0, 1]
  after = jax.nn.log_softmax(stepped)[0, 1]
  assert float(after - before) * adv > 0


def test_tempered_p_high_is_softmax_of_log_p_over_t():
  # T = 2: p_T(high) = √.2 / (√.2 + √.8) = 1/3; T = 1 leaves p alone.
  assert np.allclose(grpo.tempered_p_high([0.2, 0.5], 2.0), [1 / 3, 0.5])
  assert np.allclose(grpo.tempered_p_high([0.2, 0.9], 1.0), [0.2, 0.9])
  certain = grpo.tempered_p_high([0.0, 1.0], 1.0)
  assert np.all(np.isfinite(np.log(certain))) and np.all(np.isfinite(np.log1p(-certain)))
  assert certain[0] < 1e-6 and certain[1] > 1 - 1e-6
  with pytest.raises(UserError):
    grpo.tempered_p_high([0.2], 0.0)


def test_decision_weights_per_decision_or_per_episode():
  np.testing.assert_array_equal(grpo.decision_weights([2, 3], "decision"), np.ones(5, np.float32))
  w = grpo.decision_weights([2, 4], "episode")
  np.testing.assert_allclose(w, [0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
  assert w[:2].sum() == w[2:].sum() == 1.0          # each episode weighs one unit, however long
  with pytest.raises(UserError, match="loss_mean"):
    grpo.decision_weights([2], "token")


def test_iteration_decisions_carry_weights_and_the_success_signal():
  from mpr.agent.agent import encode_z
  from mpr.records import Episode, Step
  from mpr.stages.router_grpo import decisions

  def ep(won, n, high):
    steps = [Step(t=t, observation="", admissible=[], action="look", precision="hi" if t < high else "lo",
                  p_high=0.5, z=encode_z(np.full(4, t, np.float32))) for t in range(n)]
    return Episode("g", "pick_and_place_simple", 0, "", steps, won=won)

  groups = [[ep(True, 2, 1), ep(False, 6, 0)], [ep(True, 3, 0), ep(True, 3, 3)]]
  dec = decisions(groups, "hi", "lo", ("z",), lam=0.1, eps=1e-6, temperature=1.0, loss_mean="episode",
                  advantage="std")
  assert dec["success_signal"] == 0.5                # the second group's episodes both won
  np.testing.assert_allclose(dec["weights"], [1 / 2] * 2 + [1 / 6] * 6 + [1 / 3] * 6)
  # Within the all-won group only the λ cost differs, so the advantages still split it ±1.
  assert dec["adv"][8] == pytest.approx(1.0, abs=1e-4) and dec["adv"][11] == pytest.approx(-1.0, abs=1e-4)
  assert decisions(groups, "hi", "lo", ("z",), 0.1, 1e-6, 1.0)["weights"].tolist() == [1.0] * 14
  # Centred (the default), the all-won group keeps its cost difference at its size: 0.1 · (0 − 1) / 2.
  assert decisions(groups, "hi", "lo", ("z",), 0.1, 1e-6, 1.0)["adv"][8] == pytest.approx(0.05)
