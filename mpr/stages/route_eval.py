"""Stage `route_eval`: every routing method at the same pre-set operating points; the paper's tables.

Games: `eval.split`, plus with `eval.generated_split` a fixed generated test split (its own name and
seed, never trained on or used to choose anything). Tables and plots cover them together (this folder)
and each alone (<split>/).

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
                                        ratio on each split (the matched baseline, played split by
                                        split; report refuses pairs > 2 points apart)
The routers of the other training seeds play at `eval.seed_shares` (Table 3: the spread over seeds).
In generate mode (agent.mode) entropy, margin and oracle are not played: they read the tiers' scores
of the admissible commands before the step, which a generating agent does not compute.

Per point: success (overall, per task, 95% Wilson) and per-game outcomes (for the paired comparisons
in mpr.eval.report), high ratio (share of steps on the high tier), and cost: model seconds per episode
(every model call of a step: embedding, probes, router, acting; mean ms per step without compile
outliers × mean steps) → measured speed-up vs high only; and the cost model's estimate (mpr.eval.cost):
each step priced by the calls and tokens each tier ran in it (catch-up prefill on switches and the low
tier's embedding included), at per-tier prices fitted to all this run's points (`python -m
mpr.eval.cost` re-prices the logged points with another device's prices). Episode logs per
point under points/ make the stage resumable. Writes results.json, table1.md, table2.md, table3.md
(with several seeds), table4.md (KL-ST + GRPO head to head with every other method), pareto.png /
pareto.svg (mpr.eval.report) here and per split in <split>/, and prints the tables.
"""
from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from mpr import io
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import check_disjoint, generated_data_dir
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import cost, report, summary as summary_lib
from mpr.records import Episode
from mpr.router import data, routes
from mpr.router.model import load_router
from mpr.stages import collect
from mpr.stages.common import play_logged, router_dir, serving_variants, split_games

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect", "router", "router_sl", "router_grpo", "eval")
READS = ("collect", "router_sl", "router_grpo", "router_grpo_scratch")

ROUTERS = (("KL-ST", "router_sl"), ("KL-ST + GRPO", "router_grpo"), ("GRPO only", "router_grpo_scratch"))


