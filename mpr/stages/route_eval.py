"""Stage `route_eval`: every routing method at the same pre-set operating points on one split; the paper's tables.

Operating points are fixed on validation before any evaluation: for each share q ∈ eval.shares, every
method's threshold is the one that sends a share q of the collected validation steps (collect.val_split,
as collect played them) high. Methods:
  high only, low only                   the tiers alone
  KL-ST, KL-ST + GRPO, GRPO only        the routers of router_sl / router_grpo / router_grpo_scratch in
                                        this workdir (those that exist): high when p(high) ≥ K_q
  entropy, margin                       low-tier entropy ≥ H_q / top-2 margin ≤ m_q
  first-k                               the first k_q steps high (k_q: the k whose share is nearest q)
  oracle                                high when the true d_t ≥ τ_q: what perfect labels could give
  random                                high with probability p = each router point's realised high
                                        ratio (the matched baseline; report refuses pairs > 2 points apart)

Per point: success (overall, per task, 95% Wilson) and per-game outcomes (for the paired comparisons
in mpr.eval.report), high ratio (share of steps on the high tier), and cost: model seconds per episode
(every model call of a step: embedding, probes, router, acting; mean ms per step without compile
outliers × mean steps) → measured speed-up vs high only; and the cost model's estimate (mpr.eval.cost):
each step priced by the calls and tokens each tier ran in it (catch-up prefill on switches and the low
tier's embedding included), at per-tier prices fitted to all this run's points (`python -m
mpr.eval.cost` re-prices the logged points with another device's prices). Episode logs per
point under points/ make the stage resumable. Writes results.json, table1.md, table2.md, pareto.png / pareto.svg (mpr.eval.report) and
prints Table 1.
"""
from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from mpr import io
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import check_disjoint
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import cost, report, summary as summary_lib
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
  # Each method plays at the threshold that sends this share of the collected validation steps high:
  # the same pre-set points for every method, chosen before any evaluation.
  c.shares = (0.1, 0.2, 0.3, 0.5)
  c.update(overrides)
  return c


def thresholds(val: data.StepTable, p_high: dict[str, np.ndarray], shares) -> dict[str, dict[float, float | int]]:
  """Per method, per share q: the threshold that sends a share q of the validation steps high.

  Routers (p_high per router name: p(high) at every validation step) and entropy / oracle route high
  at or above their threshold, margin at or below; first-k's k is the one whose share of validation
  steps (sum of min(k, length) over episodes / steps) is nearest q.
  """
  lengths = np.diff(val.offsets)
  def k_for(q):
    share = lambda k: np.minimum(k, lengths).sum() / lengths.sum()
    return int(min(range(1, int(lengths.max()) + 1), key=lambda k: (abs(share(k) - q), k)))
  out = {name: {q: float(np.quantile(p, 1 - q)) for q in shares} for name, p in p_high.items()}
  out["entropy"] = {q: float(np.quantile(val.low_entropy, 1 - q)) for q in shares}
  out["margin"] = {q: float(np.quantile(val.low_margin, q)) for q in shares}
  out["oracle"] = {q: float(np.quantile(val.d, 1 - q)) for q in shares}
  out["first-k"] = {q: k_for(q) for q in shares}
  return out


def point(method: str, param, episodes: list[Episode], high: str, share: float | None = None) -> dict:
  s, c = summary_lib.summarize(episodes), summary_lib.step_costs(episodes)
  steps = [st for e in episodes for st in e.steps]
  return {"method": method, "param": param, "share": share, "success": s["overall"]["success"],
          "ci": s["overall"]["success_ci95"], "outcomes": {e.game: bool(e.won) for e in episodes},
          "n": s["overall"]["n"], "high_ratio": float(np.mean([st.precision == high for st in steps])) if steps else 0.0,
          "per_task": {t: v["success"] for t, v in s["per_task"].items()},
          "mean_steps": s["overall"]["mean_steps"], "model_ms_per_step": c["model_ms"],
          "compile_steps_dropped": c["compile_steps_dropped"],
          "model_s_per_episode": 1e-3 * c["model_ms"] * s["overall"]["mean_steps"],
          "router_ms_per_step": c["router_ms"], "speedup": None, "speedup_est": None}


