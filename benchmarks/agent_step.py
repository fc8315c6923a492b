"""Agent throughput on both engines: where a step's time goes, and what one evaluation point costs.

  python benchmarks/agent_step.py [--games 16] [--max-steps 15] [--precisions bf16,int4]
                                  [--point-games 140] [--out benchmarks/results/agent_step_cpu.json]

Plays the same valid_seen games with the shipped tiny policy (score mode, greedy) in several
settings, one run: TextWorld in 2 worker processes with 8 episodes in flight (the pool before the
fast engine), and FastEnv in process with 1, 8 and 64 episodes in flight (lockstep: one model call
acts for every waiting episode). A warm-up run of the same games first compiles (or loads from
the persistent compilation cache, as launch.py does) every shape, so the numbers are steady state. Per precision and setting:
  steps/s         all steps / wall time of the run (resets included)
  model ms/step   the variant's batched call time shared among its episodes (Step.model_seconds)
  env ms/step     the engine's time for the step (Step.env_seconds)
  host ms/step    the rest of the wall time per step: prompts, tokenising, the driver
Then (`--point-games`, 0 to skip) one evaluation point as `eval` plays it with the default env
config: bf16 on that many valid_seen games, 50 steps, timed end to end after a warm-up run of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from mpr import compile_cache
from mpr.agent import agent as agent_lib, models
from mpr.config_util import env_config
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import EnvPool, LocalPool
from mpr.envs.rollout import rollout

SETTINGS = (("textworld 2 workers x 8", "textworld", 8), ("fast x 1", "fast", 1), ("fast x 8", "fast", 8),
            ("fast x 64", "fast", 64))


def _pool(engine: str, slots: int, max_steps: int):
  if engine == "fast":
    return LocalPool(slots, max_steps=max_steps)
  return EnvPool(2, slots, engine=engine, max_steps=max_steps)


def _run(policy, name, variants, games, engine, slots, max_steps):
  with _pool(engine, slots, max_steps) as pool:
    def agent():
      return agent_lib.from_config(agent_lib.agent_config(), policy.tok, variants, rows=slots,
                                   route=agent_lib.fixed(name))
    rollout(pool, [(g, 0) for g in games], agent())          # warm-up: compile (or load) every shape
    t0 = time.perf_counter()
    episodes = rollout(pool, [(g, 0) for g in games], agent())
    wall = time.perf_counter() - t0
  steps = [s for e in episodes for s in e.steps]
  model, env = sum(s.model_seconds for s in steps), sum(s.env_seconds for s in steps)
  return {"episodes": len(episodes), "steps": len(steps), "wall_s": wall, "steps_per_s": len(steps) / wall,
          "success": sum(e.won for e in episodes) / len(episodes),
          "model_ms_median": 1e3 * statistics.median(s.model_seconds for s in steps),
          "model_ms_mean": 1e3 * model / len(steps), "env_ms_mean": 1e3 * env / len(steps),
          "env_ms_median": 1e3 * statistics.median(s.env_seconds for s in steps),
          "host_ms_mean": 1e3 * max(wall - model - env, 0.0) / len(steps),
          "reset_s_mean": statistics.fmean(e.reset_seconds for e in episodes)}


def _point(policy, num_games: int) -> dict:
  """One evaluation point with the default env config, as the eval stage plays it."""
  env = env_config()
  games = select_games(find_games("valid_seen"), num_games)
  variants = policy.variants(["bf16"])
  r = _run(policy, "bf16", variants, games, env.engine, env.num_slots, env.max_steps)
  return {**r, "engine": env.engine, "num_slots": env.num_slots, "max_steps": env.max_steps}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--games", type=int, default=16)
  ap.add_argument("--max-steps", type=int, default=15)
  ap.add_argument("--precisions", default="bf16,int4")
  ap.add_argument("--point-games", type=int, default=140)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  compile_cache.enable()     # as launch.py does: programs compiled by earlier runs are loaded
  policy = models.load(models.model_config())
  games = select_games(find_games("valid_seen"), args.games)
  results = {}
  print("| precision | setting | steps/s | model ms/step | env ms/step | host ms/step | wall s |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for name in args.precisions.split(","):
    variants = policy.variants([name])
    for setting, engine, slots in SETTINGS:
      r = _run(policy, name, variants, games, engine, slots, args.max_steps)
      results[f"{name}/{setting}"] = r
      print(f"| {name} | {setting} | {r['steps_per_s']:.1f} | {r['model_ms_mean']:.1f} | {r['env_ms_mean']:.2f} | "
            f"{r['host_ms_mean']:.1f} | {r['wall_s']:.0f} |", flush=True)
  if args.point_games:
    p = results["point"] = _point(policy, args.point_games)
    print(f"\none evaluation point (bf16, {p['episodes']} valid_seen games, {p['max_steps']} steps, "
          f"{p['engine']} engine, {p['num_slots']} in flight): {p['wall_s']:.0f} s, {p['steps']} steps, "
          f"{p['steps_per_s']:.1f} steps/s, success {100 * p['success']:.1f}%")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
