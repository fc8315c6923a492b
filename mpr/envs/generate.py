"""Offline ALFWorld games: TextWorld PDDL games built from the data the `alfworld` wheel ships.

Why: the released games come from `alfworld-download`, which needs the internet, and only some splits
exist in an offline copy. Everything needed to build equivalent games is in the wheel: the PDDL
domain and grammar (`alfworld/data`), each ALFRED floor plan's receptacles with the pose an agent
takes to use them (`gen/layouts/FloorPlanN-openable.json`), the object types of each scene
(`FloorPlanN-objects.json`), its navigable points (`FloorPlanN-layout.npy`), which object fits which
receptacle (`gen/constants.py`) and the goal PDDL and goal sentences of each task (`gen/goal_library.py`).

A game is one of the six task types alfworld's TextWorld path plays, in a real floor plan with all
its receptacles, and with every object type of the scene present (one to three of each) in random
compatible receptacles, closed ones included: the size and clutter of a released game. Scenery no
command can reach (windows, light switches) is left out. Ids, locations, facts and goal follow the
released games' conventions, so alfworld's demangler names things "cabinet 3" and the games read
like the real ones.

Every game is checked before it is kept: fast-downward (the planner textworld's PddlEnv replans
with) plans it, the plan is replayed on the game file itself (on FastEnv, exact to TextWorld) and
must win, and it is stored as the game's walkthrough. Games whose plan fails or exceeds
MAX_PLAN_STEPS are resampled. The planner gets the task's sub-problem: the target (and lamp) objects,
the receptacles they start in, the tool, and the goal receptacles that could save a walk. Its search
grows steeply with the receptacles in view (a minute on a large kitchen, 0.03 s on the sub-problem);
the sub-problem's optimal plan is optimal in the full game because goals name only target-type
objects, receptacles never fill up and every walk costs the same. Its PDDL ids are then renamed
with alfworld's demangler over the full game ("cabinet 3"), and the replay proves the result.

Game i of (split, seed) depends only on (split, seed, i): generating N then N+M games gives the
same first N. Task types take turns by index, so any six consecutive games cover all six.

  python -m mpr.envs.generate OUT_DIR --split valid_seen --num-games 140 --seed 0
writes OUT_DIR/json_2.1.1/<split>/<task>-<Object>-None-<Parent or DeskLamp>-<scene>/trial_G<seed>_<index>/
{game.tw-pddl, traj_data.json}, the layout `mpr.envs.games.find_games` reads.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import re
import sys
import tempfile
import zlib
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np

from mpr.envs.games import (COMPLETE_MARKER, GENERATED_SPLIT_SIZES, TASK_TYPES, GameSpec, generated_marker,
                            split_dir)
from mpr.errors import UserError

MAX_PLAN_STEPS = 40
MAX_ATTEMPTS = 50
# Bump when generated games change: each version has its own cache folder (games.generated_data_dir),
# and ensure_split refuses a folder that another version made.
GENERATOR_VERSION = 2

# valid_unseen's floor plans, and ones no seen split uses (ALFRED's held-out test scenes).
UNSEEN_SCENES = frozenset({10, 219, 308, 424})
HELD_OUT_SCENES = frozenset({9, 29, 215, 226, 315, 325, 404, 425})

# Receptacle types the released games use as the goal's parent, per task family.
PARENT_TYPES = frozenset({
    "ArmChair", "Bed", "Cabinet", "Cart", "CoffeeMachine", "CoffeeTable", "CounterTop", "Desk",
    "DiningTable", "Drawer", "Dresser", "Fridge", "GarbageCan", "Microwave", "Ottoman", "Safe", "Shelf",
    "SideTable", "Sofa", "StoveBurner", "Toilet", "ToiletPaperHanger"})

# (receptacle type that does the job, constants.VAL_ACTION_OBJECTS key of the objects it takes).
TOOLS = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable"),
}

# Fixed objects the released games show on receptacles; constants has no table for them.
DECOR_RECEPTACLES = {
    "DeskLamp": frozenset({"Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable"}),
    "HousePlant": frozenset({"CounterTop", "SideTable", "DiningTable", "Shelf", "Dresser", "CoffeeTable",
                             "Desk", "TVStand"}),
    "Television": frozenset({"Dresser", "TVStand", "CoffeeTable", "SideTable"}),
}
TOGGLE = "DeskLamp"

# How many instances of a receptacle type to add when a scene has it but openable.json has no pose.
SYNTHESIZED_COUNTS = {"StoveBurner": 4, "Cabinet": 3, "Drawer": 3, "Shelf": 2}
# Instances per object type, as often as in the released games (1: 55%, 2: 27%, 3+: 18%).
INSTANCE_COUNTS = (1, 2, 3)
INSTANCE_PROBS = (0.55, 0.27, 0.18)
GRID = 0.25          # metres per navigation step, the unit of `loc|x|z|rot|horizon`
HORIZON = 30

_TRIAL_RE = re.compile(r"^trial_G(\d+)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Receptacle:
  id: str                          # THOR object id, e.g. "Cabinet|+00.68|+00.50|-02.20"
  rtype: str
  loc: tuple[int, int, int, int]   # where the agent stands to use it: grid x, grid z, rotation/90, horizon


@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  otype: str
  receptacle: Receptacle


@dataclasses.dataclass(frozen=True)
class Scene:
  num: int
  kind: str                        # Kitchen, LivingRoom, Bedroom or Bathroom
  object_types: frozenset[str]     # placeable types present: pickupable ones and decor
  receptacles: tuple[Receptacle, ...]
  floor: tuple[tuple[float, float], ...]   # navigable (x, z) points in metres


@dataclasses.dataclass(frozen=True)
class Task:
  task_type: str
  scene: Scene
  target: str
  parent: str                      # "" for look_at_obj_in_light
  toggle: str                      # "" unless look_at_obj_in_light


# ---------------------------------------------------------------------------------------------
# alfworld's data

@functools.lru_cache(maxsize=None)
def _alfworld():
  """alfworld's constants and goal library, imported on first use (the package is heavy)."""
  from alfworld.gen import constants, goal_library
  return constants, goal_library


