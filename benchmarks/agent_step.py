"""Agent step cost: model vs environment time per step, batch 1 vs the pool, per precision.

  python benchmarks/agent_step.py [--games 16] [--max-steps 20] [--precisions f32,bf16,int8,w8a8,int4]
                                  [--out benchmarks/results/agent_step_cpu.json]

Plays the same valid_seen games with the shipped tiny policy (score mode) once with one episode
in flight (1 worker, 1 slot: every step waits for the model, then for the env) and once with the
pool (2 workers x 8 slots, lockstep: the workers step the 8 episodes in parallel, then one model
call acts for all of them). A warm-up run first compiles every shape, so the numbers are steady
state. Reported per precision and setting:
  model ms/step   the variant's batched call time shared among its episodes (Step.model_seconds)
  env ms/step     the worker's time for the step (Step.env_seconds)
  steps/s         all steps / wall time of the run (resets included)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


from mpr.agent import agent as agent_lib, models
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import EnvPool
from mpr.envs.rollout import rollout


def _run(policy, variant_name, variants, games, workers, slots, max_steps):
  with EnvPool(workers, slots, max_steps=max_steps) as pool:
    agent = agent_lib.from_config(agent_lib.agent_config(), policy.tok, variants, rows=slots,
                                  route=agent_lib.fixed(variant_name))
    rollout(pool, [(g, 0) for g in games[:slots]], agent)          # warm-up: compile every shape
    t0 = time.perf_counter()
    episodes = rollout(pool, [(g, 0) for g in games], agent)
    wall = time.perf_counter() - t0
  steps = [s for e in episodes for s in e.steps]
  return {"episodes": len(episodes), "steps": len(steps), "wall_s": wall, "steps_per_s": len(steps) / wall,
          "model_ms_median": 1e3 * statistics.median(s.model_seconds for s in steps),
          "model_ms_mean": 1e3 * statistics.fmean(s.model_seconds for s in steps),
          "env_ms_median": 1e3 * statistics.median(s.env_seconds for s in steps),
          "env_ms_mean": 1e3 * statistics.fmean(s.env_seconds for s in steps),
          "reset_s_mean": statistics.fmean(e.extra["reset_seconds"] for e in episodes)}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--games", type=int, default=16)
  ap.add_argument("--max-steps", type=int, default=20)
  ap.add_argument("--precisions", default="f32,bf16,int8,w8a8,int4")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  policy = models.load(models.model_config())
  games = select_games(find_games("valid_seen"), args.games)
  results = {}
  print("| precision | setting | model ms/step (median) | env ms/step (median) | steps/s | wall s |")
  print("|---|---|---:|---:|---:|---:|")
  for name in args.precisions.split(","):
    variants = policy.variants([name])
    for setting, workers, slots in (("batch 1", 1, 1), ("pool 2x8", 2, 8)):
      r = _run(policy, name, variants, games, workers, slots, args.max_steps)
      results[f"{name}/{setting}"] = r
      print(f"| {name} | {setting} | {r['model_ms_median']:.1f} | {r['env_ms_median']:.1f} | "
            f"{r['steps_per_s']:.1f} | {r['wall_s']:.0f} |", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
