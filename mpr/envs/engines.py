"""The two ALFWorld engines behind one constructor.

  fast       `mpr.envs.fastworld.FastEnv`: in process, ~0.2 ms a step, checked step by step against
             TextWorld by `python -m mpr.envs.fastworld.verify` (BENCHMARKS.md has the coverage).
  textworld  `mpr.envs.alfworld.AlfworldEnv`: the real engine (PDDL planner and grammar), ~50 ms a
             step and seconds a reset, so it runs in worker processes (`mpr.envs.pool.EnvPool`).

Both return the same texts, commands and outcomes for the same game and actions, so an evaluation
can be replayed on the other engine (`env.engine=textworld`) and must give the same episodes.
"""
from __future__ import annotations

from typing import Optional

from mpr.envs.alfworld import EpisodeEnv
from mpr.errors import UserError

ENGINES = ("fast", "textworld")


def check_engine(engine: str) -> None:
  if engine not in ENGINES:
    raise UserError(f"unknown env.engine {engine!r}; known: {list(ENGINES)}")


def make_env(engine: str, *, max_steps: int, expert: Optional[str] = None) -> EpisodeEnv:
  check_engine(engine)
  if engine == "fast":
    from mpr.envs.fastworld import FastEnv
    return FastEnv(max_steps=max_steps, expert=expert)
  from mpr.envs.alfworld import AlfworldEnv
  return AlfworldEnv(max_steps=max_steps, expert=expert)
