"""The ALFWorld wrapper on real games: reset, step, admissible commands, win detection, discovery."""
import pytest

from mpr.envs.alfworld import AlfworldEnv, split_intro
from mpr.envs.games import TASK_TYPES, GameSpec, check_disjoint, find_games, select_games
from mpr.errors import UserError


def test_real_splits_have_the_standard_sizes(real_games):
  sizes = {s: len(find_games(s, source="real", data_dir=real_games)) for s in ("valid_seen", "valid_train")}
  assert sizes == {"valid_seen": 140, "valid_train": 200}
  games = find_games("valid_seen", source="real", data_dir=real_games)
  assert {g.task_type for g in games} == set(TASK_TYPES)
  assert [g.game_id for g in games] == sorted(g.game_id for g in games)


def test_task_type_filter_and_subset(valid_seen, alfworld_data):
  heat = find_games("valid_seen", source="real", data_dir=alfworld_data,
                    task_types=("pick_heat_then_place_in_recep",))
  assert heat and all(g.task_type == "pick_heat_then_place_in_recep" for g in heat)
  sub = select_games(valid_seen, 12)
  assert len(sub) == 12 and len({g.task_type for g in sub}) == 6
  with pytest.raises(UserError, match="unknown task type"):
    find_games("valid_seen", source="real", data_dir=alfworld_data, task_types=("juggle",))


def test_select_games_refuses_a_negative_count(valid_seen):
  assert select_games(valid_seen, 0) == valid_seen
  with pytest.raises(UserError, match="num_games must be >= 0"):
    select_games(valid_seen, -1)


def test_held_out_games_must_not_be_training_games(valid_seen, tmp_path):
  """Disjoint by content, not id: a copied game under another split and id is still refused."""
  check_disjoint(valid_seen[:5], valid_seen[5:10], "test")
  copy = tmp_path / "game.tw-pddl"
  copy.write_bytes(open(valid_seen[7].path, "rb").read())
  renamed = GameSpec(str(copy), "other-task/trial_X", valid_seen[7].task_type, "valid_train")
  with pytest.raises(UserError, match=r"test: 1 valid_train game\(s\) are also valid_seen games"):
    check_disjoint(valid_seen[5:10], [valid_seen[0], renamed], "test")


def test_reset_step_and_win(one_game_per_task):
  env = AlfworldEnv(max_steps=50)
  for game in one_game_per_task:
    goal, first = env.reset(game)
    assert goal and goal.endswith(".") and "Your task" not in first.observation
    assert first.observation.startswith("You are in the middle of a room")
    assert "look" in first.admissible and "inventory" in first.admissible
    assert any(a.startswith("go to ") for a in first.admissible)
    assert not first.won and not first.done and first.steps == 0
    plan = env.walkthrough
    for i, action in enumerate(plan):
      assert action in res.admissible if i else action in first.admissible
      res = env.step(action)
      assert res.won == (i == len(plan) - 1), (game.game_id, i, action)
    assert res.done and res.steps == len(plan)


def test_invalid_action_and_step_cap(valid_seen):
  env = AlfworldEnv(max_steps=3)
  env.reset(valid_seen[0])
  res = env.step("fly to the moon")
  assert res.observation == "Nothing happens." and not res.done
  env.step("look")
  res = env.step("look")
  assert res.done and not res.won and res.steps == 3


def test_split_intro_rejects_text_without_goal():
  assert split_intro("-= Welcome to TextWorld, ALFRED! =-\n\nRoom.\n\nYour task is to: do x.") == ("do x.", "Room.")
  with pytest.raises(ValueError):
    split_intro("no goal here")


def test_missing_split_falls_back_to_generated_with_notice(tmp_path):
  notes = []
  games = find_games("valid_unseen", source="auto", data_dir=str(tmp_path / "nothing"),
                     generated_dir=str(tmp_path / "gen"), num_generated=2, notify=notes.append)
  assert len(games) == 2 and len(notes) == 1
  assert notes[0].startswith("notice:") and "generated" in notes[0] and "\n" not in notes[0]
  with pytest.raises(UserError, match="alfworld-download"):
    find_games("valid_unseen", source="real", data_dir=str(tmp_path / "nothing"))


def test_generated_only_split_is_generated_even_beside_real_data(tmp_path, alfworld_data):
  """test_generated has no released counterpart: it is generated (no notice) wherever real data lives, on
  seen floor plans, and differs from the other splits' games of the same seed; `real` refuses it."""
  from mpr.envs import generate
  notes = []
  games = find_games("test_generated", source="auto", data_dir=alfworld_data, generated_dir=str(tmp_path),
                     num_generated=2, seed=100, notify=notes.append)
  assert len(games) == 2 and not notes and {g.split for g in games} == {"test_generated"}
  assert all("trial_G100_" in g.game_id for g in games)
  scenes = {int(g.game_id.split("/")[0].rsplit("-", 1)[1]) for g in games}
  assert scenes <= set(generate.split_scenes("test_generated")) and not scenes & generate.UNSEEN_SCENES
  seen = find_games("valid_seen", source="generated", generated_dir=str(tmp_path), num_generated=2, seed=100)
  check_disjoint(seen, games, "test")
  with pytest.raises(UserError, match="only as generated games"):
    find_games("test_generated", source="real", data_dir=alfworld_data)
