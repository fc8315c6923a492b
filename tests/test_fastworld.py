"""FastEnv against the real TextWorld engine: the differential checker on one game per task type,
a hand-made game that walks through every action and the engine's odd texts step by step (facts
included), the exploring expert on FastEnv's state, and the parsers' refusals and quirks."""
import json
import re

import pytest

from mpr.envs.games import GameSpec
from mpr.errors import UserError

# One kitchen-and-bedroom room: a sink basin (id "sink|...|SinkBasin"), openable fridge, microwave
# and drawer, and a side table sharing the drawer's location; two mugs of which one is a receptacle
# object, a lamp, a knife, an apple that can be heated, cooled, cleaned and sliced.
_PROBLEM = """
(define (problem synthetic)
(:domain alfred)
(:objects
  agent1 - agent
  loc_bar_0 loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 loc_bar_5 - location
  countertop_bar_1 fridge_bar_1 sink_bar_1_bar_sinkbasin microwave_bar_1 sidetable_bar_1 drawer_bar_1 - receptacle
  apple_bar_1 knife_bar_1 desklamp_bar_1 mug_bar_1 mug_bar_2 - object
  AppleType KnifeType DeskLampType MugType - otype
  CounterTopType FridgeType SinkBasinType MicrowaveType SideTableType DrawerType - rtype
)
(:init
  (atLocation agent1 loc_bar_0)
  (receptacleAtLocation countertop_bar_1 loc_bar_1) (receptacleAtLocation fridge_bar_1 loc_bar_2)
  (receptacleAtLocation sink_bar_1_bar_sinkbasin loc_bar_3) (receptacleAtLocation microwave_bar_1 loc_bar_4)
  (receptacleAtLocation sidetable_bar_1 loc_bar_5) (receptacleAtLocation drawer_bar_1 loc_bar_5)
  (receptacleType countertop_bar_1 CounterTopType) (receptacleType fridge_bar_1 FridgeType)
  (receptacleType sink_bar_1_bar_sinkbasin SinkBasinType) (receptacleType microwave_bar_1 MicrowaveType)
  (receptacleType sidetable_bar_1 SideTableType) (receptacleType drawer_bar_1 DrawerType)
  (openable fridge_bar_1) (openable microwave_bar_1) (openable drawer_bar_1)
  (objectType apple_bar_1 AppleType) (objectType knife_bar_1 KnifeType)
  (objectType desklamp_bar_1 DeskLampType) (objectType mug_bar_1 MugType) (objectType mug_bar_2 MugType)
  (inReceptacle apple_bar_1 countertop_bar_1) (objectAtLocation apple_bar_1 loc_bar_1)
  (inReceptacle knife_bar_1 countertop_bar_1) (objectAtLocation knife_bar_1 loc_bar_1)
  (inReceptacle desklamp_bar_1 sidetable_bar_1) (objectAtLocation desklamp_bar_1 loc_bar_5)
  (inReceptacle mug_bar_1 drawer_bar_1) (objectAtLocation mug_bar_1 loc_bar_5)
  (inReceptacle mug_bar_2 drawer_bar_1) (objectAtLocation mug_bar_2 loc_bar_5)
  (pickupable apple_bar_1) (pickupable knife_bar_1) (pickupable mug_bar_1) (pickupable mug_bar_2)
  (heatable apple_bar_1) (coolable apple_bar_1) (cleanable apple_bar_1) (sliceable apple_bar_1)
  (isReceptacleObject mug_bar_1) (toggleable desklamp_bar_1)
  (canContain CounterTopType AppleType) (canContain CounterTopType KnifeType)
  (canContain FridgeType AppleType) (canContain SideTableType AppleType)
  (canContain SideTableType MugType) (canContain DrawerType MugType)
)
(:goal (exists (?o - object ?r - receptacle)
  (and (objectType ?o AppleType) (isHot ?o) (inReceptacle ?o ?r) (receptacleType ?r SideTableType))))
)
"""

