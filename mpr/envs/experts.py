"""Experts that play ALFWorld games to produce demonstrations for behaviour cloning.

  walkthrough  replays the solution stored with the game. Shortest, but it knows where everything
               is, so its demonstrations never search.
  exploring    alfworld's hand-coded TextWorld expert (`HandCodedTWAgent`): it looks for things by
               visiting and opening receptacles, which is the behaviour the agents should learn.
               alfworld 0.4.2 ships it with bugs that leave it stuck or out of steps on many games;
               `_PolicyFixes` and `_PickTwoFixes` repair them by overriding its methods.

`AlfworldEnv` drives both: `reset(state, game)` returns the first action, `act(state, last_action)`
the next one, where `state` is the textworld GameState after that action. Both are deterministic
(same game, same actions) and never raise out of `act`: an expert with nothing to offer proposes
IDLE_ACTION.
"""
from __future__ import annotations

from typing import Optional

from alfworld.agents.expert.handcoded_expert import PickTwoObjAndPlacePolicy
from alfworld.agents.expert.handcoded_expert_tw import HandCodedTWAgent

from mpr.envs.games import GameSpec
from mpr.errors import UserError

# Always admissible and changes nothing: what an expert proposes when it has no useful action.
IDLE_ACTION = "look"

# The env enforces the episode's step cap; the policy's own cap would only turn long episodes
# (or a learner's detours, when the expert labels someone else's trajectory) into exceptions.
_POLICY_MAX_STEPS = 10**9


class WalkthroughExpert:
  """Replays `extra.walkthrough`, the solution stored with the game.

  The walkthrough solves the game only from its initial state and only when followed exactly, so
  once it is exhausted, or from the first executed action that differs from the proposed one, this
  expert proposes IDLE_ACTION for the rest of the episode rather than a step that may be wrong.
  """

  def __init__(self):
    self._plan: list[str] = []
    self._next = 0
    self._on_track = True

  def reset(self, state, game: GameSpec) -> str:
    self._plan = list(state["extra.walkthrough"] or [])
    self._next = 0
    self._on_track = True
    return self._proposal()

  def act(self, state, last_action: str) -> str:
    if self._on_track and self._next < len(self._plan) and last_action == self._plan[self._next]:
      self._next += 1
    else:
      self._on_track = False
    return self._proposal()

  def _proposal(self) -> str:
    if self._on_track and self._next < len(self._plan):
      return self._plan[self._next]
    return IDLE_ACTION