def point_slug(method: str, param) -> str:
  """The file name (without extension) of a point's episode log."""
  return re.sub(r"[^A-Za-z0-9.=_-]+", "_", f"{method}_{param}" if param else method)


def point_log(sdir: str, method: str, param) -> str:
  """The episode log of a point in a route_eval folder."""
  return os.path.join(sdir, "points", point_slug(method, param) + ".jsonl")


def run(config, sdir: str) -> dict:
  env, ec, tiers = config.env, config.eval, config.tiers
  collect.check_tiers(tiers)
  shares = [float(q) for q in ec.shares]
  if not shares or not all(0.0 < q < 1.0 for q in shares) or len(set(shares)) < len(shares):
    raise UserError(f"eval.shares must be distinct shares strictly between 0 and 1, got {list(ec.shares)}")
  hi, lo = tiers.high, tiers.low
  policy = models.load(config.model)
  variants = policy.variants([hi, lo])
  games = split_games(config, ec.split, ec.num_games)
  # The games the routers trained on: collect's and GRPO's draws from one split (0 = all of it).
  counts = (config.collect.games, config.router_grpo.num_games)
  check_disjoint(split_games(config, config.collect.split, 0 if 0 in counts else max(counts)), games, "route_eval")
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
  val_table = data.load(collect.table_path(os.path.join(wdir, "collect"), config.collect.val_split))
  th = thresholds(val_table, {m: routes.table_p_high(params, cfg, val_table) for m, cfg, params, _ in routers},
                  shares)
  rules = {"entropy": (routes.entropy_route, "H≥{:.3g}"), "margin": (routes.margin_route, "m≤{:.3g}"),
           "first-k": (routes.first_k, "k={}"),
           "oracle": (lambda h, l, tau: routes.oracle_route(h, l, tau, config.collect.direction), "τ={:.3g}")}

  points: list[dict] = []
  played: list[list[Episode]] = []             # each point's episodes, for the cost model
  with open_pool(env) as pool:
    def play(method: str, param, route, share=None, matches=None) -> dict:
      agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, route=route,
                                    seed=config.seed)
      eps = play_logged(pool, [(g, config.seed) for g in games], agent, point_log(sdir, method, param),
                        progress=f"{method} {param or ''}".strip())
      points.append({**point(method, param, eps, hi, share), **({"matches": matches} if matches else {})})
      played.append(eps)
      return points[-1]

    play("high only", None, agent_lib.fixed(hi))
    play("low only", None, agent_lib.fixed(lo))
    for q in shares:
      for method, cfg, params, _ in routers:
        k = th[method][q]
        p = play(method, f"q={q:.2f} K={k:.3f}", routes.router_route(params, cfg, hi, lo, k=k), q)
        play("random", f"p={p['high_ratio']:.3f} ({method} q={q:.2f})",
             routes.random_route(hi, lo, p["high_ratio"], config.seed), q, matches=f"{method} {p['param']}")
      for method, (make, fmt) in rules.items():
        play(method, f"q={q:.2f} " + fmt.format(th[method][q]), make(hi, lo, th[method][q]), q)

  costs = cost.fit(played, [hi, lo])
  cost.estimate(costs, points, played)
  for p in points:
    p["speedup"] = points[0]["model_s_per_episode"] / max(p["model_s_per_episode"], 1e-12)
  model = "tiny policy" if policy.source == models.SHIPPED_TINY else os.path.basename(policy.source.rstrip("/"))
  caption = report.plot_caption(model, hi, lo, ec.split, len(games), config.seed, env.engine)
  paths = report.write_report(points, sdir, shares=shares, caption=caption,
                              setting={"engine": env.engine, "split": ec.split, "games": len(games),
                                       "cost_model": costs})
  table1 = open(paths["table1.md"]).read()
  title = f"### {model}: {hi} / {lo} routing on {ec.split} ({len(games)} games, {env.engine} engine)\n\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), title + table1 + "\n" + open(paths["table2.md"]).read())
  print(title + table1)
  return {"split": ec.split, "games": len(games), "points": points, "cost_model": costs,
          "thresholds": {m: {f"{q:g}": v for q, v in t.items()} for m, t in th.items()}}
