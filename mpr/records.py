"""Episode and step records: the single source every metric and cost is derived from.

Plain dataclasses that round-trip through JSON, so every stage (expert evaluation, agent
evaluation, routing) writes the same JSONL and every method is measured the same way.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


# The work of one variant in one step: its forward passes by kind (prefill only, e.g. the embedding;
# scoring commands, with or without a prefill in the same pass; a decode loop) and its tokens by kind,
# prefilled (catching up on the context), scored (admissible commands, score mode) and decoded (generate
# mode). The cost model (mpr.eval.cost) prices each per tier.
PASS_KINDS = ("prefill_calls", "score_calls", "decode_calls")
WORK_KINDS = ("prefill", "score", "decode")


@dataclasses.dataclass
class Step:
  t: int
  observation: str            # what the agent saw before acting
  admissible: list[str]       # commands it could choose from
  action: str
  env_seconds: float = 0.0
  # Filled by the agent (mpr.agent.agent); absent for expert rollouts.
  precision: Optional[str] = None       # the variant that acted
  p_high: Optional[float] = None        # the router's p(high), when a router decided
  model_seconds: float = 0.0            # every model call of the step, the router's included
  router_seconds: float = 0.0
  tokens: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # variant -> {PASS_KINDS, WORK_KINDS: n}
  action_probs: Optional[list[float]] = None     # score mode: the distribution the action was drawn from
  action_logprob: Optional[float] = None
  generated: Optional[str] = None       # generate mode: the acting variant's text ...
  mapped: bool = False                  # ... not itself a command, so mapped to the closest one
  token_logprobs: Optional[list[float]] = None
  probe_logits: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # variant -> action log-scores
  token_labels: Optional[dict[str, Any]] = None   # generate mode, route.teacher: per generated token (agent.TOKEN_LABELS) + "thinking"
  z: Optional[str] = None               # the step embedding (mpr.agent.agent.encode_z), when recorded
  expert_action: Optional[str] = None   # the expert's command here, when the pool runs an expert
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def work(self, kind: str) -> int:
    """Tokens of one kind (WORK_KINDS) over every variant."""
    return sum(w.get(kind, 0) for w in self.tokens.values())


# Logs written before these values were Step fields carried them in `extra`, and token totals without
# the variant: both still load, the totals under UNATTRIBUTED (which the cost model cannot price).
UNATTRIBUTED = "unattributed (an older log)"
_LEGACY_TOTALS = {"tokens_prefilled": "prefill", "tokens_scored": "score", "tokens_decoded": "decode"}


def _step_from_json(d: dict[str, Any]) -> Step:
  d = dict(d)
  extra = dict(d.pop("extra", {}))
  totals = {kind: d.pop(k, 0) + extra.pop(k, 0) for k, kind in _LEGACY_TOTALS.items()}
  for k in STEP_FIELDS & set(extra):
    d.setdefault(k, extra.pop(k))
  if any(totals.values()) and "tokens" not in d:
    d["tokens"] = {UNATTRIBUTED: totals}
  return Step(**d, extra=extra)


@dataclasses.dataclass
class Episode:
  game: str                   # game id: "<task dir>/<trial dir>", unique within a split
  task_type: str
  seed: int
  goal: str
  steps: list[Step]
  won: bool
  failure: Optional[str] = None   # None when won; else "step_cap", "worker_crash: ...", ...
  reset_seconds: float = 0.0
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_steps(self) -> int:
    return len(self.steps)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Episode":
    d = dict(d)
    d["steps"] = [_step_from_json(s) for s in d["steps"]]
    d["extra"] = dict(d.get("extra", {}))
    d.setdefault("reset_seconds", d["extra"].pop("reset_seconds", 0.0))
    return cls(**d)


# Per-step values an agent reports in Decision.info that have a Step field (the rest go to `extra`).
STEP_FIELDS = frozenset(f.name for f in dataclasses.fields(Step)) - {"t", "observation", "admissible", "action",
                                                                      "env_seconds", "extra"}
