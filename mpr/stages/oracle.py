"""Stage `oracle`: where the low tier's loss comes from, and the ceiling every router is measured against.

The KL oracle routes a step high when the true d_t = KL(p_high ‖ p_low) of that step's action
distributions is at least τ (both tiers score every step). τ is the train quantile (collect stage)
that would send a share q of the train steps high, q ∈ `oracle.shares`: the top 5 / 10 / 20 / 30% of
steps by d_t. Each split of `oracle.splits` plays high only, low only and the oracle at every τ, so
the curve success vs realised high-call share shows whether the low tier's failures concentrate on
few steps.

Which steps are critical comes from the collect stage's validation episodes (the high tier acting,
both tiers scoring): d_t and the share of the top-q steps by action (`move` split into the episode's
last, winning move and the others), by step position, and by task type.

Writes results.json, summary.md (curve and breakdown tables), and oracle_<split>.png / .svg.
Episode logs per point under points/<split>/ make the stage resumable.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from mpr import io
from mpr.agent import agent as agent_lib, models
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import report
from mpr.records import Episode
from mpr.router import data, routes
from mpr.stages import collect
from mpr.stages.common import play_logged, serving_variants, split_games
from mpr.stages.route_eval import point, point_slug

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect", "oracle")
READS = ("collect",)

POSITIONS = ((0, 1, "t=0"), (1, 2, "t=1"), (2, 5, "t=2–4"), (5, 10, "t=5–9"), (10, 20, "t=10–19"), (20, None, "t≥20"))


def oracle_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.splits = ("valid_train",)       # choose on valid_train; add the reported split once, at the end
  c.num_games = 0                   # evenly spaced games of each split (0 = all)
  c.shares = (0.05, 0.1, 0.2, 0.3)  # τ = the train quantile that sends this share of train steps high
  c.update(overrides)
  return c


def verb(episode: Episode, i: int) -> str:
  action = episode.steps[i].action
  word = action.split(" ", 1)[0] if action else "(none)"
  if word == "move":
    return "move (last, won)" if episode.won and i == len(episode.steps) - 1 else "move (other)"
  return word


def position(t: int) -> str:
  return next(name for lo, hi, name in POSITIONS if t >= lo and (hi is None or t < hi))


def breakdown(episodes: list[Episode], d: np.ndarray, shares=(0.1, 0.2)) -> dict[str, dict]:
  """d_t by action, position and task type: per group its steps, mean d_t and, per share q, the share
  of its steps among the split's top-q steps by d_t (critical steps concentrate where this is high)."""
  keys = {"action": [], "position": [], "task type": []}
  for e in episodes:
    for i, s in enumerate(e.steps):
      keys["action"].append(verb(e, i))
      keys["position"].append(position(s.t))
      keys["task type"].append(e.task_type)
  if len(keys["action"]) != len(d):
    raise UserError(f"collect episodes hold {len(keys['action'])} steps, its step table {len(d)}")
  top = {q: d >= np.quantile(d, 1 - q) for q in shares}
  out: dict[str, dict] = {}
  for kind, values in keys.items():
    values = np.asarray(values)
    groups = {}
    for g in dict.fromkeys(values):
      m = values == g
      groups[g] = {"steps": int(m.sum()), "d_mean": float(d[m].mean()),
                   **{f"top{int(100 * q)}_rate": float(top[q][m].mean()) for q in shares},
                   **{f"top{int(100 * q)}_share": float(top[q][m].sum() / max(top[q].sum(), 1)) for q in shares}}
    order = [name for _, _, name in POSITIONS] if kind == "position" else sorted(groups, key=lambda g: -groups[g]["steps"])
    out[kind] = {g: groups[g] for g in order if g in groups}
  return out


