"""Episode and step records: the single source every metric and cost is derived from.

Plain dataclasses that round-trip through JSON, so every stage (expert evaluation, agent
evaluation, routing) writes the same JSONL and every method is measured the same way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class Step:
  t: int
  observation: str            # what the agent saw before acting
  admissible: list[str]       # commands it could choose from
  action: str
  env_seconds: float = 0.0
  # Filled by the agent loop / router in later stages; absent for expert rollouts.
  precision: Optional[str] = None
  p_high: Optional[float] = None
  tokens_prefilled: int = 0
  tokens_decoded: int = 0
  model_seconds: float = 0.0
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Episode:
  game: str                   # game id: "<task dir>/<trial dir>", unique within a split
  task_type: str
  seed: int
  goal: str
  steps: list[Step]
  won: bool
  failure: Optional[str] = None   # None when won; else "step_cap", "worker_crash: ...", ...
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_steps(self) -> int:
    return len(self.steps)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Episode":
    d = dict(d)
    d["steps"] = [Step(**s) for s in d["steps"]]
    return cls(**d)
