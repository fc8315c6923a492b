"""What a step costs, from the work it did: per-tier prices of each kind of forward pass and of each token.

  costs = fit([high_only, low_only, routed], ["bf16", "int2"])   # prices measured on this machine
  costs = load_table("h100_costs.json")                         # or prices measured elsewhere
  ms = step_ms(costs, episodes)            # mean model ms per step those prices give a routed run

  python -m mpr.eval.cost WORKDIR/route_eval h100_costs.json   # a finished evaluation, re-priced

Every step records, per variant, its forward passes by kind (prefill only, as the embedding's; scoring
the commands, with the catch-up prefill in the same pass or not; a decode loop) and the tokens it
prefilled (catch-up on the context: the whole new turn, or everything since it last ran after a
switch), scored (score mode: the admissible commands) and decoded (generate mode) —
records.Step.tokens. A variant costs in a step

  Σ_kinds price_kind · n_kind      over PRICES (records.PASS_KINDS + records.WORK_KINDS), in ms

and a step costs the sum over its variants plus its router time. So a routed step is charged what it
really runs: the low tier's embedding on every step, catch-up prefill when an episode switches tiers,
and probes that score with both tiers. Prices are fitted jointly by non-negative least squares on the
steps of several runs (route_eval: all its points; single-tier runs alone never show a prefill-only
pass), leaving out each run's compile outliers; or read from a JSON table of the same shape, e.g.
latencies measured on an accelerator, where CPU wall clock says nothing about the speed-up a
deployment would see. A pass's time is shared by the episodes in it, so prices fitted with several
episodes in flight (env.num_slots > 1) hold for passes as full as the fitted runs'.

  {"tiers": {"bf16": {"prefill_calls": 3.0, "score_calls": 4.1, "decode_calls": 0.5, "prefill": 0.02,
                      "score": 0.02, "decode": 6.3}, "int4": {...}},
   "router_ms": 0.1, "source": "H100, benchmarks/..."}

`router_ms` is optional (default: the router time each run measured). benchmarks/tier_prices.py
measures such a table on the device it runs on.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import nnls

from mpr import io
from mpr.errors import UserError, one_line_errors
from mpr.eval import summary
from mpr.records import PASS_KINDS, WORK_KINDS, Episode

PRICES = PASS_KINDS + WORK_KINDS

Costs = dict   # {"tiers": {tier: {price: ms}}, "router_ms": Optional[float], "source": str}


def _features(step, tier: str) -> np.ndarray:
  w = step.tokens.get(tier, {})
  return np.array([w.get(k, 0) for k in PRICES], np.float64)


def fit(runs: Sequence[Sequence[Episode]], tiers: Sequence[str]) -> Costs:
  """Prices of `tiers`, fitted jointly to every step of `runs` (each a list of episodes).

  A run's compile steps (summary.steady) are not the tiers' cost. A kind of work no step did (decode in
  score mode) gets price 0."""
  x, y = [], []
  for episodes in runs:
    steps = [s for e in episodes for s in e.steps]
    others = sorted({t for s in steps for t in s.tokens} - set(tiers))
    if others:
      raise UserError(f"cost model: steps ran tier(s) {others}, not among {list(tiers)}")
    ms = np.array([1e3 * (s.model_seconds - s.router_seconds) for s in steps])
    keep = summary.steady(ms)
    x += [np.concatenate([_features(s, t) for t in tiers]) for s, k in zip(steps, keep) if k]
    y += list(ms[keep])
  used = np.stack(x).any(axis=0) if x else np.zeros(0, bool)
  if len(y) < max(1, 2 * used.sum()):
    raise UserError(f"cost model: {len(y)} steps cannot price {int(used.sum())} kinds of work")
  price = np.zeros(len(tiers) * len(PRICES))
  price[used] = nnls(np.stack(x)[:, used], np.asarray(y))[0]
  return {"tiers": {t: dict(zip(PRICES, map(float, price[i * len(PRICES):(i + 1) * len(PRICES)])))
                    for i, t in enumerate(tiers)},
          "router_ms": None, "source": "fitted to the steps of every point of this run"}


def _is_ms(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def load_table(path: str) -> Costs:
  """A price table (the module docstring's format), checked: one bad entry is one clear error."""
  table = io.read_json_object(path, label=f"cost table {path}")
  tiers = table.get("tiers")
  if not isinstance(tiers, dict) or not tiers:
    raise UserError(f"cost table {path}: needs a 'tiers' object mapping each tier to its prices {list(PRICES)}")
  for tier, prices in tiers.items():
    if not (isinstance(prices, dict) and set(prices) == set(PRICES) and all(map(_is_ms, prices.values()))):
      raise UserError(f"cost table {path}: tier {tier!r} needs exactly the prices {list(PRICES)} in ms "
                      f"(numbers >= 0), got {prices!r}")
  router = table.get("router_ms")
  if router is not None and not _is_ms(router):
    raise UserError(f"cost table {path}: router_ms must be a number of ms >= 0, got {router!r}")
  return {"tiers": tiers, "router_ms": router, "source": str(table.get("source", path))}


def step_ms(costs: Costs, episodes: Sequence[Episode]) -> Optional[float]:
  """Mean model ms per step of `episodes` at these prices; None without steps."""
  steps = [s for e in episodes for s in e.steps]
  if not steps:
    return None
  missing = sorted({t for s in steps for t in s.tokens} - set(costs["tiers"]))
  if missing:
    raise UserError(f"cost model: no prices for tier(s) {missing}; it has {sorted(costs['tiers'])}")
  prices = {t: np.array([p[k] for k in PRICES]) for t, p in costs["tiers"].items()}
  total = 0.0
  for s in steps:
    total += sum(float(prices[t] @ _features(s, t)) for t in s.tokens)
    total += 1e3 * s.router_seconds if costs["router_ms"] is None else costs["router_ms"]
  return total / len(steps)


def estimate(costs: Costs, points: Sequence[dict], played: Sequence[Sequence[Episode]]) -> None:
  """Adds the estimate to each evaluated point (route_eval's dicts; the first is high only, the base):
  model ms per step and s per episode at these prices, and the speed-up over the base per episode."""
  for p, episodes in zip(points, played):
    ms = p["model_ms_per_step_est"] = step_ms(costs, episodes)
    p["model_s_per_episode_est"] = None if ms is None else 1e-3 * ms * p["mean_steps"]
  base = points[0]["model_s_per_episode_est"]
  for p in points:
    s = p["model_s_per_episode_est"]
    p["speedup_est"] = None if s is None or base is None else base / max(s, 1e-12)


@one_line_errors("cost")
def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description="Re-prices a finished route_eval with a price table "
                                           "(e.g. an accelerator's, from benchmarks/tier_prices.py).")
  ap.add_argument("stage_dir", help="WORKDIR/route_eval of a finished run")
  ap.add_argument("prices", help="a price table (JSON)")
  args = ap.parse_args(argv)
  from mpr.eval.report import read_results
  from mpr.stages.route_eval import point_log   # the stage names its episode logs
  costs = load_table(args.prices)
  points = read_results(args.stage_dir)["points"]
  played = []
  for p in points:
    # A point's episodes: those of its games in its logs (paths relative to results.json; a random point
    # matched split by split has one per split, a table of one split reads the logs of all).
    logs = [os.path.join(args.stage_dir, f) for f in p["logs"]] if "logs" in p else \
           [point_log(args.stage_dir, p["method"], p["param"])]
    missing = [f for f in logs if not os.path.isfile(f)]
    if missing:
      raise UserError(f"{missing[0]} does not exist: the point's episode log is needed to re-price it")
    episodes = [Episode.from_json(r) for f in logs for r in io.read_jsonl(f)]
    games = p.get("outcomes")       # None in results written before per-game outcomes
    played.append([e for e in episodes if games is None or e.game in games])
  estimate(costs, points, played)
  print(f"prices: {costs['source']}\n")
  print("| method | operating point | high calls % | model ms/step measured | estimated | speed-up estimated |")
  print("|---|---|---:|---:|---:|---:|")
  for p in points:
    est = "— | —" if p["speedup_est"] is None else f"{p['model_ms_per_step_est']:.2f} | {p['speedup_est']:.2f}×"
    print(f"| {p['method']} | {p['param'] or '—'} | {100 * p['high_ratio']:.1f} | {p['model_ms_per_step']:.1f} | "
          f"{est} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