def _curve_table(split: str, points: list[dict], taus: dict) -> str:
  hi = next(p for p in points if p["method"] == "high only")["success"]
  lo = next(p for p in points if p["method"] == "low only")["success"]
  lines = [f"#### {split}: success vs high-call share", "",
           "| point | τ | high calls % | success % | 95% CI | Δ vs high pts | loss recovered % |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for p in points:
    tau = taus.get(p["param"])
    recovered = "—" if hi == lo else f"{100 * (p['success'] - lo) / (hi - lo):.0f}"
    lines.append(f"| {p['method']}{' ' + p['param'] if p['param'] else ''} | {'—' if tau is None else f'{tau:.3g}'} | "
                 f"{100 * p['high_ratio']:.1f} | {100 * p['success']:.1f} | {100 * p['ci'][0]:.1f}–{100 * p['ci'][1]:.1f} | "
                 f"{100 * (p['success'] - hi):+.1f} | {recovered} |")
  return "\n".join(lines) + "\n"


def _breakdown_tables(split: str, tables: dict[str, dict]) -> str:
  out = []
  for kind, groups in tables.items():
    out += [f"#### {split}: d_t by {kind} (high tier acting)", "",
            f"| {kind} | steps | mean d_t | in top 10% | in top 20% | share of top-20% steps |",
            "|---|---:|---:|---:|---:|---:|"]
    for g, r in groups.items():
      out.append(f"| {g} | {r['steps']} | {r['d_mean']:.4f} | {100 * r['top10_rate']:.1f}% | "
                 f"{100 * r['top20_rate']:.1f}% | {100 * r['top20_share']:.1f}% |")
    out.append("")
  return "\n".join(out)


def run(config, sdir: str) -> dict:
  env, oc, tiers, cc = config.env, config.oracle, config.tiers, config.collect
  collect.check_tiers(tiers)
  if cc.act != "high":
    raise UserError(f"the oracle's breakdown reads collect episodes the high tier played (collect.act={cc.act!r})")
  hi, lo = tiers.high, tiers.low
  if not oc.shares or any(not 0.0 < q < 1.0 for q in oc.shares):
    raise UserError(f"oracle.shares must be shares of steps in (0, 1), got {tuple(oc.shares)}")
  cdir = os.path.join(os.path.dirname(sdir), "collect")
  train = data.load(collect.table_path(cdir, cc.split))
  taus = {f"q={q:g}": float(np.quantile(train.d, 1 - q)) for q in oc.shares}
  # The validation table's d_t are the episodes' steps in order (collect.step_table).
  val_episodes = [Episode.from_json(r) for r in io.read_jsonl(os.path.join(cdir, f"episodes_{cc.val_split}.jsonl"))]
  tables = breakdown(val_episodes, data.load(collect.table_path(cdir, cc.val_split)).d)

  policy = models.load(config.model)
  variants = serving_variants(config, sdir, policy, [hi, lo])
  results: dict = {"tiers": {"high": hi, "low": lo}, "taus": taus, "breakdown": {cc.val_split: tables}, "splits": {}}
  model = "tiny policy" if policy.source == models.SHIPPED_TINY else os.path.basename(policy.source.rstrip("/"))
  text = [f"### KL oracle: {model}, {hi} / {lo}, d = KL {cc.direction}\n"]
  with open_pool(env) as pool:
    for split in oc.splits:
      games = split_games(config, split, oc.num_games)
      points: list[dict] = []

      def play(method: str, param, route) -> None:
        agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, route=route,
                                      seed=config.seed)
        eps = play_logged(pool, [(g, config.seed) for g in games], agent,
                          os.path.join(sdir, "points", split, point_slug(method, param) + ".jsonl"),
                          progress=f"{split}: {method} {param or ''}".strip())
        points.append(point(method, param, eps, hi))

      play("high only", None, agent_lib.fixed(hi))
      play("low only", None, agent_lib.fixed(lo))
      for name, tau in taus.items():
        play("oracle", name, routes.oracle_route(hi, lo, tau, cc.direction))
      caption = report.plot_caption(model, hi, lo, split, len(games), config.seed, env.engine)
      report.pareto_plot(points, os.path.join(sdir, f"oracle_{split}.png"), os.path.join(sdir, f"oracle_{split}.svg"),
                         caption=caption)
      results["splits"][split] = {"games": len(games), "points": points}
      text.append(_curve_table(split, points, taus))
  text.append(_breakdown_tables(cc.val_split, tables))
  io.atomic_write_json(os.path.join(sdir, "results.json"), results)
  io.atomic_write_text(os.path.join(sdir, "summary.md"), "\n".join(text))
  print("\n".join(text))
  return results
