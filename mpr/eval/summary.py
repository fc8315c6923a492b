"""Success statistics from Episode records, and their Markdown tables.

Every success rate carries a 95% Wilson score interval: with 140 games a point estimate alone
hides ±5–8 points of sampling noise, which is the size of the effects the router is judged on.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from mpr.envs.games import TASK_TYPES
from mpr.records import Episode


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  if n == 0:
    return (0.0, 0.0)
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return (max(0.0, centre - half), min(1.0, centre + half))


def _group(episodes: Sequence[Episode]) -> dict:
  n = len(episodes)
  wins = sum(e.won for e in episodes)
  lo, hi = wilson_interval(wins, n)
  failures: dict[str, int] = {}
  for e in episodes:
    if e.failure:
      kind = e.failure.split(":", 1)[0]
      failures[kind] = failures.get(kind, 0) + 1
  return {
      "n": n,
      "success": wins / n if n else 0.0,
      "success_ci95": [lo, hi],
      "mean_steps": sum(e.num_steps for e in episodes) / n if n else 0.0,
      "mean_steps_won": (sum(e.num_steps for e in episodes if e.won) / wins) if wins else 0.0,
      "failures": failures,
  }


def summarize(episodes: Iterable[Episode]) -> dict:
  """{'overall': stats, 'per_task': {task_type: stats}} for a list of episodes."""
  episodes = list(episodes)
  per_task = {t: _group([e for e in episodes if e.task_type == t]) for t in TASK_TYPES}
  return {"overall": _group(episodes), "per_task": {t: s for t, s in per_task.items() if s["n"]}}


def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


def markdown_table(summary: dict, title: str = "") -> str:
  rows = [("all", summary["overall"])] + list(summary["per_task"].items())
  lines = [f"### {title}", ""] if title else []
  lines += ["| task type | games | success % | 95% CI | mean steps | mean steps (won) |",
            "|---|---:|---:|---:|---:|---:|"]
  for name, s in rows:
    lo, hi = s["success_ci95"]
    lines.append(f"| {name} | {s['n']} | {_pct(s['success'])} | {_pct(lo)}–{_pct(hi)} | "
                 f"{s['mean_steps']:.1f} | {s['mean_steps_won']:.1f} |")
  return "\n".join(lines) + "\n"


COMPILE_OUTLIER = 10.0   # a step slower than this × its run's median step compiled something


def steady(ms: np.ndarray) -> np.ndarray:
  """Which of a run's step times are not compiles (see step_costs)."""
  return ms <= COMPILE_OUTLIER * np.median(ms) if len(ms) else np.zeros(0, bool)


def step_costs(episodes: Sequence[Episode]) -> dict[str, float]:
  """Per-step means of what a step cost, and how often the action had to be repaired.

  model_ms leaves out compile outliers (> 10× the median step): the first call at a new shape
  compiles for seconds against milliseconds for a step, and which run pays for which shapes
  depends on the order runs share a process, so those steps are not the method's cost."""
  steps = [s for e in episodes for s in e.steps]
  n = max(len(steps), 1)
  mean = lambda f: float(sum(f(s) for s in steps) / n)
  ms = np.asarray([1e3 * s.model_seconds for s in steps])
  keep = steady(ms)
  return {
      "steps": len(steps),
      "model_ms": float(ms[keep].mean()) if steps else 0.0,
      "compile_steps_dropped": int((~keep).sum()),
      "router_ms": 1e3 * mean(lambda s: s.router_seconds),
      "env_ms": 1e3 * mean(lambda s: s.env_seconds),
      "reset_s": float(np.mean([e.reset_seconds for e in episodes])) if episodes else 0.0,
      "tokens_prefilled": mean(lambda s: s.work("prefill")),
      "tokens_scored": mean(lambda s: s.work("score")),
      "tokens_decoded": mean(lambda s: s.work("decode")),
      "mapped": mean(lambda s: s.mapped),
      "invalid": mean(lambda s: s.action not in s.admissible),
  }
