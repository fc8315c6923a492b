"""Experts on real ALFWorld games: they win every task type, deterministically, and the fixes matter.

Why these tests: the experts make the behaviour-cloning data, so an expert that loses, stalls or
varies between runs silently corrupts every later stage. The games are, per task type, the two
smallest game files of valid_seen (small rooms load and step fastest), played by both experts in a
spawn pool: each worker is a fresh interpreter with its own hash seed, so comparing its actions
with a replay here also checks that nothing depends on set or dict-of-hash ordering.
"""
from __future__ import annotations

import multiprocessing
import os
import random

import pytest

from mpr.envs import AlfworldEnv, GameSpec
from mpr.envs import experts
from mpr.envs.games import TASK_TYPES
from mpr.errors import UserError

MAX_STEPS = 50
GAMES_PER_TASK = 2
# A pick_two game on which alfworld's own expert, as alfworld drives it, fails with random.seed(0)
# (and with 3 of seeds 1-4: its random fallback occasionally stumbles onto a win).
UNFIXED_FAILS = "pick_two_obj_and_place-SprayBottle-None-Toilet-429/trial_T20190907_033843_707544"


def _play(game: GameSpec, expert: str) -> tuple[bool, list[str], bool]:
  """(won, actions, every action was admissible when proposed) for one episode."""
  env = AlfworldEnv(max_steps=MAX_STEPS, expert=expert)
  _, res = env.reset(game)
  actions, admissible = [], True
  while not res.done:
    admissible &= res.expert_action in res.admissible
    actions.append(res.expert_action)
    res = env.step(res.expert_action)
  return res.won, actions, admissible


@pytest.fixture(scope="module")
def games(valid_seen: list[GameSpec]) -> list[GameSpec]:
  picked = []
  for task in TASK_TYPES:
    of_task = sorted((g for g in valid_seen if g.task_type == task), key=lambda g: os.path.getsize(g.path))
    picked += of_task[:GAMES_PER_TASK]
  return picked


@pytest.fixture(scope="module")
def episodes(games: list[GameSpec]) -> dict[tuple[str, str], tuple[bool, list[str], bool]]:
  jobs = [(g, e) for g in games for e in experts.EXPERT_NAMES]
  with multiprocessing.get_context("spawn").Pool(2) as pool:
    results = pool.starmap(_play, jobs, chunksize=1)
  return {(g.game_id, e): r for (g, e), r in zip(jobs, results)}


@pytest.mark.parametrize("expert", experts.EXPERT_NAMES)
def test_expert_wins_every_task_type(expert, games, episodes):
  lost = [g.game_id for g in games if not episodes[g.game_id, expert][0]]
  assert not lost, f"{expert} lost {lost}"
  assert {g.task_type for g in games} == set(TASK_TYPES)
  inadmissible = [g.game_id for g in games if not episodes[g.game_id, expert][2]]
  assert not inadmissible, f"{expert} proposed inadmissible actions in {inadmissible}"


def test_walkthrough_expert_replays_the_stored_walkthrough(games, episodes):
  env = AlfworldEnv(max_steps=MAX_STEPS)
  game = games[0]
  env.reset(game)
  assert episodes[game.game_id, "walkthrough"][1] == env.walkthrough


def test_exploring_expert_searches(games, episodes):
  # The point of this expert: it does not walk straight to the objects like the walkthrough.
  longer = [g for g in games
            if len(episodes[g.game_id, "exploring"][1]) > len(episodes[g.game_id, "walkthrough"][1])]
  assert len(longer) >= len(games) // 2
  opened = [a for g in games for a in episodes[g.game_id, "exploring"][1] if a.startswith("open ")]
  assert opened


def test_exploring_expert_is_deterministic(games, episodes):
  pick_two = next(g for g in games if g.task_type == "pick_two_obj_and_place")
  env = AlfworldEnv(max_steps=MAX_STEPS, expert="exploring")
  runs = []
  for _ in range(2):   # the second reset also checks that the expert keeps no state across games
    _, res = env.reset(pick_two)
    actions = []
    while not res.done:
      actions.append(res.expert_action)
      res = env.step(res.expert_action)
    runs.append(actions)
  assert runs[0] == runs[1] == episodes[pick_two.game_id, "exploring"][1]


def test_real_unfixed_alfworld_expert_fails_pick_two_that_ours_wins(valid_seen, real_games):
  import textworld
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos
  from textworld.envs.pddl import PddlEnv

  game = next(g for g in valid_seen if g.game_id == UNFIXED_FAILS)
  # alfworld's own driver: it requests the facts and proposes "look" for inadmissible actions.
  infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
  upstream = AlfredExpert(AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False)),
                          expert_type="handcoded")
  upstream.load(game.path)
  rng_state = random.getstate()
  random.seed(0)   # its fallback when stuck is a random admissible command
  try:
    state, steps, first_move = upstream.reset(), 0, None
    while not state["won"] and steps < MAX_STEPS:
      action = state["extra.expert_plan"][0]
      state, _, _ = upstream.step(action)
      steps += 1
      if first_move is None and action.startswith("move ") and "Nothing happens" not in state.feedback:
        placed = action[len("move "):].split(" to ")[0]
        first_move = (placed, list(upstream._handcoded_expert.policy.inventory))
  finally:
    random.setstate(rng_state)
  # The bug: after "move X to Y" upstream still believes it holds X (it looks for "put").
  placed, believed_inventory = first_move
  assert believed_inventory == [placed]
  assert not state["won"]

  won, actions, _ = _play(game, "exploring")
  assert won and len(actions) < MAX_STEPS
  assert sum(a.startswith("move ") for a in actions) == 2


def test_exploring_expert_recovers_when_its_policy_fails(games, monkeypatch):
  calls = {"n": 0}
  update = experts._PolicyFixes.update_state_tracking

  def flaky_update(self, game_state, last_action):
    calls["n"] += 1
    if calls["n"] in (3, 6):   # once while searching, once while carrying the first object
      raise IndexError("injected")
    return update(self, game_state, last_action)

  monkeypatch.setattr(experts._PolicyFixes, "update_state_tracking", flaky_update)
  pick_two = next(g for g in games if g.task_type == "pick_two_obj_and_place")
  won, actions, admissible = _play(pick_two, "exploring")
  assert calls["n"] > 6
  assert won and admissible


def test_walkthrough_expert_idles_off_the_walkthrough():
  plan = ["go to desk 1", "take pen 1 from desk 1"]
  state = {"extra.walkthrough": plan}
  expert = experts.make("walkthrough")
  assert expert.reset(state, None) == plan[0]
  assert expert.act(state, plan[0]) == plan[1]
  assert expert.act(state, plan[1]) == experts.IDLE_ACTION        # exhausted
  expert.reset(state, None)
  assert expert.act(state, "go to bed 1") == experts.IDLE_ACTION  # deviated...
  assert expert.act(state, plan[0]) == experts.IDLE_ACTION        # ...and stays off it


def test_unknown_expert_is_a_user_error():
  with pytest.raises(UserError, match="unknown expert 'oracle'") as e:
    experts.make("oracle")
  assert "\n" not in str(e.value)
