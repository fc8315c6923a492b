"""Stage `route_eval`: every routing method at every operating point on one split; the paper's tables.

Methods (each point plays every game of `eval.split`, or an evenly spaced `eval.num_games`):
  high only, low only                   the tiers alone
  KL-ST, KL-ST + GRPO, GRPO only        the routers of router_sl / router_grpo / router_grpo_scratch in
                                        this workdir (those that exist), high when p(high) ≥ K: K ∈ eval.ks,
                                        and the K that sends a share q of the collected validation steps
                                        high, q ∈ eval.router_shares
  random                                high with probability p, p = each point's high ratio of
                                        `eval.main` (the matched-ratio baseline)
  entropy, margin                       low-tier entropy ≥ / top-2 margin ≤ a threshold: the thresholds are
                                        quantiles of the collected train steps chosen so that a share q of
                                        them would go high, q ∈ eval.heuristic_shares
  first-k                               the first k steps high, k ∈ eval.first_k
  oracle                                high when the true d_t ≥ τ (τ = the KL-ST τ, and the train quantiles
                                        1 − q for q ∈ eval.heuristic_shares; equal τs play once): what
                                        perfect labels could give

Per point: success (overall, per task, 95% Wilson), high ratio (share of steps on the high tier), and
cost: model seconds per episode (every model call of a step: embedding, probes, router, acting; mean
ms per step without compile outliers × mean steps) → measured speed-up vs high only; and the estimate c_high / (r·c_high + (1 − r)·c_low) from the tiers'
measured per-step latencies. Episode logs per point under points/ make the stage resumable.
Writes results.json, table1.md, table2.md, pareto.png / pareto.svg (mpr.eval.report) and prints Table 1.
"""
from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from mpr import io
from mpr.agent import agent as agent_lib, models
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import report, summary as summary_lib
from mpr.records import Episode
from mpr.router import data, routes
from mpr.router.model import load_router
from mpr.stages import collect
from mpr.stages.common import play_logged, split_games

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect", "router", "router_sl", "router_grpo", "eval")
READS = ("collect", "router_sl", "router_grpo", "router_grpo_scratch")

ROUTERS = (("KL-ST", "router_sl"), ("KL-ST + GRPO", "router_grpo"), ("GRPO only", "router_grpo_scratch"))


