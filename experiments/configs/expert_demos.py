"""Expert demonstrations for behaviour cloning: the exploring expert on train, valid_seen and valid_train.

  python launch.py --config experiments/configs/expert_demos.py --workdir workdirs/demos
Writes workdirs/demos/expert_rollouts/episodes_<split>.jsonl (game, task type, goal, and per step the
observation, admissible commands and action). ~4 min for the 3553 train games on 2 cores (FastEnv).
"""
import ml_collections

from mpr.config_util import env_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, expert="exploring", num_games=0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("expert_rollouts",)
  c.env = env_config()
  c.expert = ml_collections.ConfigDict()
  c.expert.name = arg.expert
  c.expert.splits = ("train", "valid_seen", "valid_train")
  c.expert.num_games = arg.num_games
  return c
