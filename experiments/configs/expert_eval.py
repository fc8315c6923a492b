"""Expert evaluation on one split: success and steps per task type (the main job for now).

  python launch.py --config experiments/configs/expert_eval.py --workdir workdirs/expert_eval
  python launch.py --config experiments/configs/expert_eval.py:split=valid_unseen,expert=walkthrough ...
  ...:runlocal   plays a 12-game subset (a quick smoke run)
"""
import ml_collections

from mpr.config_util import env_config, parse_arg, runlocal_default


def get_config(arg=None):
  arg = parse_arg(arg, split="valid_seen", expert="exploring", num_games=0, runlocal=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("expert_rollouts",)
  c.env = env_config()
  c.expert = ml_collections.ConfigDict()
  c.expert.name = arg.expert                   # exploring | walkthrough (mpr.envs.experts)
  c.expert.splits = (arg.split,)
  c.expert.num_games = runlocal_default(arg, "num_games", 12)   # 0 = every game of the split
  return c
