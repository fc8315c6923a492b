"""A typed wrapper over alfworld's TextWorld path: one game at a time, text in and text out.

This is the engine `AlfredTWEnv` builds (textworld's PddlEnv under alfworld's demangler and infos
wrappers), without gym's registration layer, so a worker process can load any game by path.

  env = AlfworldEnv(max_steps=50)
  goal, obs, admissible = env.reset(game)
  res = env.step("go to desk 1")      # StepResult(observation, admissible, won, done, ...)
"""
from __future__ import annotations

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


class AlfworldEnv:
  """One ALFWorld game at a time on the real TextWorld PDDL engine.

  `expert`, when given (an `mpr.envs.experts` name), is stepped alongside the game and its next
  action is returned in every StepResult: experts need the engine's facts, which live here.
  """

  def __init__(self, max_steps: int = 50, expert: Optional[str] = None):
    # Imported here so that importing mpr.envs stays cheap for processes that never play.
    import textworld
    from textworld.envs.pddl import PddlEnv
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    self.max_steps = max_steps
    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=expert is not None,
                               extras=["gamefile", "walkthrough"])
    self._tw = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
    self._expert = None
    if expert is not None:
      from mpr.envs import experts
      self._expert = experts.make(expert)
    self._loaded: Optional[str] = None
    self._state = None
    self._steps = 0
    self.game: Optional[GameSpec] = None

  def reset(self, game: GameSpec) -> tuple[str, StepResult]:
    """Starts `game`; returns (goal, first StepResult with the initial observation)."""
    if self._loaded != game.path:
      self._tw.load(game.path)
      self._loaded = game.path
    self.game = game
    self._state = self._tw.reset()
    self._steps = 0
    goal, obs = split_intro(self._state.feedback)
    expert_action = None
    if self._expert is not None:
      expert_action = self._expert.reset(self._state, game)
    return goal, self._result(obs, expert_action)

  def step(self, action: str) -> StepResult:
    if self._state is None:
      raise RuntimeError("step() before reset()")
    self._state, _, _ = self._tw.step(action)
    self._steps += 1
    expert_action = None
    if self._expert is not None:
      expert_action = self._expert.act(self._state, action)
    return self._result(self._state.feedback.strip(), expert_action)

  @property
  def walkthrough(self) -> list[str]:
    return list(self._state["extra.walkthrough"] or [])

  def _result(self, obs: str, expert_action: Optional[str]) -> StepResult:
    won = bool(self._state["won"])
    return StepResult(observation=obs, admissible=tuple(self._state["admissible_commands"]), won=won,
                      done=won or self._steps >= self.max_steps, steps=self._steps,
                      expert_action=expert_action)
