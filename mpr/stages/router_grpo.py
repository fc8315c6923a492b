"""Stages `router_grpo` and `router_grpo_scratch`: the router refined (or trained from scratch) by GRPO.

Each iteration picks `games_per_iter` of `num_games` train games (a pure function of seed and iteration) and plays
each `group_size` times through the ordinary agent loop, routing every step by sampling from the
current router (at `sample_temperature`). Reward per episode R = won − λ · (high steps / steps); the
advantage (R − mean R) / (std R + ε) over the game's group is shared by all of that episode's
routing decisions; the router takes `epochs_per_iter` passes of clipped-ratio updates over them
with a β-weighted KL to the KL-ST router (grpo.loss). Only the router learns.

A group's episodes share the game; an episode's `seed` is its member index inside the group, which
keys its routing samples (ALFWorld's games are deterministic, so the seed changes nothing else).

Resumable and exact: the iteration's episodes are logged as they finish (rollouts/iter_NNN.jsonl,
keyed by game and member), router and optimizer state are checkpointed after every iteration, and
the sampled routes depend only on (router params, seed, iteration, game, member, step) — a killed run
replays nothing it logged and ends with the router an uninterrupted run gives.

`router_grpo` starts from the KL-ST router of this workdir's `router_sl/`; `router_grpo_scratch`
starts from a random router with no reference (β ignored): the GRPO-only ablation.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpr import hosts, io
from mpr.agent import agent as agent_lib, models
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.records import Episode
from mpr.router import data, features, grpo
from mpr.router.model import HIGH, Router, from_config, init_params, load_router, save_router
from mpr.router.routes import router_route
from mpr.stages import collect
from mpr.stages.common import play_logged, split_games
from mpr.stages.router_sl import router_meta
from mpr.train import checkpoints
from mpr.train.metrics import MetricWriter

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect", "router", "router_sl", "router_grpo")
READS = ("collect", "router_sl")     # this workdir's stages it builds on (mpr.stages.runner)


# --- decisions of one iteration ---------------------------------------------------------------------

def decisions(groups: list[list[Episode]], high: str, low: str, inputs: Sequence[str], lam: float, eps: float,
              temperature: float, loss_mean: str = "decision") -> dict:
  """Flattened routing decisions of an iteration's groups: the router's inputs at each (features.INPUTS),
  offsets, actions, logp_old, advantages, loss weights (grpo.decision_weights), and the share of groups
  whose episodes did not all end alike.

  logp_old is the log-probability of each decision under the distribution it was sampled from (the
  router's p(high) recorded in the step, tempered), as the PPO ratio needs.
  """
  x, actions, logp_old, adv, offsets, rewards = [], [], [], [], [0], []
  for group in groups:
    r = np.array([grpo.episode_reward(e.won, sum(s.precision == high for s in e.steps), len(e.steps), lam)
                  for e in group])
    rewards.append(r)
    for e, a in zip(group, grpo.group_advantages(r, eps)):
      q = grpo.tempered_p_high([s.p_high for s in e.steps], temperature)
      high_step = np.array([s.precision == high for s in e.steps])
      x.append(features.episode_inputs(inputs, e, low))
      actions.extend(np.where(high_step, HIGH, 1 - HIGH))
      logp_old.extend(np.log(np.where(high_step, q, 1 - q)))
      adv.extend([a] * len(e.steps))
      offsets.append(offsets[-1] + len(e.steps))
  offsets = np.asarray(offsets, np.int64)
  return {"inputs": np.concatenate(x).astype(np.float32), "offsets": offsets,
          "actions": np.asarray(actions, np.int32), "logp_old": np.asarray(logp_old, np.float32),
          "adv": np.asarray(adv, np.float32), "rewards": np.concatenate(rewards),
          "weights": grpo.decision_weights(np.diff(offsets), loss_mean),
          "success_signal": float(np.mean([len({e.won for e in g}) > 1 for g in groups]))}


@functools.partial(jax.jit, static_argnums=(0,))
def _logits(model: Router, params, z, mask):
  return model.apply({"params": params}, z, mask)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(5, 6))
def _update(model: Router, opt, clip: float, beta: float, temperature: float, params, opt_state,
            z, mask, actions, logp_old, adv, logits_ref, weights):
  def loss_fn(p):
    logits = model.apply({"params": p}, z, mask) / temperature
    return grpo.loss(logits, actions, logp_old, adv, logits_ref / temperature, weights, clip, beta)
  (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {**metrics, "loss": value}


def _batches(n: int, size: int, rng: np.random.Generator):
  perm = rng.permutation(n)
  for lo in range(0, n, size):
    idx = perm[lo:lo + size]
    yield np.pad(idx, (0, size - idx.size)), np.arange(size) < idx.size


def optimise(model: Router, params, opt_state, opt, dec: dict, ref_params, gc, rng: np.random.Generator):
  """`gc.epochs_per_iter` passes of GRPO updates over one iteration's decisions; → params, state, metrics."""
  n, size = len(dec["actions"]), gc.batch_size
  rows = np.arange(n)
  zw_all, mask_all = data.windows(dec["inputs"], dec["offsets"], rows, model.max_len)
  beta = float(gc.beta) if ref_params is not None else 0.0
  logits_ref = np.zeros((n, 2), np.float32)
  if ref_params is not None:
    for lo in range(0, n, size):
      sl = slice(lo, lo + size)
      zb, mb = zw_all[sl], mask_all[sl]
      pad = size - len(zb)
      zb, mb = np.pad(zb, ((0, pad), (0, 0), (0, 0))), np.pad(mb, ((0, pad), (0, 0)), constant_values=True)
      logits_ref[sl] = np.asarray(_logits(model, ref_params, zb, mb))[:size - pad]
  out = []
  for _ in range(gc.epochs_per_iter):
    for idx, valid in _batches(n, size, rng):
      params, opt_state, m = _update(model, opt, float(gc.clip), beta, float(gc.sample_temperature), params,
                                     opt_state, zw_all[idx], mask_all[idx], dec["actions"][idx],
                                     dec["logp_old"][idx], dec["adv"][idx], logits_ref[idx],
                                     valid * dec["weights"][idx])
      out.append({k: float(v) for k, v in m.items()})
  return params, opt_state, {k: float(np.mean([m[k] for m in out])) for k in out[0]}


# --- the stage -----------------------------------------------------------------------------------

def _play(pool, agent_factory, games, gc, path: str) -> list[list[Episode]]:
  """Each game played by `group_size` members (episode seed = member), through the log at `path`."""
  eps = play_logged(pool, [(g, m) for g in games for m in range(gc.group_size)], agent_factory(), path,
                    progress=os.path.basename(path).split(".")[0])
  return [eps[i:i + gc.group_size] for i in range(0, len(eps), gc.group_size)]


def run(config, sdir: str, scratch: bool = False) -> dict:
  gc, tiers = config.router_grpo, config.tiers
  collect.check_tiers(tiers)
  if gc.group_size < 2:
    raise UserError(f"router_grpo.group_size must be >= 2 (a group's mean is the baseline), got {gc.group_size}")
  grpo.decision_weights([1], gc.loss_mean)     # an unknown loss_mean fails before any episode is played
  model = from_config(config.router)
  policy = models.load(config.model)
  variants = policy.variants([tiers.high, tiers.low])
  ref_params = None
  if scratch:
    params = init_params(config.router, features.width(config.router.inputs, policy.cfg.hidden_size), gc.seed)
  else:
    ref_dir = os.path.join(os.path.dirname(sdir), "router_sl", "router")
    cfg, ref_params, meta = load_router(ref_dir)
    if (meta.get("low"), meta.get("high")) != (tiers.low, tiers.high):
      raise UserError(f"{ref_dir} was trained for tiers {meta.get('high')}/{meta.get('low')}, "
                      f"not {tiers.high}/{tiers.low}")
    if cfg.to_dict() != config.router.to_dict():
      raise UserError(f"{ref_dir} has another router architecture than config.router")
    params = jax.tree.map(jnp.array, ref_params)     # a copy: the update donates its params
  if gc.num_games < gc.games_per_iter:
    raise UserError(f"router_grpo.num_games={gc.num_games} must be >= games_per_iter={gc.games_per_iter}")
  games = split_games(config, config.collect.split, gc.num_games)
  opt = optax.chain(optax.clip_by_global_norm(gc.clip_norm), optax.adam(gc.lr))
  state = {"params": params, "opt_state": opt.init(params)}
  mgr, start, state = checkpoints.restore_latest(os.path.join(sdir, "ckpt"), state)   # by finished iterations
  if start:
    logging.info("router_grpo: resumed after iteration %d of %d", start, gc.iterations)
  params, opt_state = state["params"], state["opt_state"]
  iter_path = os.path.join(sdir, "iterations.jsonl")
  history = {r["iteration"]: r for r in (io.read_jsonl(iter_path) if os.path.exists(iter_path) else [])}
  try:
    with open_pool(config.env) as pool, \
         MetricWriter(os.path.join(sdir, "tb")) as writer, \
         (io.JsonlLog(iter_path) if hosts.is_primary() else contextlib.nullcontext()) as log:  # one writer
      for it in range(start, gc.iterations):
        pick = np.random.default_rng([gc.seed, it]).choice(len(games), min(gc.games_per_iter, len(games)), replace=False)
        chosen = [games[i] for i in np.sort(pick)]
        sample_seed = zlib.crc32(f"{gc.seed}/{it}".encode())
        route = router_route(params, config.router, tiers.high, tiers.low, sample_seed=sample_seed,
                             temperature=gc.sample_temperature)
        factory = lambda: agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots,
                                                route=route, seed=config.seed, record_z=True)
        groups = _play(pool, factory, chosen, gc, os.path.join(sdir, "rollouts", f"iter_{it:03d}.jsonl"))
        dec = decisions(groups, tiers.high, tiers.low, config.router.inputs, gc.lam, gc.eps, gc.sample_temperature,
                        gc.loss_mean)
        params, opt_state, m = optimise(model, params, opt_state, opt, dec, ref_params, gc,
                                        np.random.default_rng([gc.seed, it, 1]))
        eps = [e for g in groups for e in g]
        row = {"iteration": it + 1, "reward": float(dec["rewards"].mean()),
               "success": float(np.mean([e.won for e in eps])),
               "high_ratio": float(np.mean(dec["actions"] == HIGH)), "decisions": int(len(dec["actions"])),
               "success_signal": dec["success_signal"], **m}
        writer.scalars(it + 1, {f"grpo/{k}": v for k, v in row.items() if k != "iteration"})
        if it + 1 not in history and log is not None:
          log.append(row)
        history[it + 1] = row
        saved = checkpoints.save(mgr, it + 1, {"params": params, "opt_state": opt_state})
        params, opt_state = saved["params"], saved["opt_state"]   # host 0's: every host routes the next rollouts alike
  finally:
    mgr.wait_until_finished()
    mgr.close()
  meta = {**router_meta(config), "grpo": {"iterations": gc.iterations, "init": "scratch" if scratch else "router_sl"}}
  if hosts.is_primary():   # a folder is written by one host (every host holds the same params)
    save_router(os.path.join(sdir, "router"), config.router, params, meta)
  rows = [history[i] for i in sorted(history)]
  ref = "KL to uniform (no reference)" if scratch else "KL to KL-ST"
  lines = [f"| iteration | reward | success % | high % | p(high) | groups with a success signal % | clip frac | {ref} |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['iteration']} | {r['reward']:.3f} | {100 * r['success']:.1f} | {100 * r['high_ratio']:.1f} | "
            f"{r['p_high']:.3f} | {100 * r['success_signal']:.0f} | {r['clip_fraction']:.3f} | {r['kl_ref']:.4f} |"
            for r in rows]
  text = f"### {'router_grpo_scratch' if scratch else 'router_grpo'}\n\n" + "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return {"iterations": rows}


# The GRPO-only ablation: the same stage from a random router (registered in launch.py).
SCRATCH = types.SimpleNamespace(CONFIG_KEYS=CONFIG_KEYS, READS=("collect",), run=functools.partial(run, scratch=True))
