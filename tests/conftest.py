"""Shared fixtures: real ALFWorld games come from $ALFWORLD_DATA (CI materialises them)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def alfworld_data() -> str:
  path = os.environ.get("ALFWORLD_DATA", "")
  if not os.path.isdir(os.path.join(path, "json_2.1.1", "valid_seen")):
    # Real-game tests are part of the suite, not optional: fail loudly rather than skip.
    pytest.fail("ALFWORLD_DATA must point at the ALFWorld games (see .ci/run) for the real-game tests")
  return path


@pytest.fixture(scope="session")
def valid_seen(alfworld_data):
  from mpr.envs.games import find_games
  return find_games("valid_seen", source="real", data_dir=alfworld_data)


@pytest.fixture(scope="session")
def one_game_per_task(valid_seen):
  from mpr.envs.games import TASK_TYPES
  return [next(g for g in valid_seen if g.task_type == t) for t in TASK_TYPES]
