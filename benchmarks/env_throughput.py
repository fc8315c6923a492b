"""Environment throughput of both engines: TextWorld (one worker vs the pool) and FastEnv (in process).

  python benchmarks/env_throughput.py [--games 24] [--steps 30] [--pool-workers 2] [--out results.json]

TextWorld: each configuration resets every game once (resets/s), then plays `--steps` uniformly
random admissible actions per slot (steps/s; random play keeps episodes long, unlike the experts).
Timings are wall clock on the host, everything included (IPC, pickling). FastEnv, on one core in
this process: each game's first reset (reading and compiling its file), a second reset (compiled
game cached), then the same number of random steps per game; medians per call and the throughput.
Real games come from $ALFWORLD_DATA, generated ones from mpr.envs.generate (made on first use).
Results go in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time


from mpr.envs.fastworld import FastEnv
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import EnvPool, WorkerFailure


def _run_all(pool: EnvPool, games, steps: int, seed: int) -> tuple[float, float, int]:
  """Returns (reset wall s, step wall s, steps taken) with every slot kept busy."""
  rng = random.Random(seed)
  queue = list(games)
  admissible: dict[int, tuple[str, ...]] = {}
  t0 = time.perf_counter()
  for slot in range(min(pool.num_slots, len(queue))):
    pool.submit_reset(slot, queue.pop())
  while pool.num_pending:
    for slot, out in pool.collect():
      if isinstance(out, WorkerFailure):
        raise RuntimeError(out.reason)
      admissible[slot] = out.result.admissible
      if queue:
        pool.submit_reset(slot, queue.pop())
  t_reset = time.perf_counter() - t0

  # Steps: each slot plays its last game further; slots that finished early restart nothing.
  left = {slot: steps for slot in admissible}
  taken = 0
  t0 = time.perf_counter()
  for slot in left:
    pool.submit_step(slot, rng.choice(admissible[slot]))
  while pool.num_pending:
    for slot, out in pool.collect():
      if isinstance(out, WorkerFailure):
        raise RuntimeError(out.reason)
      taken += 1
      left[slot] -= 1
      if left[slot] > 0 and not out.result.won:
        pool.submit_step(slot, rng.choice(out.result.admissible))
  return t_reset, time.perf_counter() - t0, taken


def _fast(games, steps: int, seed: int) -> dict:
  """FastEnv medians (ms) of a first reset, a cached reset and a step, and steps/s over all steps."""
  rng, env = random.Random(seed), FastEnv(max_steps=10_000)
  first, again, step = [], [], []
  for g in games:
    for out in (first, again):
      t = time.perf_counter()
      _, r = env.reset(g)
      out.append(time.perf_counter() - t)
    for _ in range(steps):
      if r.won:
        break
      action = rng.choice(r.admissible)
      t = time.perf_counter()
      r = env.step(action)
      step.append(time.perf_counter() - t)
  ms = lambda xs: 1e3 * statistics.median(xs)
  return {"first_reset_ms": ms(first), "reset_ms": ms(again), "step_ms": ms(step),
          "steps_per_s": len(step) / sum(step), "steps": len(step)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--games", type=int, default=24)
  p.add_argument("--steps", type=int, default=30, help="random steps per slot")
  p.add_argument("--pool-workers", type=int, default=os.cpu_count() or 2)
  p.add_argument("--pool-slots", type=int, default=8)
  p.add_argument("--out", default="")
  a = p.parse_args()

  results = []
  for source in ("real", "generated"):
    games = select_games(find_games("valid_seen", source=source, num_generated=a.games), a.games)
    for workers, slots in ((1, 1), (a.pool_workers, a.pool_slots)):
      # Enough steps in total that both settings play the same number: slots x steps_per_slot.
      per_slot = max(1, a.steps * a.pool_slots // slots)
      with EnvPool(workers, slots, max_steps=10_000) as pool:
        t_reset, t_step, n = _run_all(pool, games, per_slot, seed=0)
      row = {"games": source, "engine": "textworld", "workers": workers, "slots": slots,
             "resets_per_s": len(games) / t_reset, "steps_per_s": n / t_step, "steps": n}
      results.append(row)
      print(f"{source:9s} textworld workers={workers} slots={slots:2d}: {row['resets_per_s']:6.2f} resets/s  "
            f"{row['steps_per_s']:6.1f} steps/s  ({n} steps)", flush=True)
    row = {"games": source, "engine": "fast", **_fast(games, a.steps * a.pool_slots, seed=0)}
    results.append(row)
    print(f"{source:9s} fast (1 core): first reset {row['first_reset_ms']:.2f} ms, reset {row['reset_ms']:.3f} ms, "
          f"step {row['step_ms']:.3f} ms (medians), {row['steps_per_s']:.0f} steps/s ({row['steps']} steps)", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
