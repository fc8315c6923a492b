"""Episodes → training sequences for behaviour cloning, seen exactly as the agent would see them.

Each episode is replayed through a History with the agent's format and budget, so a training
context is token for token the context the policy meets when acting (same pieces, same trims).
An Example is one token sequence with a mask over the action tokens to be learned.

The label of a step is the expert's command: `step.expert_action` when the episode was
played by the policy with an expert watching (DAgger), else the command taken (expert demos).
Where the two differ, the taken command stays in the context (it is what happened next) and the
expert's is learned in a branch: a separate example of the context up to that step plus the
expert's command. `max_branches` keeps only an episode's first disagreements: a policy that is lost
disagrees at nearly every step of its loops, and those near-copies would outnumber the first,
informative mistake (in the tiny policy's DAgger rollouts, 27 per lost episode against 2 per won one).
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


def episode_examples(episode: Episode, tok: Tokenizer, fmt: Format, budget: int, reserve: int,
                     max_branches: int = 0) -> list[Example]:
  """The episode's examples; `max_branches` > 0 keeps only its first that many branches."""
  out: list[Example] = []
  branches = 0
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
    label = step.expert_action or step.action
    if label != step.action and label in step.admissible and (max_branches <= 0 or branches < max_branches):
      branches += 1
      ids = history.action_tokens(label)
      out.append(_example(tokens + ids, [False] * len(tokens) + [True] * len(ids)))
    ids = history.act(step.action)
    tokens += ids
    loss += [label == step.action] * len(ids)
  if any(loss):
    out.append(_example(tokens, loss))
  return out


def examples(episodes: Iterable[Episode], tok: Tokenizer, fmt: Format, budget: int, reserve: int,
             max_branches: int = 0) -> list[Example]:
  return [x for e in episodes for x in episode_examples(e, tok, fmt, budget, reserve, max_branches)]
