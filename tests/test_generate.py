"""The offline game generator: its games are real ALFWorld games to every reader of the data.

Why these tests: generated games stand in for the released ones whenever those are absent, so they
must load through the same discovery code, be winnable by their stored walkthrough in the same
engine wrapper, look like real scenes (not toy rooms), and be reproducible game by game.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from mpr.envs import AlfworldEnv, GameSpec, TASK_TYPES, find_games
from mpr.envs.games import describe, generated_data_dir
from mpr.envs import generate
from mpr.errors import UserError

SPLIT, SEED, NUM = "valid_seen", 0, 6     # six consecutive games: one of each task type
GAME_KEYS = {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
DIR_RE = re.compile(r"^(\w+)-(\w+)-None-(\w+)-(\d+)/trial_G0_(\d{5})$")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  out = str(tmp_path_factory.mktemp("generated"))
  generate.ensure_split(out, SPLIT, NUM, seed=SEED, progress=False)
  return out


@pytest.fixture(scope="module")
def games(data_dir):
  return find_games(SPLIT, source="real", data_dir=data_dir)


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _files(data_dir: str) -> dict[str, str]:
  """relative path -> content of every file in the split."""
  root = generate.split_dir(data_dir, SPLIT)
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(dirpath, name)) as f:
        out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
  return out


def test_games_load_as_real_data(games, data_dir):
  assert len(games) == NUM
  assert sorted(g.task_type for g in games) == sorted(TASK_TYPES)
  indices = []
  for g in games:
    m = DIR_RE.match(g.game_id)
    assert m, g.game_id
    task_type, target, parent, scene, index = m.groups()
    indices.append(int(index))
    game = _load(g.path)
    traj = _load(os.path.join(os.path.dirname(g.path), "traj_data.json"))
    assert set(game) == GAME_KEYS and game["solvable"] is True
    assert 0 < len(game["walkthrough"]) <= generate.MAX_PLAN_STEPS
    assert traj["task_type"] == task_type == g.task_type
    assert traj["task_id"] == g.game_id.split("/")[1] and traj["generated"] is True
    assert traj["scene"] == {"scene_num": int(scene)}
    params = traj["pddl_params"]
    assert params["object_target"] == target and params["mrecep_target"] == "" and not params["object_sliced"]
    lamp = task_type == "look_at_obj_in_light"
    assert (params["parent_target"], params["toggle_target"]) == (("", "DeskLamp") if lamp else (parent, ""))
  assert sorted(indices) == list(range(NUM))
  assert _load(os.path.join(generate.split_dir(data_dir, SPLIT), ".complete")) == {
      "num_games": NUM, "seed": SEED, "version": generate.GENERATOR_VERSION}


def test_walkthroughs_win_in_realistic_scenes(games):
  env = AlfworldEnv(max_steps=50)
  receptacle_counts, object_counts = [], []
  for g in games:
    game = _load(g.path)
    goal, res = env.reset(g)
    assert "Your task is to: " + goal in game["grammar"]
    assert res.observation.startswith("You are in the middle of a room"), g.game_id
    seen = re.findall(r"\ban? ([a-z]+ \d+)", res.observation)
    assert seen and all(f"go to {r}" in res.admissible for r in seen)
    receptacle_counts.append(len(seen))
    object_counts.append(len(re.findall(r"\(inReceptacle ", game["pddl_problem"])))
    for command in game["walkthrough"]:
      assert not res.won and command in res.admissible, (g.game_id, command)
      res = env.step(command)
    assert res.won, g.game_id
  # Released games: 6-54 receptacles (mean 24) and 15-57 objects in them (mean 33) on valid_seen.
  assert min(receptacle_counts) >= 6 and sum(receptacle_counts) / NUM >= 15, receptacle_counts
  assert min(object_counts) >= 10 and sum(object_counts) / NUM >= 20, object_counts


def test_agent_never_starts_on_a_receptacle(tmp_path):
  # Game 10 of (valid_seen, 0) drew a start on FloorPlan12's stove burners before generator version 2.
  game_dir, game, traj = generate.generate_game(SPLIT, SEED, 10)
  generate.write_game(str(tmp_path), game_dir, game, traj)
  spec = GameSpec(str(tmp_path / game_dir / "game.tw-pddl"), game_dir, traj["task_type"], SPLIT)
  _, res = AlfworldEnv(max_steps=50).reset(spec)
  assert res.observation.startswith("You are in the middle of a room"), res.observation[:80]


def test_game_depends_only_on_split_seed_index(data_dir):
  game_dir, game, traj = generate.generate_game(SPLIT, SEED, 5)
  path = os.path.join(generate.split_dir(data_dir, SPLIT), game_dir)
  assert _load(os.path.join(path, "game.tw-pddl")) == game
  assert _load(os.path.join(path, "traj_data.json")) == traj
  assert generate.generate_game("valid_train", SEED, 5)[1]["pddl_problem"] != game["pddl_problem"]


def test_ensure_split_resumes_and_only_appends(data_dir, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(data_dir, out)
  before = _files(out)
  victim = next(p for p in before if "trial_G0_00005" in p and p.endswith("game.tw-pddl"))
  shutil.rmtree(os.path.join(generate.split_dir(out, SPLIT), os.path.dirname(victim)))
  os.remove(os.path.join(generate.split_dir(out, SPLIT), ".complete"))
  generate.ensure_split(out, SPLIT, NUM, seed=SEED, progress=False)
  assert _files(out) == before

  generate.ensure_split(out, SPLIT, NUM + 1, seed=SEED, progress=False)
  grown = _files(out)
  assert {p: c for p, c in grown.items() if p in before and p != ".complete"} == \
         {p: c for p, c in before.items() if p != ".complete"}
  assert len(find_games(SPLIT, source="real", data_dir=out)) == NUM + 1

  # A run asking for fewer games deletes nothing: runs with different counts share the cache.
  generate.ensure_split(out, SPLIT, NUM, seed=SEED, progress=False)
  assert _files(out) == grown


def test_generated_source_gives_the_first_n_games_of_a_larger_cache(data_dir, tmp_path):
  cache = str(tmp_path / "cache")
  shutil.copytree(data_dir, generated_data_dir(cache, SEED))
  few = find_games(SPLIT, source="generated", generated_dir=cache, num_generated=NUM - 2, seed=SEED)
  assert sorted(generate.game_index(g.game_id) for g in few) == list(range(NUM - 2))
  every = find_games(SPLIT, source="generated", generated_dir=cache, num_generated=NUM, seed=SEED)
  assert len(every) == NUM and set(few) < set(every)


def test_describe_names_the_source_and_folder(data_dir, tmp_path, games):
  assert describe(games) == f"generated games from {data_dir}"
  real = str(tmp_path / "real")
  shutil.copytree(data_dir, real, ignore=shutil.ignore_patterns(".complete"))
  assert describe(find_games(SPLIT, source="real", data_dir=real)) == f"real games from {real}"
  # Tools that copy the released games may leave a marker of their own (a bare count).
  with open(os.path.join(generate.split_dir(real, SPLIT), ".complete"), "w") as f:
    f.write("6\n")
  assert describe(find_games(SPLIT, source="real", data_dir=real)) == f"real games from {real}"


def test_ensure_split_refuses_other_games(data_dir, tmp_path):
  out = str(tmp_path / "other")
  shutil.copytree(data_dir, out)
  with pytest.raises(UserError, match="seed 1"):
    generate.ensure_split(out, SPLIT, NUM, seed=1, progress=False)


@pytest.mark.parametrize("argv", [["--split", "nope"], ["--num-games", "0"], ["--num-games", "x"], []])
def test_cli_bad_arguments_exit_2_with_one_line(argv, tmp_path, capsys):
  args = argv if not argv else [str(tmp_path)] + argv
  with pytest.raises(SystemExit) as e:
    generate.main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "error:" in err
