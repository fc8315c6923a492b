"""Which validation steps each routing method sends high at the pre-set shares, and how the routers agree.

  python benchmarks/route_agreement.py --workdir WORKDIR --out results/route_agreement_tiny

Reads a score-mode run's collect table of the validation split (where `route_eval` fixes every
threshold), its trained routers (each one's reference seed, as `route_eval` uses) and KL-ST's τ. At each
of the run's shares it applies each method's rule at the threshold `route_eval` uses, and reports over the
validation steps it sends high:
- how many are KL-ST-sensitive (d_t ≥ τ);
- how many of the oracle's steps at that share it catches, and what share of the oracle's d mass;
- in how many of the collected episodes it sends every one of the oracle's steps high. Played, the
  oracle keeps the high tier's action where the tiers disagree most; a method that sends one of those
  steps low may act otherwise there.
Then how many of the first router's (KL-ST's) high steps each method also sends high, and the rank
correlation of the routers' p(high). This says why methods that play alike do so, with no game played.
Writes results.json and table.md under --out.
"""
from __future__ import annotations

import argparse
import os
import sys

import ml_collections
import numpy as np

from mpr import io, provenance
from mpr.errors import UserError, one_line_errors
from mpr.router import data, labels, routes
from mpr.stages import collect, route_eval


def _ratio(a: float, b: float) -> float:
  return float(a / b) if b else 0.0


def agreement(val: data.StepTable, p_high: dict[str, np.ndarray], tau: float, shares) -> dict:
  """Per share, per method: the share of validation steps sent high, the sensitive (d_t ≥ τ) share of
  them, the oracle's steps and d mass they hold, the episodes (of those with any oracle step) where they
  send every one of the oracle's steps high, and how many of the first router's high steps they share."""
  if not p_high:
    raise UserError("no router to compare (p_high is empty)")
  th = route_eval.thresholds(val, p_high, shares)
  d = np.nan_to_num(val.d, nan=0.0)            # unknown d: neither sensitive nor the oracle's
  sensitive = d >= tau
  ref = next(iter(p_high))
  out = {"tau": tau, "steps": val.num_steps, "sensitive": float(sensitive.mean()), "reference": ref,
         "spearman": {m: float(np.corrcoef(labels.ranks(p_high[ref]), labels.ranks(p))[0, 1])
                      for m, p in p_high.items() if m != ref},
         "shares": {}, "oracle_paths": {}}
  for q in shares:
    high = route_eval.high_steps(val, p_high, th, q)
    oracle, mine = high["oracle"], high[ref]
    held = [(a, b) for a, b in zip(val.offsets[:-1], val.offsets[1:]) if oracle[a:b].any()]
    out["oracle_paths"][f"{q:g}"] = {"episodes": len(held),
                                     "steps_per_episode": _ratio(oracle.sum(), len(held))}
    out["shares"][f"{q:g}"] = {
        m: {"high": float(h.mean()), "sensitive": _ratio(sensitive[h].sum(), h.sum()),
            "oracle_steps": _ratio((h & oracle).sum(), oracle.sum()),
            "oracle_d_mass": _ratio(d[h].sum(), d[oracle].sum()),
            "oracle_episodes": _ratio(sum(not (oracle[a:b] & ~h[a:b]).any() for a, b in held), len(held)),
            "overlap": _ratio((h & mine).sum(), mine.sum())} for m, h in high.items()}
  return out


def table(result: dict) -> str:
  ref = result["reference"]
  lines = [f"{result['steps']} validation steps; {100 * result['sensitive']:.1f}% are sensitive (d_t ≥ τ = "
           f"{result['tau']:.4g}). At each share, over the steps each method sends high: the sensitive share; the "
           f"oracle's steps and d mass they hold; the episodes (of those holding an oracle step) where all of the "
           f"oracle's steps go high; and the share of {ref}'s high steps that go high too.", "",
           f"| share | method | steps high % | sensitive % | oracle's steps % | oracle's d mass % "
           f"| episodes with all oracle steps high % | of {ref}'s high steps % |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for q, rows in result["shares"].items():
    for m, r in rows.items():
      lines.append(f"| {100 * float(q):g}% | {m} | {100 * r['high']:.1f} | {100 * r['sensitive']:.1f} | "
                   f"{100 * r['oracle_steps']:.1f} | {100 * r['oracle_d_mass']:.1f} | {100 * r['oracle_episodes']:.1f} | "
                   f"{100 * r['overlap']:.1f} |")
  lines += ["", "Episodes holding any of the oracle's steps, and how many each holds on average: " + ", ".join(
      f"{100 * float(q):g}%: {o['episodes']} × {o['steps_per_episode']:.2f}" for q, o in result["oracle_paths"].items()) + "."]
  lines += ["", f"Rank correlation of p(high) with {ref}'s over the validation steps (ties at their mean rank): "
            + ", ".join(f"{m} {c:.3f}" for m, c in result["spearman"].items()) + "."]
  return "\n".join(lines) + "\n"


def run(workdir: str, out: str) -> str:
  config = ml_collections.ConfigDict(io.read_json_object(os.path.join(workdir, "route_eval", "config.json")))
  if config.agent.mode != "score":
    raise UserError(f"{workdir} ran in {config.agent.mode!r} mode; the entropy, margin and oracle rules need 'score'")
  tau = io.read_json_object(os.path.join(workdir, "router_sl", "metrics.json")).get("tau")
  if not isinstance(tau, (int, float)):
    raise UserError(f"{workdir}/router_sl/metrics.json records no τ")
  val = data.load(collect.table_path(os.path.join(workdir, "collect"), config.collect.val_split))
  first = {}
  for method, _, rcfg, params in route_eval.trained_routers(workdir, config):
    first.setdefault(method, (rcfg, params))
  p_high = {m: routes.table_p_high(params, rcfg, val) for m, (rcfg, params) in first.items()}
  result = agreement(val, p_high, float(tau), [float(q) for q in config.eval.shares])
  text = table(result)
  os.makedirs(out, exist_ok=True)
  io.atomic_write_text(os.path.join(out, "table.md"), text)
  io.atomic_write_json(os.path.join(out, "results.json"),
                       {**result, "workdir": os.path.abspath(workdir), "provenance": provenance.snapshot()})
  return text


@one_line_errors("route_agreement")
def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True, help="a run's workdir with collect, router_sl and route_eval/config.json")
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  print(run(args.workdir, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
