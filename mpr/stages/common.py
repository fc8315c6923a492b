"""What several stages share: resolving a split's games under the config's `env` section."""
from __future__ import annotations

from mpr.envs.games import GameSpec, find_games, select_games


def split_games(config, split: str, num_games: int = 0) -> list[GameSpec]:
  """The games of `split` (an evenly spaced subset of `num_games` when > 0).

  Where games are generated, only `num_games` are made: game i of a generated split does not
  depend on how many there are, and generating costs ~2 CPU-s a game.
  """
  env = config.env
  games = find_games(split, source=env.source, data_dir=env.data_dir or None,
                     generated_dir=env.generated_dir or None, task_types=tuple(env.task_types),
                     seed=config.seed, num_generated=num_games or None)
  return select_games(games, num_games)