def _layouts_dir() -> str:
  constants, _ = _alfworld()
  return os.path.join(os.path.dirname(constants.__file__), "layouts")


@functools.lru_cache(maxsize=None)
def _logic() -> tuple[str, str]:
  """(PDDL domain, grammar) as shipped in the wheel; the grammar's goal slot is 'UNKNOWN GOAL'."""
  from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH
  with open(ALFRED_PDDL_PATH) as f, open(ALFRED_TWL2_PATH) as g:
    return f.read(), g.read()


@functools.lru_cache(maxsize=None)
def _static_receptacle_types() -> frozenset[str]:
  constants, _ = _alfworld()
  return frozenset(constants.RECEPTACLES - constants.MOVABLE_RECEPTACLES_SET)


@functools.lru_cache(maxsize=None)
def _pickupable_types() -> frozenset[str]:
  """Object types some receptacle accepts (sliced ones aside): the pickupable objects a game places."""
  constants, _ = _alfworld()
  accepted = set().union(*constants.VAL_RECEPTACLE_OBJECTS.values())
  return frozenset(t for t in accepted if not t.endswith("Sliced"))


def _fits(otype: str, rtype: str) -> bool:
  constants, _ = _alfworld()
  if otype in DECOR_RECEPTACLES:
    return rtype in DECOR_RECEPTACLES[otype]
  return otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ())


def _scene_kind(num: int) -> str:
  constants, _ = _alfworld()
  return next(kind for kind, nums in constants.SCENE_TYPE.items() if num in nums)


# ---------------------------------------------------------------------------------------------
# Scenes

def thor_id(otype: str, xyz: Sequence[float], suffix: str = "") -> str:
  """THOR's object id format, e.g. 'Mug|+01.51|+01.26|-00.02'."""
  return "|".join([otype] + [f"{v:+06.2f}" for v in xyz]) + (f"|{suffix}" if suffix else "")


def pddl_name(text: str) -> str:
  """The released games' escaping of THOR ids and locations into PDDL names."""
  for char, word in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
    text = text.replace(char, word)
  return text


def _loc_name(loc: tuple[int, int, int, int]) -> str:
  return pddl_name("loc|%d|%d|%d|%d" % loc)


def _id_xyz(thor: str) -> np.ndarray:
  return np.array([float(v) for v in thor.split("|")[1:4]])


def _rtype_of(thor: str) -> str:
  parts = thor.split("|")
  return parts[-1] if parts[-1].endswith("Basin") else parts[0]


def _pose_loc(x: float, z: float, rotation: float, horizon: float) -> tuple[int, int, int, int]:
  return (int(round(x / GRID)), int(round(z / GRID)), int(round(rotation / 90)) % 4, int(horizon))


