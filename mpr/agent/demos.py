"""Episodes → training sequences for behaviour cloning, seen exactly as the agent would see them.

Each episode is replayed through a History with the agent's format and budget, so a training
context is token for token the context the policy meets when acting (same pieces, same trims).
An Example is one token sequence with a mask over the action tokens to be learned.

The label of a step is the expert's command: `step.extra["expert_action"]` when the episode was
played by the policy with an expert watching (DAgger), else the command taken (expert demos).
Where the two differ, the taken command stays in the context (it is what happened next) and the
expert's is learned in a branch: a separate example of the context up to that step plus the
expert's command.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from mpr.agent.prompt import Format, History
from mpr.models.tokenizer import Tokenizer
from mpr.records import Episode


@dataclasses.dataclass(frozen=True)
class Example:
  tokens: np.ndarray     # [T] int32
  loss: np.ndarray       # [T] bool: token t is an action token the model must predict


def _example(tokens: list[int], loss: list[bool]) -> Example:
  return Example(np.asarray(tokens, np.int32), np.asarray(loss, bool))


def episode_examples(episode: Episode, tok: Tokenizer, fmt: Format, budget: int, reserve: int) -> list[Example]:
  out: list[Example] = []
  history = History(tok, fmt, episode.goal, budget)
  tokens, loss = list(history.head), [False] * len(history.head)
  for step in episode.steps:
    version = history.version
    history.observe(step.observation, step.admissible, reserve)
    if history.version != version:      # trimmed: the context restarts from the kept tokens
      if any(loss):
        out.append(_example(tokens, loss))
      tokens = history.tokens()
      loss = [False] * len(tokens)
    else:
      tokens += history.steps[-1]
      loss += [False] * len(history.steps[-1])
    label = step.extra.get("expert_action", step.action)
    if label != step.action and label in step.admissible:
      ids = history.action_tokens(label)
      out.append(_example(tokens + ids, [False] * len(tokens) + [True] * len(ids)))
    ids = history.act(step.action)
    tokens += ids
    loss += [label == step.action] * len(ids)
  if any(loss):
    out.append(_example(tokens, loss))
  return out


def examples(episodes: Iterable[Episode], tok: Tokenizer, fmt: Format, budget: int, reserve: int) -> list[Example]:
  return [x for e in episodes for x in episode_examples(e, tok, fmt, budget, reserve)]
