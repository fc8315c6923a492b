"""ALFWorld environments: game discovery, the TextWorld wrapper, the worker pool, experts, generator.

Knows nothing about models; `mpr.agent` is where the two meet.
"""
from mpr.envs.games import TASK_TYPES, GameSpec, find_games, load_game_list, select_games
from mpr.envs.alfworld import AlfworldEnv, StepResult
