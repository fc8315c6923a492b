"""What the router reads at each step of the history: the paper's step embedding z_t, and optionally the
cheap signals the agent already has.

  inputs = ("z", "entropy")                       # router_config(inputs=...)
  table = featurize(inputs, table)                # a StepTable whose z holds each step's router inputs
  x = episode_inputs(inputs, episode, low="int2") # [steps, F] from a logged episode
  x = live_inputs(inputs, z, logged_steps, current_low_logits, low)   # during a rollout

  z             the low tier's step embedding (mean-pooled hidden states of the step's new tokens)
  entropy       the low tier's action entropy at this step   } the low tier scores the admissible
  margin        the low tier's top-2 probability margin      } commands before the route decides
  prev_entropy  the same at the previous step (0 at t = 0)   } (the entropy heuristic's signal); its
  prev_margin   ... (1 at t = 0)                             } cost is charged by the cost model
  step          t / 50 (ALFWorld's step cap), the absolute step index

Every path computes the same numbers from the same values: the table and logged episodes from the logged
log-scores, a live route from the log-scores rounded as the log stores them.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mpr.agent.agent import decode_z, logged_scores
from mpr.errors import UserError
from mpr.records import Episode, Step
from mpr.router import data, labels

INPUTS = ("z", "entropy", "margin", "prev_entropy", "prev_margin", "step")
SCORED = frozenset({"entropy", "margin", "prev_entropy", "prev_margin"})
STEP_SCALE = 50.0


def check(inputs: Sequence[str]) -> tuple[str, ...]:
  inputs = tuple(inputs)
  unknown = [x for x in inputs if x not in INPUTS]
  if not inputs or unknown or len(set(inputs)) < len(inputs):
    raise UserError(f"router.inputs must be distinct names from {list(INPUTS)}, got {list(inputs)}")
  return inputs


def needs_low_scores(inputs: Sequence[str]) -> bool:
  """True when the low tier must score every step's commands before the route decides."""
  return bool(SCORED & set(inputs))


def width(inputs: Sequence[str], embed_dim: int) -> int:
  """F, the width of one step's inputs."""
  return sum(embed_dim if x == "z" else 1 for x in check(inputs))


def _matrix(inputs, z: np.ndarray, entropy, margin, offsets: np.ndarray) -> np.ndarray:
  """[N, F] from per-step z [N, D], low entropy / margin [N] (None when not needed), episodes at offsets."""
  n = len(z)
  starts = np.zeros(n, bool)
  starts[offsets[:-1]] = True

  def prev(x, first):
    out = np.roll(np.asarray(x, np.float32), 1)
    out[starts] = first
    return out

  t = data.step_index(offsets)
  cols = {"z": lambda: z, "entropy": lambda: entropy, "margin": lambda: margin,
          "prev_entropy": lambda: prev(entropy, 0.0), "prev_margin": lambda: prev(margin, 1.0),
          "step": lambda: t / STEP_SCALE}
  return np.concatenate([np.asarray(cols[x](), np.float32).reshape(n, -1) for x in check(inputs)], axis=1)


def featurize(inputs: Sequence[str], table: data.StepTable) -> data.StepTable:
  """The table with z replaced by each step's router inputs (the same table when inputs are z alone)."""
  if tuple(inputs) == ("z",):
    return table
  return dataclasses.replace(table, z=_matrix(inputs, table.z, table.low_entropy, table.low_margin, table.offsets))


def _low_logits(step: Step, low: str) -> np.ndarray:
  if low not in step.probe_logits:
    raise UserError(f"step {step.t} carries no {low} action scores: the router's inputs need the low tier "
                    f"to score every step")
  return np.asarray(step.probe_logits[low], np.float64)


def _scores(inputs, logits: Sequence[np.ndarray]):
  if not needs_low_scores(inputs):
    return None, None
  return (np.array([labels.entropy(lg) for lg in logits], np.float32),
          np.array([labels.margin(lg) for lg in logits], np.float32))


def episode_inputs(inputs: Sequence[str], episode: Episode, low: str) -> np.ndarray:
  """[steps, F]: the router's inputs at every step of a logged episode."""
  z = np.stack([decode_z(s.z) for s in episode.steps])
  logits = [_low_logits(s, low) for s in episode.steps] if needs_low_scores(inputs) else []
  return _matrix(inputs, z, *_scores(inputs, logits), np.array([0, len(z)]))


def live_inputs(inputs: Sequence[str], z: np.ndarray, steps: Sequence[Step], logits, low: str) -> np.ndarray:
  """[t+1, F] during a rollout: z [t+1, D] so far, the episode's logged steps, the low tier's log-scores now."""
  history = []
  if needs_low_scores(inputs):
    history = [_low_logits(s, low) for s in steps] + [np.asarray(logged_scores(logits), np.float64)]
  return _matrix(inputs, z, *_scores(inputs, history), np.array([0, len(z)]))