_SCRIPT = [
    "look", "inventory", "go to countertop 1", "examine countertop 1", "take apple 1 from countertop 1",
    "examine apple 1", "inventory", "go to microwave 1", "heat apple 1 with microwave 1", "examine apple 1",
    "go to fridge 1", "cool apple 1 with fridge 1", "examine apple 1", "open fridge 1", "move apple 1 to fridge 1",
    "close fridge 1", "open fridge 1", "take apple 1 from fridge 1", "go to sinkbasin 1",
    "clean apple 1 with sinkbasin 1", "examine apple 1", "heat apple 1 with microwave 1", "go to microwave 1",
    "heat apple 1 with microwave 1", "go to countertop 1", "move apple 1 to countertop 1",
    "take knife 1 from countertop 1", "slice apple 1 with knife 1", "move knife 1 to countertop 1",
    "take apple 1 from countertop 1", "examine apple 1", "go to sidetable 1", "use desklamp 1", "use desklamp 1",
    "go to drawer 1", "examine drawer 1", "open drawer 1", "move apple 1 to sidetable 1",
    "take apple 1 from sidetable 1", "move apple 1 to sidetable 1", "take mug 2 from drawer 1", "examine mug 2",
    "move mug 2 to sidetable 1", "take mug 1 from drawer 1", "examine mug 1", "move mug 1 to drawer 1", "look",
    "help", "xyzzy", "  look ", "close drawer 1", "look"]


@pytest.fixture(scope="module")
def synthetic_game(valid_seen, tmp_path_factory) -> GameSpec:
  """The hand-made problem under the domain and grammar of a real (or generated) game."""
  with open(valid_seen[0].path) as f:
    data = json.load(f)
  grammar = re.sub(r'Your task is to: [^"]*', "Your task is to: put a hot apple in sidetable.", data["grammar"])
  path = tmp_path_factory.mktemp("synthetic") / "game.tw-pddl"
  path.write_text(json.dumps({"pddl_domain": data["pddl_domain"], "grammar": grammar,
                              "pddl_problem": _PROBLEM, "walkthrough": []}))
  return GameSpec(str(path), "synthetic", "pick_heat_then_place_in_recep", "test")


def _facts(props) -> set:
  return {(p.name, tuple(p.names)) for p in props}


def test_checker_finds_no_difference_on_one_game_per_task(one_game_per_task):
  from mpr.envs.fastworld.verify import verify_games
  # The walkthrough only (a reset of the real engine costs a second); refused commands are
  # covered step by step by the hand-made game below.
  report = verify_games(one_game_per_task, walks=0, mixed=False)
  assert report["mismatches"] == []
  assert report["games"] == 6 and report["steps_compared"] >= 6 * 4


def test_checker_log_resumes_and_shards(alfworld_data, tmp_path, capsys):
  from mpr.envs.fastworld import verify
  log = tmp_path / "shard1.jsonl"
  args = ["--split", "valid_seen", "--data-dir", alfworld_data, "--num-games", "4", "--walks", "0",
          "--shard", "1/2", "--log", str(log)]
  assert verify.main(args) == 0
  first = log.read_text()
  assert len(first.splitlines()) == 2                    # games 1 and 3 of the first four
  assert verify.main(args) == 0 and log.read_text() == first     # nothing played again
  reports = [json.loads(r) for r in re.split(r"(?<=})\n(?={)", capsys.readouterr().out.strip())]
  assert [(r["games"], r["mismatched_games"]) for r in reports] == [(2, 0), (2, 0)]


def test_every_action_and_odd_text_matches_real_engine(synthetic_game):
  from mpr.envs.alfworld import AlfworldEnv
  from mpr.envs.fastworld import FastEnv
  real, fast = AlfworldEnv(max_steps=80, expert="walkthrough"), FastEnv(max_steps=80)
  rgoal, r = real.reset(synthetic_game)
  fgoal, f = fast.reset(synthetic_game)
  assert (fgoal, f.observation, f.admissible) == (rgoal, r.observation, r.admissible)
  seen = {}
  for action in _SCRIPT:
    r, f = real.step(action), fast.step(action)
    assert (f.observation, f.admissible, f.won, f.done) == (r.observation, r.admissible, r.won, r.done), action
    # The view facts, `not_` atoms included, drive later texts: they must match too.
    assert _facts(fast.state["facts"]) == _facts(real.state["facts"]), action
    seen.setdefault(action, []).append(f)
  assert seen["examine apple 1"][-1].observation == "This is a hot and clean sliced apple 1."
  assert seen["use desklamp 1"][-1].observation == "You turn on the desklamp 1."   # never "off"
  # The drawer shares the side table's location: no "go to", but examine and open work.
  assert seen["go to drawer 1"][0].observation == "Nothing happens."
  # An object moved between receptacles of one location is "next to" the one it left.
  assert seen["look"][-1].observation == ("You are facing the drawer 1, and sidetable 1. "
                                          "Next to it, you see a mug 2.")
  assert [s.won for s in seen["move apple 1 to sidetable 1"]] == [True, True]
  assert seen["take apple 1 from sidetable 1"][0].won is False
  assert ("not_ison", ("desklamp 1",)) in _facts(fast.state["facts"])


