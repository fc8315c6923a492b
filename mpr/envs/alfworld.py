"""ALFWorld episodes, one game at a time, text in and text out, and the real engine behind them.

`EpisodeEnv` is the episode logic both engines share (step cap, results, an expert stepped
alongside); `AlfworldEnv` is the real TextWorld path, the specification that
`mpr.envs.fastworld.FastEnv` reproduces in process (`mpr.envs.engines.make_env` picks one). This is
the engine `AlfredTWEnv` builds (textworld's PddlEnv under alfworld's demangler and infos
wrappers), without gym's registration layer, so a worker process can load any game by path.

  env = AlfworldEnv(max_steps=50)
  goal, first = env.reset(game)
  res = env.step("go to desk 1")      # StepResult(observation, admissible, won, done, ...)
"""
from __future__ import annotations

import abc
import dataclasses
import re
from typing import Optional

from mpr.envs.games import GameSpec

_GOAL_RE = re.compile(r"Your task is to:\s*(.*?)\s*$", re.S)
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"


@dataclasses.dataclass(frozen=True)
class StepResult:
  observation: str
  admissible: tuple[str, ...]
  won: bool
  done: bool            # won, or the step cap was reached
  steps: int            # actions taken so far in this episode
  expert_action: Optional[str] = None   # set when the env was built with an expert


def split_intro(feedback: str) -> tuple[str, str]:
  """Splits the game's intro text into (goal, initial observation)."""
  text = feedback.replace(_BANNER, "").strip()
  m = _GOAL_RE.search(text)
  if not m:
    raise ValueError(f"game intro has no 'Your task is to:' line: {text[:200]!r}")
  return m.group(1), text[:m.start()].strip()


class EpisodeEnv(abc.ABC):
  """What both engines share: the episode's step count and cap, its results, and an optional expert.

  `expert`, when given (an `mpr.envs.experts` name), is stepped alongside the game and its next
  action is returned in every StepResult. A subclass provides `_start(game)` and `_advance(action)`,
  each returning the engine's state: a mapping with at least "feedback", "admissible_commands",
  "won" and "extra.walkthrough" (and "facts" when the exploring expert reads it).
  """

  def __init__(self, max_steps: int, expert: Optional[str]):
    self.max_steps = max_steps
    self._expert = None
    if expert is not None:
      from mpr.envs import experts
      self._expert = experts.make(expert)
    self.state = None
    self._steps = 0
    self.game: Optional[GameSpec] = None

  @abc.abstractmethod
  def _start(self, game: GameSpec):
    """Loads and resets `game`; returns the engine's state."""

  @abc.abstractmethod
  def _advance(self, action: str):
    """Plays `action`; returns the engine's state after it."""

  def reset(self, game: GameSpec) -> tuple[str, StepResult]:
    """Starts `game`; returns (goal, first StepResult with the initial observation)."""
    self.state = self._start(game)
    self.game = game
    self._steps = 0
    goal, obs = split_intro(self.state["feedback"])
    expert_action = None if self._expert is None else self._expert.reset(self.state, game)
    return goal, self._result(obs, expert_action)

  def step(self, action: str) -> StepResult:
    if self.state is None:
      raise RuntimeError("step() before reset()")
    self.state = self._advance(action)
    self._steps += 1
    expert_action = None if self._expert is None else self._expert.act(self.state, action)
    return self._result(self.state["feedback"].strip(), expert_action)

  @property
  def walkthrough(self) -> list[str]:
    return list(self.state["extra.walkthrough"] or [])

  def _result(self, obs: str, expert_action: Optional[str]) -> StepResult:
    won = bool(self.state["won"])
    return StepResult(observation=obs, admissible=tuple(self.state["admissible_commands"]), won=won,
                      done=won or self._steps >= self.max_steps, steps=self._steps,
                      expert_action=expert_action)


class AlfworldEnv(EpisodeEnv):
  """One ALFWorld game at a time on the real TextWorld PDDL engine."""

  def __init__(self, max_steps: int = 50, expert: Optional[str] = None):
    # Imported here so that importing mpr.envs stays cheap for processes that never play.
    import textworld
    from textworld.envs.pddl import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    super().__init__(max_steps, expert)
    # Facts cost the engine a conversion per step; only the exploring expert reads them.
    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=expert is not None,
                               extras=["gamefile", "walkthrough"])
    self._tw = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
    self._loaded: Optional[str] = None

  def _start(self, game: GameSpec):
    if self._loaded != game.path:
      self._tw.load(game.path)
      self._loaded = game.path
    return self._tw.reset()

  def _advance(self, action: str):
    state, _, _ = self._tw.step(action)
    return state