def eval_config(split: str, num_games: int = 0, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.split = split
  c.num_games = num_games               # evenly spaced games of `split` (0 = all)
  # Played with `split` at every point, so each point has enough episodes to tell methods apart: a fixed
  # generated split of its own name and seed (mpr.envs.games.GENERATED_ONLY_SPLITS), never trained on
  # or used to choose anything. Tables cover both together and each split alone. '' = none.
  c.generated_split = ""
  c.generated_games = 360
  c.generated_seed = 100
  # Each method plays at the threshold that sends this share of the collected validation steps high:
  # the same pre-set points for every method, chosen before any evaluation.
  c.shares = (0.1, 0.2, 0.3, 0.5)
  # The routers of the other training seeds (router_sl.seeds, router_grpo.seeds) play at these shares
  # too, for the spread over seeds (Table 3).
  c.seed_shares = (0.2, 0.3)
  c.update(overrides)
  return c


def inputs(config) -> dict:
  """Where the generated evaluation games come from (the run's own seed keys only the other splits)."""
  ec = config.eval
  if not ec.generated_split:
    return {}
  return {"eval games": generated_data_dir(config.env.generated_dir or None, ec.generated_seed)}


def share_threshold(p_high: np.ndarray, share: float) -> float:
  """The router threshold K that sends a share `share` of the validation steps (p(high) at each) high."""
  return float(np.quantile(p_high, 1 - share))


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
  out = {name: {q: share_threshold(p, q) for q in shares} for name, p in p_high.items()}
  out["entropy"] = {q: float(np.quantile(val.low_entropy, 1 - q)) for q in shares}
  out["margin"] = {q: float(np.quantile(val.low_margin, q)) for q in shares}
  out["oracle"] = {q: float(np.nanquantile(val.d, 1 - q)) for q in shares}     # d is NaN where unknown
  out["first-k"] = {q: k_for(q) for q in shares}
  return out


def high_steps(val: data.StepTable, p_high: dict[str, np.ndarray], th: dict, share: float) -> dict[str, np.ndarray]:
  """Per method, which validation steps (bool [N]) its rule at the thresholds fixed for `share` sends high."""
  out = {name: p >= th[name][share] for name, p in p_high.items()}
  out["entropy"] = val.low_entropy >= th["entropy"][share]
  out["margin"] = val.low_margin <= th["margin"][share]
  with np.errstate(invalid="ignore"):      # steps with unknown d are never the oracle's
    out["oracle"] = val.d >= th["oracle"][share]
  out["first-k"] = data.step_index(val.offsets) < th["first-k"][share]
  return out


def point(method: str, param, episodes: list[Episode], high: str, share: float | None = None) -> dict:
  s, c = summary_lib.summarize(episodes), summary_lib.step_costs(episodes)
  return {"method": method, "param": param, "share": share, "success": s["overall"]["success"],
          "ci": s["overall"]["success_ci95"], "outcomes": {e.game: bool(e.won) for e in episodes},
          "n": s["overall"]["n"], "high_ratio": high_ratio(episodes, high),
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


def trained_routers(wdir: str, config) -> list[tuple[str, int, ml_collections.ConfigDict, dict]]:
  """(method, seed, cfg, params) of every trained router in the workdir, the reference seed first; a
  workdir with none is a UserError."""
  hi, lo = config.tiers.high, config.tiers.low
  out = []
  for method, stage in ROUTERS:
    if not os.path.isdir(os.path.join(wdir, stage, "router")):
      continue
    seeds = config.router_sl.seeds if stage == "router_sl" else config.router_grpo.seeds
    for seed in (seeds[:1] if stage == "router_grpo_scratch" else seeds):
      rdir = router_dir(os.path.join(wdir, stage), seed, seeds)
      cfg, params, meta = load_router(rdir)
      if (meta.get("high"), meta.get("low")) != (hi, lo):
        raise UserError(f"{rdir} routes {meta.get('high')}/{meta.get('low')}, not {hi}/{lo}")
      out.append((method, seed, cfg, params))
  if not out:
    raise UserError(f"no trained router in {wdir} (run router_sl first)")
  return out


def _subset(entries, games: set[str]) -> list[tuple[dict, list[Episode]]]:
  return [(meta, [e for e in eps if e.game in games]) for meta, eps in entries]


def _points(entries, hi: str, costs) -> list[dict]:
  """Each played point's summary on its episodes, with measured and estimated speed-up vs the first."""
  points = [{**point(m["method"], m["param"], eps, hi, m["share"]),
             **{k: m[k] for k in ("matches", "seed", "logs") if m.get(k) is not None}} for m, eps in entries]
  cost.estimate(costs, points, [eps for _, eps in entries])
  for p in points:
    p["speedup"] = points[0]["model_s_per_episode"] / max(p["model_s_per_episode"], 1e-12)
  return points


def run(config, sdir: str) -> dict:
  env, ec, tiers = config.env, config.eval, config.tiers
  collect.check_tiers(tiers)
  shares = [float(q) for q in ec.shares]
  if not shares or not all(0.0 < q < 1.0 for q in shares) or len(set(shares)) < len(shares):
    raise UserError(f"eval.shares must be distinct shares strictly between 0 and 1, got {list(ec.shares)}")
  several = len(config.router_sl.seeds) > 1 or len(config.router_grpo.seeds) > 1
  if several and not set(map(float, ec.seed_shares)) <= set(shares):
    raise UserError(f"eval.seed_shares {list(ec.seed_shares)} must be among eval.shares {shares}")
  if ec.generated_split and ec.generated_split == ec.split:
    raise UserError(f"eval.generated_split is eval.split ({ec.split!r}): the games would be played twice")
  hi, lo = tiers.high, tiers.low
  policy = models.load(config.model)
  variants = serving_variants(config, sdir, policy, [hi, lo])
  by_split = {ec.split: split_games(config, ec.split, ec.num_games)}
  if ec.generated_split:
    by_split[ec.generated_split] = split_games(config, ec.generated_split, ec.generated_games, seed=ec.generated_seed)
  games = [g for gs in by_split.values() for g in gs]
  ids = {s: {g.game_id for g in gs} for s, gs in by_split.items()}
  if len(by_split) > 1 and set.intersection(*ids.values()):
    raise UserError(f"eval.split and eval.generated_split share game ids (first: {min(set.intersection(*ids.values()))}); "
                    "give eval.generated_seed a value other than the run's seed")
  # The games the routers trained on: collect's and GRPO's draws from one split (0 = all of it).
  counts = (config.collect.games, config.router_grpo.num_games)
  check_disjoint(split_games(config, config.collect.split, 0 if 0 in counts else max(counts)), games, "route_eval")
  wdir = os.path.dirname(sdir)
  routers = trained_routers(wdir, config)
  val_table = data.load(collect.table_path(os.path.join(wdir, "collect"), config.collect.val_split))
  p_val = {(m, seed): routes.table_p_high(params, cfg, val_table) for m, seed, cfg, params in routers}
  th = thresholds(val_table, {m: p for (m, seed), p in p_val.items() if seed == _first_seed(routers, m)}, shares)
  rules = {"entropy": (routes.entropy_route, "H≥{:.3g}"), "margin": (routes.margin_route, "m≤{:.3g}"),
           "first-k": (routes.first_k, "k={}"),
           "oracle": (lambda h, l, tau: routes.oracle_route(h, l, tau, config.collect.direction), "τ={:.3g}")}
  if config.agent.mode != "score":
    rules = {"first-k": rules["first-k"]}

  entries: list[tuple[dict, list[Episode]]] = []     # each point: what it is, and its episodes
  with open_pool(env) as pool:
    def play(method: str, param, route, on: list) -> list[Episode]:
      agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, route=route,
                                    seed=config.seed)
      return play_logged(pool, [(g, config.seed) for g in on], agent, point_log(sdir, method, param),
                         progress=f"{method} {param or ''}".strip())

    def add(method: str, param, route, share=None, **meta) -> list[Episode]:
      eps = play(method, param, route, games)
      entries.append(({"method": method, "param": param, "share": share, **meta,
                       "logs": [os.path.relpath(point_log(sdir, method, param), sdir)]}, eps))
      return eps

    def matched_random(method: str, param: str, q: float, eps: list[Episode]) -> None:
      """Random routing at the router point's realised high ratio on each split (so each split's table
      has its matched baseline), played as one point."""
      ratios = {s: high_ratio([e for e in eps if e.game in ids[s]], hi) for s in by_split}
      label = "/".join(f"{r:.3f}" for r in ratios.values())
      played, logs = [], []
      for s, gs in by_split.items():
        rparam = f"p={ratios[s]:.3f} ({method} q={q:.2f})" + (f" {s}" if len(by_split) > 1 else "")
        played += play("random", rparam, routes.random_route(hi, lo, ratios[s], config.seed), gs)
        logs.append(os.path.relpath(point_log(sdir, "random", rparam), sdir))
      order = {g.game_id: i for i, g in enumerate(games)}
      entries.append(({"method": "random", "param": f"p={label} ({method} q={q:.2f})", "share": q,
                       "matches": f"{method} {param}", "logs": logs}, sorted(played, key=lambda e: order[e.game])))

    add("high only", None, agent_lib.fixed(hi))
    add("low only", None, agent_lib.fixed(lo))
    for q in shares:
      for method, seed, cfg, params in routers:
        first = seed == _first_seed(routers, method)
        if not first and q not in map(float, ec.seed_shares):
          continue
        # Every seed's router at its own threshold for the share, fixed on the same validation steps.
        k = th[method][q] if first else share_threshold(p_val[(method, seed)], q)
        param = f"q={q:.2f} K={k:.3f}" + ("" if first else f" seed={seed}")
        eps = add(method, param, routes.router_route(params, cfg, hi, lo, k=k), q, seed=seed)
        if first:
          matched_random(method, param, q, eps)
      for method, (make, fmt) in rules.items():
        add(method, f"q={q:.2f} " + fmt.format(th[method][q]), make(hi, lo, th[method][q]), q)

  costs = cost.fit([eps for _, eps in entries], [hi, lo])
  model = "tiny policy" if policy.source == models.SHIPPED_TINY else os.path.basename(policy.source.rstrip("/"))
  seeds = {m: _first_seed(routers, m) for m, *_ in routers}
  result = {"splits": list(by_split), "games": len(games), "cost_model": costs,
            "thresholds": {m: {f"{q:g}": v for q, v in t.items()} for m, t in th.items()}}
  subsets = {"+".join(by_split): games, **(by_split if len(by_split) > 1 else {})}
  text = ""
  for name, sub in subsets.items():
    points = _points(_subset(entries, ids.get(name) or {g.game_id for g in sub}), hi, costs)
    is_main = [p.get("seed") in (None, seeds.get(p["method"])) for p in points]
    main = [p for p, m in zip(points, is_main) if m]
    outdir = sdir if sub is games else os.path.join(sdir, name)
    os.makedirs(outdir, exist_ok=True)
    for p in points:     # logs relative to the results.json that lists them
      p["logs"] = [os.path.relpath(os.path.join(sdir, f), outdir) for f in p["logs"]]
    caption = report.plot_caption(model, hi, lo, name, len(sub), config.seed, env.engine)
    paths = report.write_report(main, outdir, shares=shares, caption=caption,
                                setting={"engine": env.engine, "split": name, "games": len(sub), "cost_model": costs,
                                         "caption": caption},
                                seed_points=[p for p, m in zip(points, is_main) if not m] or None)
    title = f"### {model}: {hi} / {lo} routing on {name} ({len(sub)} games, {env.engine} engine)\n\n"
    text += title + "".join(open(paths[f]).read() + "\n" for f in ("table1.md", "table2.md", "table3.md", "table4.md")
                            if f in paths)
    result[name] = {"games": len(sub), "results": os.path.relpath(paths["results.json"], sdir)}
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return result


def _first_seed(routers, method: str) -> int:
  return next(seed for m, seed, *_ in routers if m == method)


def high_ratio(episodes: list[Episode], high: str) -> float:
  """The share of the episodes' steps played on the high tier."""
  steps = [s for e in episodes for s in e.steps]
  return float(np.mean([s.precision == high for s in steps])) if steps else 0.0
