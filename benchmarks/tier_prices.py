"""Per-tier prices of the cost model (mpr.eval.cost) on this machine's device, as a JSON price table.

  python benchmarks/tier_prices.py --high bf16 --low int2-mse-emb --out prices.json
  python benchmarks/tier_prices.py --tier hf --path /ckpt/Qwen3-8B --high bf16 --low int4 --slots 16 --out h100.json

The same games are played three ways (score mode, greedy, FastEnv, `--slots` episodes in flight), each
after a warm-up run that compiles every shape: high only, low only, and routed at random half the
time with the low tier embedding every step (so prefill-only passes and catch-up prefills occur, as
under a router). mpr.eval.cost.fit then prices each kind of pass and token per tier from all steps. Run it on the accelerator a deployment would use, then estimate a
routing run's speed-up there from its logged work (the evaluation itself may have run anywhere):

  python -m mpr.eval.cost WORKDIR/route_eval h100.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from mpr import compile_cache
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import LocalPool
from mpr.envs.rollout import rollout
from mpr.eval import cost
from mpr.router import routes


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--high", default="bf16")
  ap.add_argument("--low", default="int2-mse-emb")
  ap.add_argument("--tier", default="mpr")
  ap.add_argument("--path", default="")
  ap.add_argument("--split", default="valid_train")
  ap.add_argument("--games", type=int, default=24)
  ap.add_argument("--slots", type=int, default=1)
  ap.add_argument("--max-steps", type=int, default=50)
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  compile_cache.enable()
  policy = models.load(models.model_config(tier=args.tier, path=args.path))
  games = [(g, 0) for g in select_games(find_games(args.split), args.games)]
  tiers = [args.high, args.low]
  variants = policy.variants(tiers)
  mixed = dataclasses.replace(routes.random_route(args.high, args.low, 0.5, seed=0), embed=args.low)
  runs = []
  for route in (agent_lib.fixed(args.high), agent_lib.fixed(args.low), mixed):
    with LocalPool(args.slots, max_steps=args.max_steps) as pool:
      agent = lambda: agent_lib.from_config(agent_lib.agent_config(), policy.tok, variants, rows=args.slots,
                                            route=route)
      rollout(pool, games, agent())                 # warm-up: compile (or load) every shape
      runs.append(rollout(pool, games, agent()))
  table = cost.fit(runs, tiers)
  table["source"] = (f"benchmarks/tier_prices.py on {jax.devices()[0].device_kind}: {args.tier} "
                     f"{args.path or ''} {len(games)} {args.split} games, {args.slots} in flight".replace("  ", " "))
  with open(args.out, "w") as f:
    json.dump(table, f, indent=1)
  print("| tier | " + " | ".join(f"{k} ms" for k in cost.PRICES) + " |\n|---|" + "---:|" * len(cost.PRICES))
  for name, p in table["tiers"].items():
    print(f"| {name} | " + " | ".join(f"{p[k]:.4g}" for k in cost.PRICES) + " |")


if __name__ == "__main__":
  main()
