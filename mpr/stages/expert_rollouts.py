"""Stage `expert_rollouts`: play every game of the configured splits with an expert.

Serves two purposes with one code path: expert evaluation (success and steps per task type: the main
job until the agent exists) and the demonstration dataset for behaviour cloning. The dataset is the
episode log itself, `episodes_<split>.jsonl`: one Episode per line with the game, task type, goal and,
per step, the observation, admissible commands and action.

Resumable: episodes are appended (fsynced) as they finish, and a re-run plays only the missing games.
"""
from __future__ import annotations

import logging
import os

from mpr import io
from mpr.envs.pool import EnvPool
from mpr.envs.rollout import expert_policy, rollout
from mpr.eval import summary as summary_lib
from mpr.records import Episode
from mpr.stages.common import split_games

CONFIG_KEYS = ("seed", "env", "expert")


def run(config, sdir: str) -> dict:
  env = config.env
  metrics, tables = {}, []
  with EnvPool(env.num_workers, env.num_slots, max_steps=env.max_steps, expert=config.expert.name,
               step_timeout=env.step_timeout) as pool:
    for split in config.expert.splits:
      games = split_games(config, split, config.expert.num_games)
      log = io.JsonlLog(os.path.join(sdir, f"episodes_{split}.jsonl"))
      done = {r["game"] for r in log.records}
      jobs = [(g, config.seed) for g in games if g.game_id not in done]
      logging.info("%s: %d games, %d done earlier, %d to play", split, len(games), len(done), len(jobs))
      with log:
        rollout(pool, jobs, expert_policy, on_episode=lambda e: log.append(e.to_json()),
                progress=f"{config.expert.name} expert on {split}")
      by_game = {r["game"]: Episode.from_json(r) for r in log.records}
      episodes = [by_game[g.game_id] for g in games]
      metrics[split] = summary_lib.summarize(episodes)
      tables.append(summary_lib.markdown_table(metrics[split], f"{config.expert.name} expert on {split}"))
  text = "\n".join(tables)
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