class _PolicyFixes:
  """Mixed in before one of alfworld's TextWorld task policies (`...TWPolicy`) to fix its bugs."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    # Where each object was last seen. The policy remembers one receptacle per object class and
    # forgets it once it takes or places an object of that class (see blacklist_obj).
    self._last_seen: dict[str, str] = {}
    # Receptacles whose contents it has seen. Upstream plans each search from scratch, so the
    # second object of pick_two is looked for first where the first search already found nothing.
    self._looked_in: set[str] = set()

  def update_state_tracking(self, game_state, last_action):
    # Receptacles that share a location (a desk and its drawers, a row of stove burners) cannot
    # be gone to from each other, only examined; `_next_action` turns such a "go to" into
    # "examine", which counts as arriving there.
    if last_action.startswith("examine "):
      target = last_action[len("examine "):]
      if target in self.receptacles and target != self.curr_recep:
        last_action = "go to " + target
    super().update_state_tracking(game_state, last_action)
    # The backlog holds "close X" for receptacles opened while searching. An entry outlives the
    # visit when the object was found inside, and popping it elsewhere is inadmissible.
    self.action_backlog = [a for a in self.action_backlog if a == "close " + self.curr_recep]
    if self.checked_inside_curr_recep and "you see" in game_state["feedback"]:
      self._looked_in.add(self.curr_recep)
    # The upstream bookkeeping looks for "put" in the action, but the grammar says
    # "move X to Y": without this the policy believes it still holds what it placed, which
    # breaks every task that continues after a placement (pick_two_obj_and_place).
    if (last_action.startswith("move ") and "Nothing happens" not in game_state["feedback"]
        and self.inventory):
      placed = self.inventory.pop()
      self.got_inventory_from_recep = ""
      self.blacklist_obj(placed)
      if self.object_id_to_cls(placed) == self.task_params["object_target"]:
        self.object_blacklist.append(placed)

  def observe(self, obs):
    before = self.visible_objects
    super().observe(obs)
    # Upstream replaces `visible_objects` only when `obs` lists what is at a receptacle; otherwise
    # it keeps the previous listing, which must not be recorded again under a newer location.
    if self.visible_objects is not before:
      for obj, cls in self.visible_objects.items():
        self._last_seen[obj] = self.obj_cls_to_receptacle_map[cls]

  def blacklist_obj(self, obj):
    super().blacklist_obj(obj)
    self._last_seen.pop(obj, None)
    # Upstream drops the class's location too, so after placing the first of two books it
    # searches the room again although it saw the second one. Point it at another copy instead.
    cls = self.object_id_to_cls(obj)
    for other, recep in self._last_seen.items():
      if (self.object_id_to_cls(other) == cls and other not in self.object_blacklist
          and other not in self.inventory):
        self.obj_cls_to_receptacle_map[cls] = recep
        break

  def get_next_subgoal(self):
    # Upstream picks among the visible candidates with the global `random`; the first one listed
    # is as good a choice and makes the expert deterministic.
    action, param, candidates = super().get_next_subgoal()
    return action, param, candidates[:1]

  def get_list_of_receptacles_to_search_for_object_cls(self, obj_cls):
    return self._search_order(obj_cls)

  def get_list_of_receptacles_of_type(self, recep_cls):
    # Mugs, cups, bowls, pans, pots, plates and boxes are receptacle classes too, so upstream
    # searches for them as for a fixed receptacle: it finds none and sweeps the whole room in
    # listing order, ignoring where such objects are usually kept.
    if recep_cls == self.task_params["object_target"]:
      return self._search_order(recep_cls)
    return super().get_list_of_receptacles_of_type(recep_cls)

  def _search_order(self, obj_cls: str) -> list[str]:
    """Every receptacle, in the reverse of the order to search them (the policy pops from the end).

    Unsearched receptacles before those already looked into (objects only move when the agent
    moves them); then, as upstream, receptacles that can hold the object class before the rest;
    then those that need no opening, since looking there costs one step instead of three (go,
    open, close); ties in upstream's order. Upstream searches rooms with a dozen drawers and
    cabinets drawer by drawer, which takes most of a 50-step episode.
    """
    likely = set(self.OBJECT_TO_VAL_RECEPTACLE.get(obj_cls, ()))
    upstream_order = list(reversed(self.receptacles))
    search = sorted(upstream_order, key=lambda r: (r in self._looked_in, self.receptacles[r] not in likely,
                                                   self.receptacles[r] in self.OPENABLE_OBJECTS))
    return search[::-1]


class _PickTwoFixes:
  """Mixed in before alfworld's pick_two policy (after `_PolicyFixes`)."""

  def get_predicates(self, game_state, obj, parent):
    at_right_recep, can_put, can_take, _, one_inside, _ = super().get_predicates(game_state, obj, parent)
    # Upstream refuses to take a second object wherever taking the placed one is admissible,
    # i.e. anywhere at the parent's location, and then loops on "examine". With placements
    # tracked, the placed object is blacklisted out of `visible_objects`, so "is a candidate in
    # view" is exactly the test it needs and the other guard can go.
    candidate_in_view = any(cls == obj for cls in self.visible_objects.values())
    return at_right_recep, can_put, can_take, candidate_in_view, one_inside, False


class _FixedHandCodedTWAgent(HandCodedTWAgent):
  """`HandCodedTWAgent` whose task policies carry the fixes above."""

  def get_task_policy(self, task_param):
    base = super().get_task_policy(task_param)
    fixes = (_PolicyFixes, _PickTwoFixes) if issubclass(base, PickTwoObjAndPlacePolicy) else (_PolicyFixes,)
    return type("Fixed" + base.__name__, fixes + (base,), {})


