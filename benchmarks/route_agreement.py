"""Which validation steps each routing method sends high at the pre-set shares, and how the routers agree.

  python benchmarks/route_agreement.py --workdir WORKDIR --out results/route_agreement_tiny

Reads a finished run's collect table of the validation split (where `route_eval` fixes every threshold),
its trained routers (seed 0 of each) and KL-ST's τ. At each of the run's shares it applies each method's
rule at the threshold `route_eval` uses, and reports over the validation steps it sends high:
- how many are KL-ST-sensitive (d_t ≥ τ);
- how many of the oracle's steps at that share it catches, and what share of the oracle's d mass;
- in how many episodes it sends every one of the oracle's steps high. The oracle keeps the high tier's
  action where the tiers disagree most; a method leaves that path at the first such step it misses.
Then how many of KL-ST's high steps each other router also sends high, and the rank correlation of the
routers' p(high). This says why methods that play alike do so, with no game played.
Writes results.json and table.md under --out.
"""
from __future__ import annotations

import argparse
import json
import os

import ml_collections
import numpy as np

from mpr import io, provenance
from mpr.errors import UserError
from mpr.router import data, routes
from mpr.stages import collect, route_eval


def _rank(x: np.ndarray) -> np.ndarray:
  return np.argsort(np.argsort(x, kind="stable"), kind="stable")


def agreement(val: data.StepTable, p_high: dict[str, np.ndarray], tau: float, shares) -> dict:
  """Per share, per method: the share of validation steps sent high, the sensitive (d_t ≥ τ) share of
  them, the oracle's steps and d mass they hold, the episodes (of those with any oracle step) where they
  send every one of the oracle's steps high, and how many of the first router's high steps they share."""
  th = route_eval.thresholds(val, p_high, shares)
  d = np.nan_to_num(val.d, nan=0.0)
  sensitive = d >= tau
  ref = next(iter(p_high))
  out = {"tau": tau, "steps": val.num_steps, "sensitive": float(sensitive.mean()), "reference": ref,
         "spearman": {m: float(np.corrcoef(_rank(p_high[ref]), _rank(p))[0, 1]) for m, p in p_high.items() if m != ref},
         "shares": {}, "oracle_paths": {}}
  for q in shares:
    high = route_eval.high_steps(val, p_high, th, q)
    oracle, mine = high["oracle"], high[ref]
    # An episode leaves the oracle's path at the first of the oracle's steps that a method sends low.
    held = [(a, b) for a, b in zip(val.offsets[:-1], val.offsets[1:]) if oracle[a:b].any()]
    out["oracle_paths"][f"{q:g}"] = {"episodes": len(held),
                                     "steps_per_episode": float(np.mean([oracle[a:b].sum() for a, b in held]))}
    out["shares"][f"{q:g}"] = {
        m: {"high": float(h.mean()), "sensitive": float(sensitive[h].mean()) if h.any() else 0.0,
            "oracle_steps": float((h & oracle).sum() / oracle.sum()),
            "oracle_d_mass": float(d[h].sum() / d[oracle].sum()),
            "oracle_episodes": float(np.mean([not (oracle[a:b] & ~h[a:b]).any() for a, b in held])),
            "overlap": float((h & mine).sum() / mine.sum())} for m, h in high.items()}
  return out


def table(result: dict) -> str:
  ref = result["reference"]
  lines = [f"{result['steps']} validation steps; {100 * result['sensitive']:.1f}% are sensitive (d_t ≥ τ = "
           f"{result['tau']:.4g}). At each share: the steps each method sends high, the sensitive share of them, "
           f"the oracle's steps and d mass they hold, the episodes (of those with an oracle step) where they send all "
           f"of the oracle's steps high, and the share of {ref}'s high steps they also send high.", "",
           f"| share | method | steps high % | sensitive % | oracle's steps % | oracle's d mass % | oracle's episodes % "
           f"| shares {ref}'s % |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for q, rows in result["shares"].items():
    for m, r in rows.items():
      lines.append(f"| {100 * float(q):g}% | {m} | {100 * r['high']:.1f} | {100 * r['sensitive']:.1f} | "
                   f"{100 * r['oracle_steps']:.1f} | {100 * r['oracle_d_mass']:.1f} | {100 * r['oracle_episodes']:.1f} | "
                   f"{100 * r['overlap']:.1f} |")
  lines += ["", "Episodes holding any of the oracle's steps, and how many each holds on average: " + ", ".join(
      f"{100 * float(q):g}%: {o['episodes']} × {o['steps_per_episode']:.2f}" for q, o in result["oracle_paths"].items()) + "."]
  lines += ["", f"Rank correlation of p(high) with {ref}'s over the validation steps: "
            + ", ".join(f"{m} {c:.3f}" for m, c in result["spearman"].items()) + "."]
  return "\n".join(lines) + "\n"


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True, help="a run's workdir with collect, router_sl and route_eval/config.json")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  cfg_path = os.path.join(args.workdir, "route_eval", "config.json")
  tau_path = os.path.join(args.workdir, "router_sl", "metrics.json")
  for path in (cfg_path, tau_path):
    if not os.path.isfile(path):
      raise SystemExit(f"error: {path} not found (run the pipeline through route_eval first)")
  with open(cfg_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(tau_path) as f:
    tau = float(json.load(f)["tau"])
  try:
    val = data.load(collect.table_path(os.path.join(args.workdir, "collect"), config.collect.val_split))
    routers = route_eval.trained_routers(args.workdir, config)
  except UserError as e:
    raise SystemExit(f"error: {e}")
  first = {}
  for method, seed, rcfg, params in routers:
    first.setdefault(method, (rcfg, params))
  p_high = {m: routes.table_p_high(params, rcfg, val) for m, (rcfg, params) in first.items()}
  result = agreement(val, p_high, tau, [float(q) for q in config.eval.shares])
  text = table(result)
  os.makedirs(args.out, exist_ok=True)
  io.atomic_write_text(os.path.join(args.out, "table.md"), text)
  io.atomic_write_json(os.path.join(args.out, "results.json"),
                       {**result, "workdir": os.path.abspath(args.workdir), "provenance": provenance.snapshot()})
  print(text)


if __name__ == "__main__":
  main()
