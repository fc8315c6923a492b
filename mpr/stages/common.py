"""What several stages share: a split's games under the config's `env` section, and resumable play."""
from __future__ import annotations

import logging

from mpr import io
from mpr.envs.games import GameSpec, find_games, select_games
from mpr.envs.pool import EnvPool
from mpr.envs.rollout import Policy, rollout
from mpr.records import Episode


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


def play_logged(pool: EnvPool, games: list[GameSpec], seed: int, policy: Policy, path: str,
                progress: str) -> list[Episode]:
  """Every game played once by `policy`, in `games` order, through the episode log at `path`.

  Episodes are appended (fsynced) as they finish and a re-run plays only the games missing from
  the log, so a killed run resumes where it stopped; an episode depends only on its game, seed and
  the policy, so the resumed result equals an uninterrupted one.
  """
  with io.JsonlLog(path) as log:
    done = {r["game"] for r in log.records}
    jobs = [(g, seed) for g in games if g.game_id not in done]
    logging.info("%s: %d games, %d logged earlier, %d to play", progress, len(games), len(games) - len(jobs),
                 len(jobs))
    rollout(pool, jobs, policy, on_episode=lambda e: log.append(e.to_json()), progress=progress)
    by_game = {r["game"]: r for r in log.records}
  return [Episode.from_json(by_game[g.game_id]) for g in games]
