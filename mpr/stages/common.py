"""What several stages share: a split's games under the config's `env` section, and resumable play."""
from __future__ import annotations

import glob
import logging
import os
from typing import Sequence

from mpr import hosts, io
from mpr.envs.games import GameSpec, describe, find_games, select_games
from mpr.envs.pool import Pool
from mpr.envs.rollout import Policy, rollout
from mpr.errors import UserError
from mpr.records import Episode


def split_games(config, split: str, num_games: int = 0, seed: int | None = None) -> list[GameSpec]:
  """The games of `split` (an evenly spaced subset of `num_games` when > 0); generated ones with
  `seed` (default: the run's).

  Where games are generated, only `num_games` are made: game i of a generated split does not
  depend on how many there are, and generating costs ~2 CPU-s a game.
  """
  env = config.env
  games = find_games(split, source=env.source, data_dir=env.data_dir or None,
                     generated_dir=env.generated_dir or None, task_types=tuple(env.task_types),
                     seed=config.seed if seed is None else seed, num_generated=num_games or None)
  chosen = select_games(games, num_games)
  logging.info("games: %s: %d of %d %s", split, len(chosen), len(games), describe(games))
  return chosen


def serving_variants(config, sdir: str, policy, names) -> dict:
  """The variants a model stage serves, on the agent's mesh: restored from this run's `convert` stage
  when the run has one (it must have finished first), else made from the float weights."""
  from mpr.agent import agent as agent_lib
  converted = None
  if "convert" in config.stages:
    converted = os.path.join(os.path.dirname(sdir), "convert")
    if not os.path.isfile(os.path.join(converted, "metrics.json")):
      raise UserError(f"stage convert has not finished in {os.path.dirname(sdir)}: list it before "
                      f"{os.path.basename(sdir)} in config.stages")
  return policy.variants(names, mesh=agent_lib.mesh_of(config.agent), converted=converted)


def check_seeds(seeds, name: str) -> tuple[int, ...]:
  """A non-empty tuple of distinct non-negative seeds, else a one-line error naming the config key."""
  seeds = tuple(seeds) if isinstance(seeds, (tuple, list)) else (seeds,)
  if not seeds or len(set(seeds)) < len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
    raise UserError(f"{name} must be distinct non-negative integers, got {seeds!r}")
  return seeds


def router_dir(stage_dir: str, seed: int, seeds) -> str:
  """Where a router stage keeps the router of `seed`: the first of `seeds` (the reference run, which
  later stages build on) in router/, the others in seed_<seed>/router/."""
  return os.path.join(stage_dir, "router" if seed == seeds[0] else f"seed_{seed}/router")


def play_logged(pool: Pool, jobs: Sequence[tuple[GameSpec, int]], policy: Policy, path: str,
                progress: str) -> list[Episode]:
  """Every (game, seed) job played once by `policy`, through the episode log at `path`; in `jobs` order.

  Episodes are appended (fsynced) as they finish and a re-run plays only the waves of jobs with
  episodes missing from the log (`rollout`), so a killed run resumes where it stopped with the
  result of an uninterrupted one. A logged episode that a resumed wave plays again is not logged
  twice; had its actions come out differently (another platform's numerics, a worker failure in
  the earlier run), a warning says so. On several
  hosts each plays its share into its own log (`hosts.host_path`) and, after a barrier, every host
  reads all of them; episodes logged by an earlier run with another number of hosts count as played.
  """
  logged = _logged(path)
  mine = hosts.share(jobs)
  played = {i for i, (g, s) in enumerate(mine) if (g.game_id, s) in logged}
  logging.info("%s: %d episodes, %d logged earlier, %d missing%s", progress, len(jobs),
               sum((g.game_id, s) in logged for g, s in jobs), len(mine) - len(played),
               f" on host {hosts.index()} of {hosts.count()}" if hosts.count() > 1 else "")
  differ = []

  def record(index: int, episode: Episode) -> None:
    if index not in played:
      log.append(episode.to_json())
    elif [s["action"] for s in logged[(episode.game, episode.seed)]["steps"]] != [s.action for s in episode.steps]:
      differ.append(episode.game)

  with io.JsonlLog(hosts.host_path(path)) as log:
    rollout(pool, mine, policy, played=played, on_episode=record, progress=progress)
  if differ:
    logging.warning("%s: %d logged episode(s) played again took other actions than the log holds (first: "
                    "%s); the log keeps the earlier ones", progress, len(differ), differ[0])
  hosts.sync(f"played {path}")
  logged = _logged(path)
  return [Episode.from_json(logged[(g.game_id, s)]) for g, s in jobs]


def _logged(path: str) -> dict[tuple[str, int], dict]:
  """Every complete episode record in the log at `path` and its per-host siblings, by (game, seed)."""
  stem, ext = os.path.splitext(path)
  files = [f for f in [path, *sorted(glob.glob(glob.escape(stem) + ".host*" + ext))] if os.path.exists(f)]
  return {(r["game"], r["seed"]): r for f in files for r in io.read_jsonl(f)}