def _synthesize(rng: np.random.Generator, rtype: str, floor: Sequence[tuple[float, float]]) -> list[Receptacle]:
  """Instances of a receptacle type the scene has but openable.json gives no pose for (stoves,
  toasters, towel holders...): placed half a metre in front of a random navigable point."""
  x, z = floor[rng.integers(len(floor))]
  rot = int(rng.integers(4))
  facing = np.array([np.sin(rot * np.pi / 2), 0.0, np.cos(rot * np.pi / 2)])   # THOR: 0 faces +z
  centre = np.array([x, rng.uniform(0.0, 1.2), z]) + 0.5 * facing
  prefix, suffix = {"SinkBasin": ("Sink", "SinkBasin"), "BathtubBasin": ("Bathtub", "BathtubBasin")}.get(
      rtype, (rtype, ""))
  n = SYNTHESIZED_COUNTS.get(rtype, 1)
  side = np.array([facing[2], 0.0, -facing[0]])
  # Side by side across the agent's view, like burners on a stove; all used from the same spot.
  return [Receptacle(thor_id(prefix, centre + (k - (n - 1) / 2) * 0.3 * side, suffix), rtype,
                     _pose_loc(x, z, rot * 90, HORIZON)) for k in range(n)]


@functools.lru_cache(maxsize=None)
def load_scene(num: int) -> Scene:
  """FloorPlan `num` with all its receptacles; fixed per floor plan, as in the released games."""
  base = os.path.join(_layouts_dir(), f"FloorPlan{num}")
  with open(base + "-objects.json") as f:
    types = set(json.load(f))
  with open(base + "-openable.json") as f:
    poses = json.load(f)
  floor = tuple(map(tuple, np.load(base + "-layout.npy").tolist()))
  static = _static_receptacle_types()
  receptacles = [Receptacle(thor, _rtype_of(thor), _pose_loc(*pose)) for thor, pose in sorted(poses.items())
                 if _rtype_of(thor) in static]
  rng = np.random.default_rng(num)
  posed = {r.rtype for r in receptacles}
  for rtype in sorted((types & static) - posed):
    receptacles.extend(_synthesize(rng, rtype, floor))
  present = {r.rtype for r in receptacles}
  placeable = {t for t in types if (t in _pickupable_types() or t in DECOR_RECEPTACLES)
               and any(_fits(t, rt) for rt in present)}
  return Scene(num, _scene_kind(num), frozenset(placeable), tuple(receptacles), floor)


def _check_split(split: str) -> None:
  if split not in GENERATED_SPLIT_SIZES:
    raise UserError(f"unknown split {split!r}; generated splits: {sorted(GENERATED_SPLIT_SIZES)}")


@functools.lru_cache(maxsize=None)
def split_scenes(split: str) -> tuple[int, ...]:
  """The floor plans a split draws from: ALFRED's unseen ones for valid_unseen, the seen ones otherwise."""
  _check_split(split)
  nums = sorted(int(m.group(1)) for m in map(re.compile(r"FloorPlan(\d+)-objects\.json$").match,
                                             os.listdir(_layouts_dir())) if m)
  if split == "valid_unseen":
    return tuple(n for n in nums if n in UNSEEN_SCENES)
  return tuple(n for n in nums if n not in UNSEEN_SCENES | HELD_OUT_SCENES)


# ---------------------------------------------------------------------------------------------
# Tasks

def _combos(task_type: str, scene: Scene) -> list[tuple[str, str]]:
  """(target type, parent type) pairs that make a sensible task of this type in this scene."""
  constants, _ = _alfworld()
  if scene.kind not in constants.GOALS_VALID[task_type]:
    return []
  rtypes = {r.rtype for r in scene.receptacles}
  targets = sorted(scene.object_types & _pickupable_types())
  if task_type == "look_at_obj_in_light":
    return [(t, "") for t in targets] if TOGGLE in scene.object_types else []
  tool, ability = TOOLS.get(task_type, (None, None))
  if tool is not None:
    if tool not in rtypes:
      return []
    targets = [t for t in targets if t in constants.VAL_ACTION_OBJECTS[ability]]
  parents = sorted((rtypes & PARENT_TYPES) - {tool})
  # The target must have somewhere to start that is not already a goal receptacle.
  return [(t, p) for t in targets for p in parents
          if _fits(t, p) and any(_fits(t, rt) for rt in rtypes - {p})]


