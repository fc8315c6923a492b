"""Routing rules: the learned router, the baselines, and the data-collection route, as agent Routes.

Each returns an `mpr.agent.agent.Route` over two variant names, `high` and `low`:

  router      high when the router's p(high) ≥ K (or sampled from p(high): GRPO's rollouts)
  random      high with probability p at every step (matched to another method's high ratio)
  first_k     high for the first k steps, low afterwards
  entropy     high when the low tier's action entropy ≥ threshold (the low tier scores first)
  margin      high when the low tier's top-2 probability margin ≤ threshold
  oracle      high when the true d_t = KL(p_high ‖ p_low) ≥ τ (both tiers score every step)
  collect     acts with `act` (high, low, or random at p) while both tiers score every step and
              the low tier embeds it: the training data of the router

Sampled choices draw from an RNG keyed by (seed, game, episode seed, step, salt), so an episode's
routing never depends on which other episodes share a batch or on a resume.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import ml_collections
import numpy as np

from mpr.agent.agent import Probe, Route
from mpr.envs.rollout import EpisodeView
from mpr.errors import UserError
from mpr.router import data, features, grpo, labels, model


def _by_rule(high: str, low: str, wants_high: Sequence[bool]) -> list[str]:
  return [high if h else low for h in wants_high]


def random_route(high: str, low: str, p: float, seed: int) -> Route:
  if not 0.0 <= p <= 1.0:
    raise UserError(f"random routing needs 0 <= p <= 1, got {p}")
  return Route(lambda views, probe: (_by_rule(high, low, [v.rng(seed).random() < p for v in views]),
                                     [p] * len(views)))


def first_k(high: str, low: str, k: int) -> Route:
  return Route(lambda views, probe: (_by_rule(high, low, [v.t < k for v in views]), None))


def entropy_route(high: str, low: str, threshold: float) -> Route:
  def choose(views, probe: Probe):
    return _by_rule(high, low, [labels.entropy(lg) >= threshold for lg in probe.logits[low]]), None
  return Route(choose, probe=(low,))


def margin_route(high: str, low: str, threshold: float) -> Route:
  def choose(views, probe: Probe):
    return _by_rule(high, low, [labels.margin(lg) <= threshold for lg in probe.logits[low]]), None
  return Route(choose, probe=(low,))


def oracle_route(high: str, low: str, tau: float, direction: str = "high_low") -> Route:
  def choose(views, probe: Probe):
    d = [labels.divergence(h, l, direction) for h, l in zip(probe.logits[high], probe.logits[low])]
    return _by_rule(high, low, [x >= tau for x in d]), None
  return Route(choose, probe=(high, low))


def collect_route(high: str, low: str, act: str, seed: int, p: float = 0.5, mode: str = "score") -> Route:
  """The low tier embeds every step and `act` ∈ {high, low, random} acts. Score mode: both tiers
  score the admissible commands. Generate mode: the acting tier's generated tokens are fed through
  both (token-level labels, Route.teacher)."""
  if act not in ("high", "low", "random"):
    raise UserError(f"collect.act must be high, low or random, got {act!r}")
  def choose(views, probe: Probe):
    if act == "random":
      return _by_rule(high, low, [v.rng(seed).random() < p for v in views]), None
    return [high if act == "high" else low] * len(views), None
  if mode == "generate":
    return Route(choose, embed=low, teacher=(high, low))
  return Route(choose, embed=low, probe=(high, low))


def router_p_high(params: dict, cfg: ml_collections.ConfigDict, zs: Sequence[np.ndarray]) -> np.ndarray:
  """p(high) for each episode's history of router inputs [t+1, F], batched in power-of-two buckets.

  Each history's last `max_len` steps are right-aligned in the window, as `data.windows` lays out
  training rows; padding rows see one zero step (never an empty row)."""
  b = 1 << max(0, len(zs) - 1).bit_length()     # a few compiled shapes, not one per batch size
  zw = np.zeros((b, cfg.max_len, zs[0].shape[-1]), np.float32)
  mask = np.zeros((b, cfg.max_len), bool)
  mask[:, -1] = True
  for i, z in enumerate(zs):
    n = min(len(z), cfg.max_len)
    zw[i, -n:] = z[-n:]
    mask[i, -n:] = True
  p = np.asarray(model.p_high(params, cfg, zw, mask))[:len(zs)].astype(np.float64)
  if not np.isfinite(p).all():   # p >= K would read NaN as "low" on every step
    raise UserError("the router's p(high) is NaN: its parameters or the step embeddings are not finite")
  return p


def table_p_high(params: dict, cfg: ml_collections.ConfigDict, table: data.StepTable,
                 batch_size: int = 512) -> np.ndarray:
  """p(high) at every step of a collected table, each from its own history window."""
  table = features.featurize(cfg.inputs, table)
  rows = np.arange(table.num_steps)
  return np.concatenate([np.asarray(model.p_high(params, cfg, zw, mask))[:n]
                         for n, _, zw, mask in data.fixed_batches(table, rows, cfg.max_len, batch_size)])


def router_route(params: dict, cfg: ml_collections.ConfigDict, high: str, low: str, *, k: float = 0.5,
                 sample_seed: Optional[int] = None, temperature: float = 1.0,
                 salt: Callable[[EpisodeView], int] = lambda v: 0) -> Route:
  """The learned router: high when p(high) ≥ k, or, with `sample_seed`, high drawn from p(high)
  at `temperature` (GRPO rollouts; `salt` tells a group's episodes of the same game apart). Inputs
  beyond z make the low tier score every step before the route decides."""
  inputs = features.check(cfg.inputs)
  def choose(views, probe: Probe):
    lows = probe.logits.get(low, [None] * len(views))
    p = router_p_high(params, cfg, [features.live_inputs(inputs, z, v.steps, lg, low)
                                    for v, z, lg in zip(views, probe.z, lows)])
    if sample_seed is None:
      return _by_rule(high, low, p >= k), p
    q = grpo.tempered_p_high(p, temperature)
    return _by_rule(high, low, [v.rng(sample_seed, salt(v)).random() < qi for v, qi in zip(views, q)]), p
  return Route(choose, embed=low, probe=(low,) if features.needs_low_scores(inputs) else ())
