"""Expert success rate: how often an expert wins real ALFWorld games within the step cap.

  python benchmarks/expert_success.py --split valid_seen --expert exploring
  python benchmarks/expert_success.py --split train --stride 7 --max-games 500   # the train sample

Demonstrations are only as good as the expert that makes them, so this is the check that an
expert (mpr.envs.experts) is fit for behaviour cloning: it plays each game the way the rollout stage
does (reset, then step(result.expert_action) until done) and prints the success rate and mean steps
overall and per task type. The train sample is every `--stride`-th game of the sorted train list,
capped at `--max-games`: deterministic and spread over all task types and scenes. Games run in a
process pool (`--processes`, default every core); an episode that raises counts as a failure and is
listed, so one broken game cannot hide the others' numbers.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import time
import traceback


from mpr.envs.games import TASK_TYPES, find_games

_env = None   # one AlfworldEnv per worker process: building it imports textworld and alfworld


def _init_worker(max_steps: int, expert: str) -> None:
  global _env
  from mpr.envs.alfworld import AlfworldEnv
  _env = AlfworldEnv(max_steps=max_steps, expert=expert)


def _play(game) -> dict:
  try:
    _, res = _env.reset(game)
    while not res.done:
      res = _env.step(res.expert_action)
    return {"game_id": game.game_id, "task_type": game.task_type, "won": res.won, "steps": res.steps,
            "error": None}
  except Exception:   # reported per game below; the run goes on
    return {"game_id": game.game_id, "task_type": game.task_type, "won": False, "steps": 0,
            "error": traceback.format_exc(limit=3)}


def _row(name: str, eps: list[dict]) -> str:
  wins = [e for e in eps if e["won"]]
  mean_steps = sum(e["steps"] for e in eps) / len(eps)
  mean_won = sum(e["steps"] for e in wins) / len(wins) if wins else float("nan")
  return (f"{name:32s} {len(eps):5d} {len(wins) / len(eps):8.1%} {mean_steps:10.1f} {mean_won:10.1f}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--split", default="valid_seen")
  p.add_argument("--expert", default="exploring", help="walkthrough | exploring")
  p.add_argument("--stride", type=int, default=1, help="play every n-th game of the sorted split")
  p.add_argument("--max-games", type=int, default=0, help="cap after striding (0: no cap)")
  p.add_argument("--max-steps", type=int, default=50)
  p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
  a = p.parse_args()

  games = find_games(a.split, source="real")[::a.stride]
  if a.max_games:
    games = games[:a.max_games]
  t0 = time.perf_counter()
  with multiprocessing.Pool(a.processes, _init_worker, (a.max_steps, a.expert)) as pool:
    # chunksize=1: game lengths vary a lot, so hand them out one at a time.
    eps = pool.map(_play, games, chunksize=1)
  wall = time.perf_counter() - t0

  print(f"{a.expert} expert on {a.split}: {len(games)} games (stride {a.stride}), max {a.max_steps} steps, "
        f"{a.processes} processes, {wall:.0f} s")
  print(f"{'task type':32s} {'games':>5s} {'success':>8s} {'steps':>10s} {'steps(won)':>10s}")
  by_type = collections.defaultdict(list)
  for e in eps:
    by_type[e["task_type"]].append(e)
  for t in TASK_TYPES:
    if by_type[t]:
      print(_row(t, by_type[t]))
  print(_row("all", eps))
  for e in eps:
    if not e["won"]:
      print(f"failed: {e['game_id']} ({e['steps']} steps)" + (f"\n{e['error']}" if e["error"] else ""))


if __name__ == "__main__":
  main()