@functools.lru_cache(maxsize=None)
def _task_options(split: str, task_type: str) -> tuple[tuple[int, tuple[tuple[str, str], ...]], ...]:
  options = ((num, tuple(_combos(task_type, load_scene(num)))) for num in split_scenes(split))
  return tuple((num, combos) for num, combos in options if combos)


def sample_task(rng: np.random.Generator, split: str, task_type: str) -> Task:
  """A uniformly drawn scene that supports the task, then a uniform (target, parent) pair in it."""
  options = _task_options(split, task_type)
  num, combos = options[rng.integers(len(options))]
  target, parent = combos[rng.integers(len(combos))]
  toggle = TOGGLE if task_type == "look_at_obj_in_light" else ""
  return Task(task_type, load_scene(num), target, parent, toggle)


def _count(rng: np.random.Generator, otype: str, task: Task) -> int:
  if otype in DECOR_RECEPTACLES:
    return 1
  if otype == task.target and task.task_type == "pick_two_obj_and_place":
    return int(rng.integers(2, 4))
  return int(rng.choice(INSTANCE_COUNTS, p=INSTANCE_PROBS))


def place_items(rng: np.random.Generator, task: Task) -> list[Item]:
  """Every placeable type of the scene, in random fitting receptacles; never a target in the goal's
  receptacle type, so no game starts won."""
  items, taken = [], set()
  for otype in sorted(task.scene.object_types):
    spots = [r for r in task.scene.receptacles if _fits(otype, r.rtype)
             and not (otype == task.target and r.rtype == task.parent)]
    for _ in range(_count(rng, otype, task)):
      receptacle = spots[rng.integers(len(spots))]
      while True:
        xyz = _id_xyz(receptacle.id) + rng.uniform([-0.25, 0.0, -0.25], [0.25, 0.1, 0.25])
        thor = thor_id(otype, xyz)
        if thor not in taken:
          break
      taken.add(thor)
      items.append(Item(thor, otype, receptacle))
  return items


def task_description(rng: np.random.Generator, task: Task) -> str:
  """The templated goal sentence alfworld writes into a game's grammar (misc.get_templated_task_desc)."""
  _, goal_library = _alfworld()
  templates = goal_library.gdict[task.task_type]["templates"]
  template = templates[rng.integers(len(templates))]
  return template.format(obj=task.target.lower(), recep=task.parent.lower(), toggle=task.toggle.lower(),
                         mrecep="")


def problem_pddl(name: str, receptacles: Sequence[Receptacle], items: Sequence[Item],
                 agent_loc: tuple[int, int, int, int], goal: str) -> str:
  """The PDDL problem in the released games' layout and fact order."""
  constants, _ = _alfworld()
  static = _static_receptacle_types()
  locs = sorted({r.loc for r in receptacles} | {agent_loc})
  ritems = [(pddl_name(r.id), r) for r in receptacles]
  oitems = [(pddl_name(i.id), i) for i in items]
  present_r = sorted({r.rtype for r in receptacles})
  present_o = sorted({i.otype for i in items} - set(DECOR_RECEPTACLES))

  def facts(pred: str, rows) -> list[str]:
    return [f"({pred} {' '.join(row)})" for row in rows]

  def able(ability: str) -> list[tuple[str]]:
    return [(n,) for n, i in oitems if i.otype in constants.VAL_ACTION_OBJECTS[ability]]

  init = (
      facts("receptacleType", [(n, r.rtype + "Type") for n, r in ritems])
      + facts("objectType", [(n, i.otype + "Type") for n, i in oitems])
      + facts("canContain", [(rt + "Type", ot + "Type") for rt in present_r for ot in present_o if _fits(ot, rt)])
      + facts("pickupable", [(n,) for n, i in oitems if i.otype in _pickupable_types()])
      + facts("isReceptacleObject", [(n,) for n, i in oitems if i.otype in constants.MOVABLE_RECEPTACLES_SET])
      + facts("openable", [(n,) for n, r in ritems if r.rtype in constants.OPENABLE_CLASS_SET])
      + facts("atLocation", [("agent1", _loc_name(agent_loc))])
      + facts("cleanable", able("Cleanable")) + facts("heatable", able("Heatable"))
      + facts("coolable", able("Coolable")) + facts("toggleable", able("Toggleable"))
      + facts("sliceable", able("Sliceable"))
      + facts("inReceptacle", [(n, pddl_name(i.receptacle.id)) for n, i in oitems])
      + facts("receptacleAtLocation", [(n, _loc_name(r.loc)) for n, r in ritems])
      + facts("objectAtLocation", [(n, _loc_name(i.receptacle.loc)) for n, i in oitems]))
  declarations = (["agent1 - agent"] + [f"{t}Type - otype" for t in sorted(constants.OBJECTS_SET - static)]
                  + [f"{t}Type - rtype" for t in sorted(static)] + [f"{n} - object" for n, _ in oitems]
                  + [f"{n} - receptacle" for n, _ in ritems] + [f"{_loc_name(l)} - location" for l in locs])
  sep = "\n        "
  return (f"\n(define (problem {name})\n(:domain alfred)\n(:objects\n{sep.join(declarations)}\n        )\n    \n\n"
          f"(:init\n\n{sep}{sep.join(init)}\n        )\n    \n{goal}")


