"""Stages `router_grpo` and `router_grpo_scratch`: the router refined (or trained from scratch) by GRPO.

Each iteration picks `games_per_iter` of `num_games` train games (a pure function of seed and iteration) and plays
each `group_size` times through the ordinary agent loop, routing every step by sampling from the
current router (at `sample_temperature`). Reward per episode R = won − λ · (high steps / steps); the
advantage (R − mean R) / (std R + ε) over the game's group (or R − mean R, `advantages`) is shared by all of that episode's
routing decisions; the router takes `epochs_per_iter` passes of clipped-ratio updates over them
with a β-weighted KL to the KL-ST router (grpo.loss). Only the router learns.

A group's episodes share the game; an episode's `seed` is its member index inside the group, which
keys its routing samples (ALFWorld's games are deterministic, so the seed changes nothing else).

Resumable and exact: the iteration's episodes are logged as they finish (rollouts/iter_NNN.jsonl,
keyed by game and member), router and optimizer state are checkpointed after every iteration, and
the sampled routes depend only on (router params, seed, iteration, game, member, step) — a killed run
replays nothing it logged and ends with the router an uninterrupted run gives.

Runs: each setting (λ, loss mean, advantage scaling) and seed trains in
runs/lam=<λ>_<loss mean>_<advantages>_seed=<seed>/ (rollouts, iterations.jsonl, checkpoints, TensorBoard).
A sweep (several `lams` × `loss_means` × `advantages`) trains each setting at
the first seed and keeps the one whose router wins most `collect.val_split` games at the pre-set shares
`select_shares` (those plays are logged under select/); the other `seeds` then train at that setting. The kept routers go to router/ (first seed) and
seed_<s>/router/; summary.md holds the selection and every run's iterations, curves.png / .svg their
learning curves (reward, success, high share, KL).

`router_grpo` starts each seed from the KL-ST router of the same seed in this workdir's `router_sl/`;
`router_grpo_scratch` starts from a random router with no reference (β ignored), once (the first
seed) at the setting router_grpo kept: the GRPO-only ablation.
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
from mpr.eval import report
from mpr.records import Episode
from mpr.router import data, features, grpo
from mpr.router.model import HIGH, Router, from_config, init_params, load_router, save_router
from mpr.router.routes import router_route, table_p_high
from mpr.stages import collect
from mpr.stages.common import check_seeds, play_logged, router_dir, serving_variants, split_games
from mpr.stages.route_eval import high_ratio, share_threshold
from mpr.stages.router_sl import router_meta
from mpr.train import loop

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect", "router", "router_sl", "router_grpo")
READS = ("collect", "router_sl")     # this workdir's stages it builds on (mpr.stages.runner)


# --- decisions of one iteration ---------------------------------------------------------------------

def decisions(groups: list[list[Episode]], high: str, low: str, inputs: Sequence[str], lam: float, eps: float,
              temperature: float, loss_mean: str = "decision", advantage: str = "center") -> dict:
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
    for e, a in zip(group, grpo.group_advantages(r, eps, advantage)):
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


def decision_batches(model: Router, dec: dict, ref_params, gc, rng: np.random.Generator):
  """`gc.epochs_per_iter` shuffled passes over one iteration's decisions, in batches of `gc.batch_size`
  (padded, weight 0): each (windows, mask, actions, logp_old, adv, reference logits, weights)."""
  n, size = len(dec["actions"]), gc.batch_size
  zw_all, mask_all = data.windows(dec["inputs"], dec["offsets"], np.arange(n), model.max_len)
  logits_ref = np.zeros((n, 2), np.float32)
  if ref_params is not None:
    for lo in range(0, n, size):
      sl = slice(lo, lo + size)
      zb, mb = zw_all[sl], mask_all[sl]
      pad = size - len(zb)
      zb, mb = np.pad(zb, ((0, pad), (0, 0), (0, 0))), np.pad(mb, ((0, pad), (0, 0)), constant_values=True)
      logits_ref[sl] = np.asarray(_logits(model, ref_params, zb, mb))[:size - pad]
  for _ in range(gc.epochs_per_iter):
    perm = rng.permutation(n)
    for lo in range(0, n, size):
      idx = perm[lo:lo + size]
      valid = np.arange(size) < idx.size
      idx = np.pad(idx, (0, size - idx.size))
      yield (zw_all[idx], mask_all[idx], dec["actions"][idx], dec["logp_old"][idx], dec["adv"][idx],
             logits_ref[idx], valid * dec["weights"][idx])


# --- the stage -----------------------------------------------------------------------------------

def _play(pool, agent_factory, games, gc, path: str) -> list[list[Episode]]:
  """Each game played by `group_size` members (episode seed = member), through the log at `path`."""
  eps = play_logged(pool, [(g, m) for g in games for m in range(gc.group_size)], agent_factory(), path,
                    progress=os.path.basename(path).split(".")[0])
  return [eps[i:i + gc.group_size] for i in range(0, len(eps), gc.group_size)]


Setting = tuple[float, str, str]       # (λ, loss mean, advantage scaling)


def setting_name(setting: Setting) -> str:
  lam, loss_mean, advantage = setting
  return f"lam={lam:g}_{loss_mean}_{advantage}"


def run_name(setting: Setting, seed: int) -> str:
  return f"{setting_name(setting)}_seed={seed}"


def _train(pool, config, policy, variants, games, setting: Setting, seed: int, rdir: str,
           ref_params) -> tuple[dict, list[dict]]:
  """One GRPO run at `setting` and `seed` in `rdir`, from `ref_params` (the KL-ST router, also the KL
  reference) or, when None, from a random router; resumes by finished iterations. → (params, rows)."""
  lam, loss_mean, advantage = setting
  gc, tiers, model = config.router_grpo, config.tiers, from_config(config.router)
  if ref_params is None:
    params = init_params(config.router, features.width(config.router.inputs, policy.cfg.hidden_size), seed)
  else:
    params = jax.tree.map(jnp.array, ref_params)     # a copy: the update donates its params
  opt = optax.chain(optax.clip_by_global_norm(gc.clip_norm), optax.adam(gc.lr))
  beta = float(gc.beta) if ref_params is not None else 0.0
  iter_path = os.path.join(rdir, "iterations.jsonl")
  history = {r["iteration"]: r for r in (io.read_jsonl(iter_path) if os.path.exists(iter_path) else [])}
  played = {}       # the iteration's decisions and episodes, for its summary row

  def batches(it, state):
    """Plays the iteration's groups with the router it starts from, then yields its decisions' batches."""
    pick = np.random.default_rng([seed, it]).choice(len(games), min(gc.games_per_iter, len(games)), replace=False)
    route = router_route(state["params"], config.router, tiers.high, tiers.low,
                         sample_seed=zlib.crc32(f"{seed}/{it}".encode()), temperature=gc.sample_temperature)
    factory = lambda: agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots,
                                            route=route, seed=config.seed, record_z=True)
    groups = _play(pool, factory, [games[i] for i in np.sort(pick)], gc,
                   os.path.join(rdir, "rollouts", f"iter_{it:03d}.jsonl"))
    played["dec"] = decisions(groups, tiers.high, tiers.low, config.router.inputs, lam, gc.eps,
                              gc.sample_temperature, loss_mean, advantage)
    played["episodes"] = [e for g in groups for e in g]
    yield from decision_batches(model, played["dec"], ref_params, gc, np.random.default_rng([seed, it, 1]))

  def step(state, batch, _):
    params, opt_state, m = _update(model, opt, float(gc.clip), beta, float(gc.sample_temperature),
                                   state["params"], state["opt_state"], *batch)
    return {"params": params, "opt_state": opt_state}, m

  def end_iteration(it, state, metrics):
    dec = played["dec"]
    row = {"iteration": it + 1, "reward": float(dec["rewards"].mean()),
           "success": float(np.mean([e.won for e in played["episodes"]])),
           "high_ratio": float(np.mean(dec["actions"] == HIGH)), "decisions": int(len(dec["actions"])),
           "success_signal": dec["success_signal"], **{k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}}
    if it + 1 not in history and log is not None:
      log.append(row)
    history[it + 1] = row
    return state, {f"grpo/{k}": v for k, v in row.items() if k != "iteration"}, False

  with (io.JsonlLog(iter_path) if hosts.is_primary() else contextlib.nullcontext()) as log:   # one writer
    state, _ = loop.train(rdir, {"params": params, "opt_state": opt.init(params)}, gc.iterations, batches, step,
                          end_iteration, label=f"grpo {os.path.basename(rdir)}", x="round")
  return state["params"], [history[i] for i in sorted(history)]


def _select(pool, config, policy, variants, trained: dict[Setting, dict], sdir: str):
  """The setting (λ, loss mean, advantage scaling) whose router wins most validation games at the pre-set shares
  `router_grpo.select_shares` (each threshold sends that share of the collected validation steps high,
  as in route_eval); ties go to the earlier setting. → (setting, one row per setting)."""
  cc, gc, tiers = config.collect, config.router_grpo, config.tiers
  val_table = data.load(collect.table_path(os.path.join(os.path.dirname(sdir), "collect"), cc.val_split))
  games = split_games(config, cc.val_split, cc.val_games)
  rows = []
  for setting, params in trained.items():
    p_val = table_p_high(params, config.router, val_table)
    name = setting_name(setting)
    row = {"lam": setting[0], "loss_mean": setting[1], "advantage": setting[2], "success": {}, "high_ratio": {}}
    for q in map(float, gc.select_shares):
      route = router_route(params, config.router, tiers.high, tiers.low, k=share_threshold(p_val, q))
      agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, seed=config.seed,
                                    route=route)
      eps = play_logged(pool, [(g, config.seed) for g in games], agent,
                        os.path.join(sdir, "select", f"{name}_q={q:.2f}.jsonl"), progress=f"select {name} q={q:.2f}")
      row["success"][f"{q:g}"] = float(np.mean([e.won for e in eps]))
      row["high_ratio"][f"{q:g}"] = high_ratio(eps, tiers.high)
    row["score"] = float(np.mean(list(row["success"].values())))
    rows.append(row)
  best = max(rows, key=lambda r: r["score"])    # max keeps the first of equals
  return (best["lam"], best["loss_mean"], best["advantage"]), rows


def settings(gc) -> list[Setting]:
  """The settings of a sweep: every λ of `lams` with every mean of `loss_means` and every scaling of
  `advantages`."""
  tup = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,)
  lams, means, scalings = tup(gc.lams), tup(gc.loss_means), tup(gc.advantages)
  if not lams or len(set(lams)) < len(lams) or not all(isinstance(x, (int, float)) and x >= 0 for x in lams):
    raise UserError(f"router_grpo.lams must be distinct non-negative numbers, got {lams!r}")
  if not means or len(set(means)) < len(means):
    raise UserError(f"router_grpo.loss_means must be distinct, got {means!r}")
  if not scalings or len(set(scalings)) < len(scalings):
    raise UserError(f"router_grpo.advantages must be distinct, got {scalings!r}")
  for m in means:
    grpo.decision_weights([1], m)          # unknown names fail before any episode is played
  for a in scalings:
    grpo.group_advantages([0.0], scale=a)
  out = [(float(lam), m, a) for lam in lams for m in means for a in scalings]
  names = [setting_name(st) for st in out]
  if len(set(names)) < len(names):
    raise UserError(f"router_grpo.lams {lams!r} name the same run folder (λ is written to 6 significant digits)")
  if len(out) > 1 and not all(0 < float(q) < 1 for q in gc.select_shares):
    raise UserError(f"router_grpo.select_shares must be shares strictly between 0 and 1, got {list(gc.select_shares)}")
  return out


def chosen_setting(config, wdir: str) -> Setting:
  """The setting the router_grpo stage of `wdir` kept (the only one when the sweep has one)."""
  sweep = settings(config.router_grpo)
  if len(sweep) == 1:
    return sweep[0]
  path = os.path.join(wdir, "router_grpo", "metrics.json")
  if not os.path.exists(path):
    raise UserError(f"router_grpo_scratch trains at the setting router_grpo kept from its sweep: run router_grpo "
                    f"first ({path} does not exist)")
  m = io.read_json(path)
  return float(m["lam"]), m["loss_mean"], m["advantage"]


def run(config, sdir: str, scratch: bool = False) -> dict:
  gc, tiers = config.router_grpo, config.tiers
  collect.check_tiers(tiers)
  if gc.group_size < 2:
    raise UserError(f"router_grpo.group_size must be >= 2 (a group's mean is the baseline), got {gc.group_size}")
  seeds, sweep = check_seeds(gc.seeds, "router_grpo.seeds"), settings(gc)
  if gc.num_games < gc.games_per_iter:
    raise UserError(f"router_grpo.num_games={gc.num_games} must be >= games_per_iter={gc.games_per_iter}")
  wdir = os.path.dirname(sdir)
  policy = models.load(config.model)
  variants = serving_variants(config, sdir, policy, [tiers.high, tiers.low])

  def reference(seed: int):
    """The KL-ST router of `seed` (GRPO's init and KL reference), or None for the scratch ablation."""
    if scratch:
      return None
    ref_dir = router_dir(os.path.join(wdir, "router_sl"), seed, tuple(config.router_sl.seeds))
    cfg, params, meta = load_router(ref_dir)
    if (meta.get("low"), meta.get("high")) != (tiers.low, tiers.high):
      raise UserError(f"{ref_dir} was trained for tiers {meta.get('high')}/{meta.get('low')}, "
                      f"not {tiers.high}/{tiers.low}")
    if cfg.to_dict() != config.router.to_dict():
      raise UserError(f"{ref_dir} has another router architecture than config.router")
    return params

  missing = [s for s in seeds if s not in tuple(config.router_sl.seeds)]
  if not scratch and missing:      # before any run: each seed starts from the KL-ST router of that seed
    raise UserError(f"router_grpo.seeds {missing} have no KL-ST router to start from (router_sl.seeds = "
                    f"{list(config.router_sl.seeds)})")
  # The ablation is trained once (the reference seed) at the setting router_grpo kept.
  if scratch:
    sweep = [chosen_setting(config, wdir)]
  games = split_games(config, config.collect.split, gc.num_games)
  runs: dict[tuple[Setting, int], tuple[dict, list[dict]]] = {}
  selection = None
  with open_pool(config.env) as pool:
    def train(setting, seed):
      runs[(setting, seed)] = _train(pool, config, policy, variants, games, setting, seed,
                                     os.path.join(sdir, "runs", run_name(setting, seed)), reference(seed))
    for setting in sweep:
      train(setting, seeds[0])
    kept_setting = sweep[0]
    if len(sweep) > 1:
      kept_setting, selection = _select(pool, config, policy, variants,
                                        {st: runs[(st, seeds[0])][0] for st in sweep}, sdir)
      logging.info("router_grpo: %s kept on %s", run_name(kept_setting, seeds[0]), config.collect.val_split)
    for seed in ([] if scratch else seeds[1:]):
      train(kept_setting, seed)
  lam, loss_mean, advantage = kept_setting
  meta = {**router_meta(config), "grpo": {"iterations": gc.iterations, "lam": lam, "loss_mean": loss_mean,
                                          "advantage": advantage, "init": "scratch" if scratch else "router_sl"}}
  kept = [seeds[0]] if scratch else list(seeds)
  if hosts.is_primary():   # a folder is written by one host (every host holds the same params)
    for seed in kept:
      save_router(router_dir(sdir, seed, seeds), config.router, runs[(kept_setting, seed)][0], {**meta, "seed": seed})
  curves = {run_name(*key): rows for key, (_, rows) in runs.items()}
  if hosts.is_primary():
    report.learning_curves(curves, os.path.join(sdir, "curves.png"), os.path.join(sdir, "curves.svg"),
                           title=f"{'GRPO from scratch' if scratch else 'GRPO from KL-ST'}: {tiers.high} / {tiers.low}")
  text = _summary(curves, selection, kept_setting, scratch, config.collect.val_split)
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return {"lam": lam, "loss_mean": loss_mean, "advantage": advantage, "seeds": kept, "runs": curves,
          **({"selection": selection} if selection else {}), "iterations": runs[(kept_setting, seeds[0])][1]}


def _summary(curves: dict[str, list[dict]], selection, kept: Setting, scratch: bool, val_split: str) -> str:
  ref = "KL to uniform (no reference)" if scratch else "KL to KL-ST"
  text = f"### {'router_grpo_scratch' if scratch else 'router_grpo'}\n\n"
  if selection:
    shares = list(selection[0]["success"])
    text += (f"Kept on {val_split}: **λ = {kept[0]:g}, {kept[1]} mean, {kept[2]} advantages** (most games won at the "
             "pre-set shares, mean over shares)\n\n| λ | loss mean | advantages | "
             + " | ".join(f"success % at {100 * float(q):.0f}% [realised high %]" for q in shares)
             + " | mean % |\n|---:|---|---|" + "---:|" * (len(shares) + 1) + "\n")
    text += "".join(f"| {r['lam']:g} | {r['loss_mean']} | {r['advantage']} | " + " | ".join(
        f"{100 * r['success'][q]:.1f} [{100 * r['high_ratio'][q]:.1f}]" for q in shares) + f" | {100 * r['score']:.1f} |\n"
        for r in selection) + "\n"
  for name, rows in curves.items():
    text += (f"#### {name}\n\n| iteration | reward | success % | high % | p(high) | groups with a success signal % | "
             f"clip frac | {ref} |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    text += "".join(f"| {r['iteration']} | {r['reward']:.3f} | {100 * r['success']:.1f} | {100 * r['high_ratio']:.1f} | "
                    f"{r['p_high']:.3f} | {100 * r['success_signal']:.0f} | {r['clip_fraction']:.3f} | {r['kl_ref']:.4f} |\n"
                    for r in rows) + "\n"
  return text


# The GRPO-only ablation: the same stage from a random router (registered in launch.py).
SCRATCH = types.SimpleNamespace(CONFIG_KEYS=CONFIG_KEYS, READS=("collect", "router_grpo"),
                                run=functools.partial(run, scratch=True))