def test_cached_reference_is_textworld(synthetic_game):
  """The checker's caches change TextWorld's cost, not its texts: every action of the hand-made
  game (facts included) plays the same on TextWorld with and without them."""
  import textworld.envs.pddl.textgen as textgen
  from mpr.envs.alfworld import AlfworldEnv
  from mpr.envs.fastworld.verify import cached_reference

  def play():
    env = AlfworldEnv(max_steps=80, expert="walkthrough")
    goal, r = env.reset(synthetic_game)
    out = [(goal, r.observation, r.admissible)]
    for action in _SCRIPT:
      r = env.step(action)
      out.append((r.observation, r.admissible, r.won, r.done, _facts(env.state["facts"])))
    return out

  plain_copy = textgen.copy_context
  with cached_reference():
    assert textgen.copy_context is not plain_copy
    cached = play()
  assert textgen.copy_context is plain_copy                     # the block leaves TextWorld as it was
  assert cached == play()


@pytest.mark.parametrize("expression", ["o.name", "r.name or r.id", "o.indefinite + ' ' + o.name "])
def test_cached_reference_takes_plain_reads(expression):
  from mpr.envs.fastworld.verify import check_read_only
  check_read_only(expression)


@pytest.mark.parametrize("expression", ["o.synonyms.append('x')", "setattr(o, 'name', 'x')",
                                        "__import__('os')", "o.name if o else r", "o.name; x"])
def test_cached_reference_refuses_expressions_that_could_write(expression):
  from mpr.envs.fastworld.verify import check_read_only
  with pytest.raises(UserError, match="not a plain read"):
    check_read_only(expression)


def test_exploring_expert_plays_fast_state_like_real(one_game_per_task):
  from mpr.envs.alfworld import AlfworldEnv
  from mpr.envs.fastworld import FastEnv
  from mpr.envs.fastworld.verify import expert_walk
  real, fast = AlfworldEnv(max_steps=50, expert="exploring"), FastEnv(max_steps=50, expert="exploring")
  for game in one_game_per_task:
    if game.task_type != "pick_two_obj_and_place":   # the task whose policy the project patches most
      continue
    mismatches = []
    steps = expert_walk(game, real, fast, mismatches, 50)
    assert mismatches == [] and steps > 3, game.game_id
    assert fast.state["won"] == real.state["won"]


def test_demangled_names_number_from_the_end_of_sorted_ids():
  from mpr.envs.fastworld.engine import demangled_names
  names = demangled_names(["mug_bar_b", "mug_bar_a", "sink_bar__minus_1_bar_sinkbasin", "agent1"])
  assert names == {"mug_bar_a": "mug 2", "mug_bar_b": "mug 1", "sink_bar__minus_1_bar_sinkbasin": "sinkbasin 1",
                   "agent1": "agent1 "}


@pytest.mark.parametrize("text, symbols", [
    ("\nAvailable: x\n  y", [("t", "Available: x\n  y")]),
    ("\tA\tB {o.name}\t", [("t", "A\tB "), ("c", ("e", "o.name"), None), ("t", "")]),
    ("x {r.name})} tail", [("t", "x "), ("c", ("e", "r.name"), None), ("t", ")")]),
    ("// c\nhello", [("t", "hello")]),
    ("p; q", [("t", "p")]),
    ('"quoted" x', [("t", "quoted"), ("t", " x")]),
    ("[{o.name | holds(a:agent, o:object)}].",
     [("l", ("c", ("e", "o.name "), "holds(a:agent, o:object)")), ("t", ".")]),
])
def test_grammar_text_is_read_as_tatsu_reads_it(text, symbols):
  # Each expectation is what TextWorld's own TatSu parser returns for the same text.
  from mpr.envs.fastworld.textgen import parse_symbols
  assert parse_symbols(text) == symbols


def test_unknown_constructs_are_refused(valid_seen, tmp_path):
  from mpr.envs.fastworld import FastEnv
  with open(valid_seen[0].path) as f:
    data = json.load(f)
  cases = {
      "predicate": ("pddl_domain", "(holds ?a ?o)", "(grasps ?a ?o)", "unknown predicate 'grasps'"),
      "expression": ("grammar", "{r.name}", "{r.name.upper()}", "unsupported expression"),
      "document": ("grammar", "action help {", "widget help {", "unsupported construct"),
  }
  for name, (key, old, new, message) in cases.items():
    assert old in data[key], name
    path = tmp_path / f"{name}.tw-pddl"
    path.write_text(json.dumps({**data, key: data[key].replace(old, new, 1)}))
    with pytest.raises(UserError, match=re.escape(message)):
      FastEnv().reset(GameSpec(str(path), name, "pick_and_place_simple", "test"))