def goal_pddl(task: Task) -> str:
  _, goal_library = _alfworld()
  return goal_library.gdict[task.task_type]["pddl"].replace("#", "-").format(
      obj=task.target, recep=task.parent, toggle=task.toggle)


def plan_receptacles(task: Task, items: Sequence[Item], agent_loc: tuple[int, int, int, int]) -> list[Receptacle]:
  """The receptacles some optimal plan uses: where target (and lamp) objects start, the tool, and of
  the goal's receptacle type those sharing a spot with these or the agent (no walk to them) plus one
  elsewhere (any other costs the same walk)."""
  tool = TOOLS.get(task.task_type, ("",))[0]
  needed = {i.receptacle for i in items if i.otype in (task.target, task.toggle)}
  needed |= {r for r in task.scene.receptacles if r.rtype == tool}
  spots = {r.loc for r in needed} | {agent_loc}
  parents = [r for r in task.scene.receptacles if r.rtype == task.parent]
  needed |= {r for r in parents if r.loc in spots} | set(parents[:1])
  return [r for r in task.scene.receptacles if r in needed]


# ---------------------------------------------------------------------------------------------
# Planning and checking

@functools.lru_cache(maxsize=None)
def _planner():
  """fast-downward and the parsed game logic, kept per process (loading the library copies it)."""
  import fast_downward
  from textworld.envs.pddl import logic
  domain, grammar = _logic()
  return fast_downward.load_lib(), logic.GameLogic(domain=domain, grammar=grammar)


@functools.lru_cache(maxsize=None)
def _player(engine: str):
  from mpr.envs.engines import make_env
  return make_env(engine, max_steps=MAX_PLAN_STEPS + 1)


def plan(problem: str) -> list[str]:
  """The plan textworld's PddlEnv replans with (fast-downward), naming things by PDDL id; [] if none."""
  from textworld.envs.pddl import logic
  lib, game_logic = _planner()
  state = logic.PddlState(lib, problem, game_logic)
  ids = {v.name for fact in state.facts for v in fact.arguments}
  return state.replan({i: SimpleNamespace(name=i) for i in ids})


def display_names(receptacles: Sequence[Receptacle], items: Sequence[Item]) -> dict[str, str]:
  """PDDL id (as the planner spells it) -> the name players see ("cabinet 3"), by alfworld's demangler.

  The demangler numbers the ids sharing a type name, so the full game's ids are needed here.
  """
  from alfworld.agents.utils.misc import Demangler
  ids = [pddl_name(x.id).lower() for x in (*receptacles, *items)]
  demangler = Demangler(game_infos={i: SimpleNamespace(id=i) for i in ids})
  return {i: demangler.demangle_alfred_name(i) for i in ids}


_temp_serial = itertools.count()


def replay_wins(game: dict, task_type: str, engine: str = "fast") -> bool:
  """Plays the game's walkthrough on its file: every step admissible, a win at the end only.

  On FastEnv by default (checked exact to TextWorld, and free of TextWorld's seconds-long load)."""
  with tempfile.TemporaryDirectory(prefix="mpr-generate-") as tmp:
    # A fresh path per game: both engines keep what they loaded by path.
    path = os.path.join(tmp, f"game{next(_temp_serial)}.tw-pddl")
    with open(path, "w") as f:
      json.dump(game, f)
    player = _player(engine)
    _, res = player.reset(GameSpec(path, "generated", task_type, "generated"))
    for command in game["walkthrough"]:
      if res.won or command not in res.admissible:
        return False
      res = player.step(command)
    return res.won