def eval_config(split: str, num_games: int = 0, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.split = split
  c.num_games = num_games               # evenly spaced games of `split` (0 = all)
  # Every router plays at each K of `ks` and at the K that sends a share q of the collected
  # validation steps high, q ∈ router_shares (K = 0.5 is not comparable across routers: class weights
  # and GRPO's cost shift p(high), so matched shares give the like-for-like points).
  c.ks = (0.5,)
  c.router_shares = (0.1, 0.2, 0.3)
  c.main = "KL-ST + GRPO"               # random routing plays at each of this router's high ratios
  c.heuristic_shares = (0.1, 0.2, 0.3)  # entropy / margin / oracle thresholds: this share of train steps high
  c.first_k = (2, 5, 10)
  c.budget = 0.30                       # Table 1: each method's best point with high ratio ≤ budget
  c.update(overrides)
  return c


def point(method: str, param, episodes: list[Episode], high: str) -> dict:
  s, c = summary_lib.summarize(episodes), summary_lib.step_costs(episodes)
  steps = [st for e in episodes for st in e.steps]
  return {"method": method, "param": param, "success": s["overall"]["success"], "ci": s["overall"]["success_ci95"],
          "n": s["overall"]["n"], "high_ratio": float(np.mean([st.precision == high for st in steps])) if steps else 0.0,
          "per_task": {t: v["success"] for t, v in s["per_task"].items()},
          "mean_steps": s["overall"]["mean_steps"], "model_ms_per_step": c["model_ms"],
          "compile_steps_dropped": c["compile_steps_dropped"],
          "model_s_per_episode": 1e-3 * c["model_ms"] * s["overall"]["mean_steps"],
          "router_ms_per_step": c["router_ms"], "speedup": None, "speedup_est": None}


def point_slug(method: str, param) -> str:
  """The file name (without extension) of a point's episode log."""
  return re.sub(r"[^A-Za-z0-9.=_-]+", "_", f"{method}_{param}" if param else method)


def run(config, sdir: str) -> dict:
  env, ec, tiers = config.env, config.eval, config.tiers
  collect.check_tiers(tiers)
  hi, lo = tiers.high, tiers.low
  policy = models.load(config.model)
  variants = policy.variants([hi, lo])
  games = split_games(config, ec.split, ec.num_games)
  wdir = os.path.dirname(sdir)
  routers = []
  for method, stage in ROUTERS:
    rdir = os.path.join(wdir, stage, "router")
    if os.path.isdir(rdir):
      cfg, params, meta = load_router(rdir)
      if (meta.get("high"), meta.get("low")) != (hi, lo):
        raise UserError(f"{rdir} routes {meta.get('high')}/{meta.get('low')}, not {hi}/{lo}")
      routers.append((method, cfg, params, meta))
  if not routers:
    raise UserError(f"no trained router in {wdir} (run router_sl first)")
  train_table, val_table = (data.load(collect.table_path(os.path.join(wdir, "collect"), split))
                            for split in (config.collect.split, config.collect.val_split))
  shares = [float(q) for q in ec.heuristic_shares]
  ent_t = {q: float(np.quantile(train_table.low_entropy, 1 - q)) for q in shares}
  mar_t = {q: float(np.quantile(train_table.low_margin, q)) for q in shares}
  taus = {"τ=KL-ST": float(routers[0][3]["tau"])}
  for q in shares:     # the KL-ST τ is itself a train quantile: the same τ would replay the same episodes
    tau = float(np.quantile(train_table.d, 1 - q))
    if not any(np.isclose(tau, t) for t in taus.values()):
      taus[f"τ=q{1 - q:.2f}"] = tau

  points: list[dict] = []
  with open_pool(env) as pool:
    def play(method: str, param, route) -> dict:
      agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, route=route,
                                    seed=config.seed)
      eps = play_logged(pool, [(g, config.seed) for g in games], agent,
                        os.path.join(sdir, "points", point_slug(method, param) + ".jsonl"),
                        progress=f"{method} {param or ''}".strip())
      points.append(point(method, param, eps, hi))
      return points[-1]

    play("high only", None, agent_lib.fixed(hi))
    play("low only", None, agent_lib.fixed(lo))
    for method, cfg, params, _ in routers:
      p_val = routes.table_p_high(params, cfg, val_table)
      ks = {float(k) for k in ec.ks} | {float(np.quantile(p_val, 1 - q)) for q in ec.router_shares}
      for k in sorted(ks):
        play(method, f"K={k:.3f}", routes.router_route(params, cfg, hi, lo, k=k))
    matched = [p for p in points if p["method"] == ec.main] or [p for p in points if p["method"] == routers[0][0]]
    for p in matched:
      play("random", f"p={p['high_ratio']:.3f}", routes.random_route(hi, lo, p["high_ratio"], config.seed))
    for q in shares:
      play("entropy", f"H≥{ent_t[q]:.3g}", routes.entropy_route(hi, lo, ent_t[q]))
      play("margin", f"m≤{mar_t[q]:.3g}", routes.margin_route(hi, lo, mar_t[q]))
    for k in ec.first_k:
      play("first-k", f"k={k}", routes.first_k(hi, lo, int(k)))
    for name, tau in taus.items():
      play("oracle", name, routes.oracle_route(hi, lo, tau, config.collect.direction))

  base = next(p for p in points if p["method"] == "high only")
  c_hi = base["model_ms_per_step"]
  c_lo = next(p for p in points if p["method"] == "low only")["model_ms_per_step"]
  for p in points:
    p["speedup"] = base["model_s_per_episode"] / max(p["model_s_per_episode"], 1e-12)
    p["speedup_est"] = c_hi / max(p["high_ratio"] * c_hi + (1 - p["high_ratio"]) * c_lo, 1e-12)
  model = "tiny policy" if policy.source == models.SHIPPED_TINY else os.path.basename(policy.source.rstrip("/"))
  caption = report.plot_caption(model, hi, lo, ec.split, len(games), config.seed, env.engine)
  paths = report.write_report(points, sdir, budget=float(ec.budget), caption=caption,
                              setting={"engine": env.engine, "split": ec.split, "games": len(games)})
  table1 = open(paths["table1.md"]).read()
  title = f"### {model}: {hi} / {lo} routing on {ec.split} ({len(games)} games, {env.engine} engine)\n\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), title + table1 + "\n" + open(paths["table2.md"]).read())
  print(title + table1)
  return {"split": ec.split, "games": len(games), "points": points, "thresholds": {
      "entropy": ent_t, "margin": mar_t, "oracle": taus}}
