"""The KL oracle on the embedded default: does the low tier lose on a few steps, and which ones?

  python launch.py --config experiments/configs/oracle_tiny.py --workdir ~/mpr-runs/oracle_tiny
  ...:splits=valid_train+valid_seen      add the reported split once, after every choice is made
  ...:low=int3,high=bf16                 another pair of tiers

Stages: collect (the high tier plays train and all valid_train games while both tiers score every
step: the d_t distribution that sets the oracle's thresholds, and the breakdown of which steps are
critical) → oracle (high only, low only, and the oracle sending the top 5 / 10 / 20 / 30% of train
steps by d_t high, on each split).
"""
import ml_collections

from mpr.agent.agent import agent_config
from mpr.agent.models import model_config
from mpr.config_util import env_config, parse_arg
from mpr.stages.collect import collect_config, tiers_config
from mpr.stages.oracle import oracle_config


def get_config(arg=None):
  arg = parse_arg(arg, high="bf16", low="int2-mse-emb", splits="valid_train", num_games=0, train_games=400, val_games=0,
                  tier="mpr", path="", engine="fast")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("collect", "oracle")
  c.env = env_config(engine=arg.engine)
  c.model = model_config(tier=arg.tier, path=arg.path)
  c.agent = agent_config()
  c.tiers = tiers_config(arg.high, arg.low)
  c.collect = collect_config(games=arg.train_games, val_games=arg.val_games)
  c.oracle = oracle_config(splits=tuple(arg.splits.split("+")), num_games=arg.num_games)
  return c