def _rng(split: str, seed: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def trial_name(seed: int, index: int) -> str:
  return f"trial_G{seed}_{index:05d}"


def _attempt(rng: np.random.Generator, split: str, task_type: str, trial: str) -> Optional[tuple[str, dict, dict]]:
  """One sampled game, or None when the planner or the replay rejects it."""
  task = sample_task(rng, split, task_type)
  items = place_items(rng, task)
  floor, receptacles = task.scene.floor, task.scene.receptacles
  occupied = {r.loc for r in receptacles}
  while True:
    x, z = floor[rng.integers(len(floor))]
    agent_loc = _pose_loc(x, z, 90 * int(rng.integers(4)), HORIZON)
    # Released games start away from every receptacle ("You are in the middle of a room"); a start on a
    # receptacle's pose would open with "You are facing ..." instead.
    if agent_loc not in occupied:
      break
  domain, grammar = _logic()
  name, goal = f"plan_{trial}", goal_pddl(task)
  game = {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", task_description(rng, task)),
          "pddl_problem": problem_pddl(name, receptacles, items, agent_loc, goal), "solvable": True}
  planned = [i for i in items if i.otype in (task.target, task.toggle)]
  sub_problem = problem_pddl(name, plan_receptacles(task, items, agent_loc), planned, agent_loc, goal)
  names = display_names(receptacles, items)
  walkthrough = [" ".join(names.get(w, w) for w in step.split(" "))
                 for step in plan(sub_problem)]
  # Stored before the replay: without one, TextWorld's reset would plan the full game itself.
  game["walkthrough"] = walkthrough
  if not walkthrough or len(walkthrough) > MAX_PLAN_STEPS or not replay_wins(game, task_type):
    return None
  game_dir = f"{task_type}-{task.target}-None-{task.parent or task.toggle}-{task.scene.num}/{trial}"
  traj = {"task_type": task_type, "task_id": trial, "scene": {"scene_num": task.scene.num},
          "pddl_params": {"object_target": task.target, "parent_target": task.parent,
                          "toggle_target": task.toggle, "mrecep_target": "", "object_sliced": False},
          "generated": True}
  return game_dir, game, traj


def generate_game(split: str, seed: int, index: int) -> tuple[str, dict, dict]:
  """Game `index` of (split, seed): ("<task dir>/<trial dir>", game.tw-pddl JSON, traj_data JSON).

  Deterministic in (split, seed, index); the returned game is planner-solved and replay-verified.
  """
  _check_split(split)
  if seed < 0 or index < 0:
    raise UserError(f"seed and index must be >= 0, got seed={seed} index={index}")
  rng = _rng(split, seed, index)
  task_type = TASK_TYPES[index % len(TASK_TYPES)]
  argv = sys.argv
  try:
    for _ in range(MAX_ATTEMPTS):
      made = _attempt(rng, split, task_type, trial_name(seed, index))
      if made is not None:
        return made
  finally:
    sys.argv = argv    # fast-downward's translator overwrites it; callers may still parse it
  raise RuntimeError(f"no solvable {task_type} game for ({split}, {seed}, {index}) in {MAX_ATTEMPTS} attempts")


# ---------------------------------------------------------------------------------------------
# Writing a split

def _write_json(path: str, obj: dict) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def write_game(out_split_dir: str, game_dir: str, game: dict, traj: dict) -> None:
  """Writes one game atomically: traj_data.json goes last, so a game counts once both files exist."""
  d = os.path.join(out_split_dir, game_dir)
  os.makedirs(d, exist_ok=True)
  _write_json(os.path.join(d, "game.tw-pddl"), game)
  _write_json(os.path.join(d, "traj_data.json"), traj)


def _existing(out_split_dir: str, seed: int) -> dict[int, str]:
  """index -> trial directory of the complete games present; refuses directories holding other games."""
  found = {}
  if not os.path.isdir(out_split_dir):
    return found
  for task_dir in sorted(os.listdir(out_split_dir)):
    tdir = os.path.join(out_split_dir, task_dir)
    if not os.path.isdir(tdir):
      continue
    for trial in sorted(os.listdir(tdir)):
      m = _TRIAL_RE.match(trial)
      if not m or int(m.group(1)) != seed:
        raise UserError(f"{out_split_dir} holds games other than generated seed {seed} ({task_dir}/{trial}); "
                        "use a separate directory per seed")
      gdir = os.path.join(tdir, trial)
      if all(os.path.isfile(os.path.join(gdir, f)) for f in ("game.tw-pddl", "traj_data.json")):
        found[int(m.group(2))] = gdir
  return found


def ensure_split(data_dir: str, split: str, num_games: int, seed: int = 0, progress: bool = True) -> None:
  """Makes DATA_DIR/json_2.1.1/<split> hold at least games 0..num_games-1 of (split, seed).

  An append-only cache: present games are kept (game i depends only on split, seed and i), missing
  ones generated (in spawned worker processes, so a calling script needs the usual
  `if __name__ == "__main__":` guard), and nothing is ever removed, so runs that ask for different
  counts share one folder. The `.complete` marker records how many leading games are known complete.
  """
  _check_split(split)
  if num_games < 1 or seed < 0:
    raise UserError(f"num_games must be >= 1 and seed >= 0, got num_games={num_games} seed={seed}")
  out = split_dir(data_dir, split)
  marker = os.path.join(out, COMPLETE_MARKER)
  old = generated_marker(out)
  if old is not None and (old.get("version"), old.get("seed")) != (GENERATOR_VERSION, seed):
    raise UserError(f"{out} holds games of generator version {old.get('version')} seed {old.get('seed')}, "
                    f"not version {GENERATOR_VERSION} seed {seed}; use a separate directory")
  if old is not None and old.get("num_games", 0) >= num_games:
    return
  present = _existing(out, seed)
  missing = [i for i in range(num_games) if i not in present]
  if missing:
    os.makedirs(out, exist_ok=True)
    _generate_into(out, split, seed, missing, progress)
  # Another run may have grown the folder meanwhile: never lower what the marker already promises.
  done = max(num_games, (generated_marker(out) or {}).get("num_games", 0))
  _write_json(marker, {"num_games": done, "seed": seed, "version": GENERATOR_VERSION})


def game_index(game_id: str) -> int:
  """Index i of a generated game from its id "<task dir>/trial_G<seed>_<i>"."""
  m = _TRIAL_RE.match(os.path.basename(game_id))
  if not m:
    raise UserError(f"{game_id!r} is not the id of a generated game")
  return int(m.group(2))


def _generate_all(jobs: list[tuple[str, int, int]]):
  """Yields generated games as they finish, from up to os.cpu_count() worker processes."""
  workers = min(os.cpu_count() or 1, len(jobs))
  if workers == 1:
    yield from (generate_game(*job) for job in jobs)
    return
  # spawn, not fork: the parent may hold threads (JAX, tqdm) that a forked child would inherit locked.
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    for done in concurrent.futures.as_completed([pool.submit(generate_game, *job) for job in jobs]):
      yield done.result()
  finally:
    pool.shutdown(cancel_futures=True)    # on an error, stop at the games already running


def _generate_into(out: str, split: str, seed: int, indices: list[int], progress: bool) -> None:
  from tqdm import tqdm
  jobs = [(split, seed, i) for i in indices]
  with tqdm(total=len(jobs), desc=f"generating {split} games", unit="game", disable=not progress) as bar:
    for game_dir, game, traj in _generate_all(jobs):
      write_game(out, game_dir, game, traj)
      bar.update()


# ---------------------------------------------------------------------------------------------
# CLI

class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:
    print(f"{self.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = _Parser(prog="python -m mpr.envs.generate", description=__doc__.splitlines()[0])
  p.add_argument("out_dir", help="data directory; games go to OUT_DIR/json_2.1.1/<split>/")
  p.add_argument("--split", default="valid_seen", help=f"one of {sorted(GENERATED_SPLIT_SIZES)}")
  p.add_argument("--num-games", type=int, default=None, help="default: the real split's size")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  a = p.parse_args(argv)
  if a.split not in GENERATED_SPLIT_SIZES:
    p.error(f"unknown split {a.split!r}; choose from {sorted(GENERATED_SPLIT_SIZES)}")
  num = GENERATED_SPLIT_SIZES[a.split] if a.num_games is None else a.num_games
  try:
    ensure_split(a.out_dir, a.split, num, seed=a.seed, progress=not a.quiet)
  except UserError as e:
    p.error(str(e))
  print(f"{num} {a.split} games (seed {a.seed}) in {split_dir(os.path.abspath(a.out_dir), a.split)}; "
        f"use them with ALFWORLD_DATA={os.path.abspath(a.out_dir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
