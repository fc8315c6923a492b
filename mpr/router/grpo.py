"""The GRPO objective for the 2-way router policy (index 1 = high precision, 0 = low).

Axes: G episodes in one game's group, N routing decisions in a batch (padded; `weights` marks
the real ones).

  rewards    = [episode_reward(won, high, steps, lam) for each of the G episodes]
  advantages = group_advantages(rewards)            # [G], shared by every decision of episode i
  q = tempered_p_high(p_high, temperature)   # while playing: draw high with probability q
  value, metrics = loss(logits_new, actions, logp_old, adv, logits_ref, weights, clip, beta)

Only the router is trained: the LLM tiers never see a gradient. `logits_ref` are the frozen
KL-ST router's logits for the same inputs; the KL penalty keeps GRPO near it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mpr.errors import UserError
from mpr.router.model import HIGH   # index of the high tier in every [..., 2] array (0 = low)


def grpo_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.group_size = 8              # G episodes per game; the group mean is the baseline
  # λ: reward lost by routing every step high (cost = high share). Several = a sweep (× loss_means ×
  # advantages): each
  # setting trained at the first seed, the one winning most validation games at `select_shares` kept
  # (stages/router_grpo.py).
  c.lams = (0.1,)
  c.select_shares = (0.2, 0.3)
  c.eps = 1e-6                  # added to the group std so near-constant groups stay finite
  c.clip = 0.2                  # PPO ratio clip ε: r is held within [1-ε, 1+ε] per decision
  c.beta = 0.1                  # weight of KL(π ‖ π_KL-ST): keeps the policy near its init
  c.lr = 1e-4                   # Adam learning rate of the router
  c.iterations = 20             # sample-then-optimise rounds
  c.games_per_iter = 8          # games per round, each played G times
  c.num_games = 400             # the rounds draw from an evenly spaced subset of this many train games
  c.epochs_per_iter = 2         # optimisation passes over one round's decisions
  c.batch_size = 512            # decisions per gradient step (padded to a fixed shape)
  c.clip_norm = 1.0             # global gradient-norm clip
  c.sample_temperature = 1.0    # >1 explores more while playing; logp_old follows it
  # How the loss averages decisions: "decision" (every decision weighs the same, so a 50-step episode
  # weighs 5x a 10-step one) or "episode" (each episode's decisions share one unit of weight: the
  # sequence-level mean, which does not let long failures drown short successes). Several = part of the
  # sweep, kept on validation with λ.
  c.loss_means = ("decision",)
  # How a group's advantages are scaled: "std" (divided by the group's reward std, the paper's GRPO) or
  # "center" (only centred; see group_advantages). Several = part of the sweep. Default "center": in the
  # full dmr_tiny run's sweep (BENCHMARKS.md, "GRPO's settings") "std" drove the router to 0–5% high calls
  # within 20 iterations, most groups carrying no success signal, and "center" won as many or more
  # valid_train games at every λ and loss mean.
  c.advantages = ("center",)
  c.seeds = (0,)                # one run per seed (routing samples, game draws, batch order; KL-ST init of that seed)
  c.update(overrides)
  return c


# --- rewards and advantages (numpy: computed once per group, outside the jitted step) ------------

LOSS_MEANS = ("decision", "episode")


def decision_weights(lengths, loss_mean: str) -> np.ndarray:
  """Per-decision loss weights for episodes of `lengths` decisions under `loss_mean` (see grpo_config)."""
  if loss_mean not in LOSS_MEANS:
    raise UserError(f"router_grpo.loss_means must be among {list(LOSS_MEANS)}, got {loss_mean!r}")
  lengths = np.asarray(lengths, np.int64)
  per = np.ones(len(lengths)) if loss_mean == "decision" else 1.0 / np.maximum(lengths, 1)
  return np.repeat(per, lengths).astype(np.float32)


def episode_reward(won: bool, high_steps: int, steps: int, lam: float) -> float:
  """R = won − λ · high_steps / steps; an episode with no steps costs nothing."""
  if steps < 0 or not 0 <= high_steps <= max(steps, 0):
    raise UserError(f"episode_reward: need 0 <= high_steps <= steps, got {high_steps} of {steps}")
  cost = high_steps / steps if steps else 0.0
  return float(won) - lam * cost


ADVANTAGES = ("std", "center")


def group_advantages(rewards, eps: float = 1e-6, scale: str = "std") -> np.ndarray:
  """Over one group [G]: A_i = (R_i − mean R) / (std R + eps) with population std (`scale` "std", the
  paper's GRPO), or A_i = R_i − mean R ("center"). Without the division a group whose episodes all end
  alike keeps its λ·cost differences at their size, where "std" blows them up to ±1, as large as a
  success; a group with both outcomes is led by them either way.

  A group whose rewards are all equal carries no preference, so it gets exact zeros: computing
  it would turn float rounding of the mean (e.g. of eight 0.1s) into ±1e-11/eps-sized noise.
  """
  if scale not in ADVANTAGES:
    raise UserError(f"router_grpo.advantages must be among {list(ADVANTAGES)}, got {scale!r}")
  r = np.asarray(rewards, np.float64)
  if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
    raise UserError(f"group_advantages: need a non-empty 1-D finite reward vector, got shape {r.shape}")
  if np.ptp(r) == 0:
    return np.zeros_like(r)
  return (r - r.mean()) / (r.std() + eps) if scale == "std" else r - r.mean()


# --- sampling ------------------------------------------------------------------------------------

def tempered_p_high(p_high, temperature: float) -> np.ndarray:
  """The distribution a rollout draws each decision from: softmax(log p / T) over (low, high).

  Rollouts record the router's p(high); the PPO ratio must divide by the probability of the draw
  actually made, so `decisions` recomputes it here. Then `loss` must see the new policy at the same
  temperature: pass `logits / T` as logits_new and logits_ref (a no-op at T = 1). p is held in
  [1e-7, 1 - 1e-7] so a certain router still gives finite log-probabilities."""
  if not temperature > 0:
    raise UserError(f"sample_temperature must be > 0, got {temperature}")
  p = np.clip(np.asarray(p_high, np.float64), 1e-7, 1 - 1e-7)
  return 1 / (1 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))


# --- the loss ------------------------------------------------------------------------------------

def _weighted_mean(x: jax.Array, w: jax.Array) -> jax.Array:
  # All-padding batches (a ragged last batch of zeros) give 0, not 0/0.
  return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), jnp.finfo(jnp.float32).tiny)


def loss(logits_new: jax.Array, actions: jax.Array, logp_old: jax.Array, advantages: jax.Array,
         logits_ref: jax.Array, weights: jax.Array, clip: float, beta: float) -> tuple[jax.Array, dict]:
  """Clipped-ratio GRPO loss plus β·KL to the reference router, as a weighted mean over N.

  1. logp = log_softmax(logits_new)                          [N, 2]
  2. r = exp(logp[a] − logp_old)                               [N]  ratio to the sampling policy
  3. surrogate = min(r·A, clip(r, 1−ε, 1+ε)·A)                [N]  pessimistic PPO bound
  4. kl_ref = Σ_k π_new(k) (log π_new(k) − log π_ref(k))      [N]  exact on the 2-way simplex
  5. value = Σ w·(−surrogate + β·kl_ref) / Σ w                []   w = 0 marks padding
  """
  n = actions.shape[0]
  if (logits_new.shape != (n, 2) or logits_ref.shape != (n, 2)
      or logp_old.shape != (n,) or advantages.shape != (n,) or weights.shape != (n,)):
    raise UserError(f"grpo loss: shapes must be logits [N,2], the rest [N]; got logits_new "
                    f"{logits_new.shape}, logits_ref {logits_ref.shape}, actions {actions.shape}, "
                    f"logp_old {logp_old.shape}, advantages {advantages.shape}, weights {weights.shape}")
  logp = jax.nn.log_softmax(logits_new, axis=-1)                                # [N, 2]
  logp_ref = jax.nn.log_softmax(logits_ref, axis=-1)                            # [N, 2]
  logp_a = jnp.take_along_axis(logp, actions[:, None].astype(jnp.int32), axis=-1)[:, 0]
  # Padding rows may hold anything; neutralising them before exp keeps an overflowing ratio
  # there from turning the weight-0 product (and its gradient) into NaN.
  real = weights > 0
  log_r = jnp.where(real, logp_a - logp_old, 0.0)
  adv = jnp.where(real, advantages, 0.0)
  r = jnp.exp(log_r)                                                            # [N]
  surrogate = jnp.minimum(r * adv, jnp.clip(r, 1 - clip, 1 + clip) * adv)
  p = jnp.exp(logp)
  kl_ref = jnp.sum(p * (logp - logp_ref), axis=-1)                              # [N]
  pg_loss = _weighted_mean(-surrogate, weights)
  kl_ref_mean = _weighted_mean(kl_ref, weights)
  metrics = {
      "pg_loss": pg_loss,
      "kl_ref": kl_ref_mean,
      "clip_fraction": _weighted_mean((jnp.abs(r - 1) > clip).astype(jnp.float32), weights),
      # (r − 1) − log r: non-negative, unbiased estimate of KL(π_old ‖ π_new) (Schulman's k3).
      "approx_kl_old": _weighted_mean((r - 1) - log_r, weights),
      "p_high": _weighted_mean(p[:, HIGH], weights),
      "entropy": _weighted_mean(-jnp.sum(p * logp, axis=-1), weights),
  }
  return pg_loss + beta * kl_ref_mean, metrics
