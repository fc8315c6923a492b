"""Stage `expert_rollouts`: play every game of the configured splits with an expert.

Serves two purposes with one code path: expert evaluation (success and steps per task type: the main
job until the agent exists) and the demonstration dataset for behaviour cloning. The dataset is the
episode log itself, `episodes_<split>.jsonl`: one Episode per line with the game, task type, goal and,
per step, the observation, admissible commands and action.

Resumable: episodes are appended (fsynced) as they finish, and a re-run plays only the missing games.
"""
from __future__ import annotations

import os

from mpr import io
from mpr.envs.pool import open_pool
from mpr.envs.rollout import expert_policy
from mpr.eval import summary as summary_lib
from mpr.stages.common import play_logged, split_games

CONFIG_KEYS = ("seed", "env", "expert")


def run(config, sdir: str) -> dict:
  env = config.env
  metrics, tables = {}, []
  with open_pool(env, expert=config.expert.name) as pool:
    for split in config.expert.splits:
      games = split_games(config, split, config.expert.num_games)
      episodes = play_logged(pool, [(g, config.seed) for g in games], expert_policy,
                             os.path.join(sdir, f"episodes_{split}.jsonl"),
                             progress=f"{config.expert.name} expert on {split}")
      metrics[split] = summary_lib.summarize(episodes)
      tables.append(summary_lib.markdown_table(metrics[split], f"{config.expert.name} expert on {split}"))
  text = "\n".join(tables)
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