class ExploringExpert:
  """alfworld's hand-coded expert with its bugs fixed, driven as alfworld's `AlfredExpert` does.

  Differences from `AlfredExpert`: the first action comes from the intro state instead of a
  "look"; a "go to" to a receptacle at the agent's own location (inadmissible) becomes "examine";
  and when the policy raises, repeats its last action or proposes an inadmissible one, this expert
  does not pick a random admissible command but rebuilds the policy from the game's facts
  (`_rebuilt_policy`) and asks again, falling back to IDLE_ACTION. It reads the engine's facts
  (`state["facts"]`), which AlfworldEnv requests whenever it is given an expert.
  """

  def __init__(self):
    self._agent = _FixedHandCodedTWAgent(max_steps=_POLICY_MAX_STEPS)
    self._intro = ""

  def reset(self, state, game: GameSpec) -> str:
    # Reads the task parameters from the traj_data.json next to the game file.
    self._agent.reset(game.path)
    self._intro = state["feedback"]
    self._agent.observe(self._intro)
    # The intro state is a valid observation for the policy; "look" is what it has "done" so far.
    return self.act(state, IDLE_ACTION)

  def act(self, state, last_action: str) -> str:
    if state["won"]:
      return IDLE_ACTION
    action = self._next_action(self._agent.policy, state, last_action)
    if action is None:
      self._agent.policy = self._rebuilt_policy(state)
      action = self._next_action(self._agent.policy, state, IDLE_ACTION)
    return action if action is not None and action != last_action else IDLE_ACTION

  def _next_action(self, policy, state, last_action: str) -> Optional[str]:
    """The policy's next action if the game accepts it and it is not a repeat, else None."""
    try:
      action = policy.act(state, last_action)
    except Exception:  # its bookkeeping raises (IndexError, KeyError, ...) when it loses track
      return None
    admissible = state["admissible_commands"]
    if action.startswith("go to ") and action not in admissible:
      examine = "examine " + action[len("go to "):]
      if examine in admissible:
        action = examine
    if action == last_action or action not in admissible:
      return None
    return action

  def _rebuilt_policy(self, state):
    """A fresh policy whose memory comes from the game's facts instead of its own bookkeeping.

    Planner-free recovery: the receptacles from the intro, the agent's receptacle (`atlocation`
    and `receptacleatlocation`), the held object (`holds`) and the target objects already in a
    parent receptacle (`inreceptacle`); what it has seen elsewhere is forgotten and searched anew.
    """
    params = self._agent.task_params
    policy = self._agent.get_task_policy(params)(params, max_steps=_POLICY_MAX_STEPS)
    policy.observe(self._intro)
    facts = [(p.name, [n.strip() for n in p.names]) for p in state["facts"]]
    here = next((args[1] for name, args in facts if name == "atlocation"), None)
    at_here = {args[0] for name, args in facts if name == "receptacleatlocation" and args[1] == here}
    policy.curr_recep = next((r for r in policy.receptacles if r in at_here), "")
    policy.inventory = [args[1] for name, args in facts if name == "holds"][:1]
    # Where a wrongly held object goes back to: here is as good as anywhere.
    policy.got_inventory_from_recep = policy.curr_recep
    target, parent = params["object_target"], params["parent_target"]
    policy.object_blacklist = [
        args[0] for name, args in facts
        if name == "inreceptacle" and policy.object_id_to_cls(args[0]) == target
        and policy.receptacles.get(args[1]) == parent]
    return policy


_EXPERTS = {"walkthrough": WalkthroughExpert, "exploring": ExploringExpert}
EXPERT_NAMES = tuple(_EXPERTS)


def check_name(name: str) -> None:
  """Raises UserError unless `name` is an expert, so callers can validate before building one."""
  if name not in _EXPERTS:
    raise UserError(f"unknown expert {name!r}; known experts: {', '.join(EXPERT_NAMES)}")


def make(name: str):
  """A fresh expert by name (one of EXPERT_NAMES)."""
  check_name(name)
  return _EXPERTS[name]()
