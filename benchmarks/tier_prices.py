"""Per-tier prices of the cost model (mpr.eval.cost) on this machine's device, as a JSON price table.

  python benchmarks/tier_prices.py --precisions bf16,int2-mse-emb --out prices.json
  python benchmarks/tier_prices.py --tier hf --path /ckpt/Qwen3-8B --precisions bf16,int4 --slots 16 --out h100.json

Each precision plays the same games alone (score mode, greedy, FastEnv, `--slots` episodes in flight)
after a warm-up run of them that compiles every shape; mpr.eval.cost.fit then prices a call and a token
of each kind per tier from the steps. Run it on the accelerator a deployment would use, then estimate a
routing run's speed-up there from its logged work (the evaluation itself may have run anywhere):

  python -m mpr.eval.cost WORKDIR/route_eval h100.json
"""
from __future__ import annotations

import argparse
import json

import jax

from mpr import compile_cache
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import LocalPool
from mpr.envs.rollout import rollout
from mpr.eval import cost


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--precisions", default="bf16,int2-mse-emb")
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
  names = args.precisions.split(",")
  variants = policy.variants(names)
  runs = {}
  for name in names:
    with LocalPool(args.slots, max_steps=args.max_steps) as pool:
      agent = lambda: agent_lib.from_config(agent_lib.agent_config(), policy.tok, {name: variants[name]},
                                            rows=args.slots, route=agent_lib.fixed(name))
      rollout(pool, games, agent())                 # warm-up: compile (or load) every shape
      runs[name] = rollout(pool, games, agent())
  table = cost.fit(runs)
  table["source"] = (f"benchmarks/tier_prices.py on {jax.devices()[0].device_kind}: {args.tier} "
                     f"{args.path or ''} {len(games)} {args.split} games, {args.slots} in flight".replace("  ", " "))
  with open(args.out, "w") as f:
    json.dump(table, f, indent=1)
  print("| tier | call ms | prefill ms/token | score ms/token | decode ms/token |\n|---|---:|---:|---:|---:|")
  for name, p in table["tiers"].items():
    print(f"| {name} | {p['call']:.3f} | {p['prefill']:.5f} | {p['score']:.5f} | {p['decode']:.5f} |")


if __name__ == "__main__":
  main()
