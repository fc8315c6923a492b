"""The embedded default model's BPE tokenizer, trained on ALFWorld train-game text.

  python launch.py --config experiments/configs/tokenizer_tiny.py --workdir workdirs/tokenizer
  cp workdirs/tokenizer/tokenizer/tokenizer*.json mpr/assets/tiny/
The shipped mpr/assets/tiny/tokenizer*.json was made by exactly these two commands (real train split).
"""
import ml_collections

from mpr.config_util import env_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, num_games=200, vocab_size=2048)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("tokenizer",)
  c.env = env_config()
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.split = "train"
  c.tokenizer.num_games = arg.num_games     # an evenly spaced sample of the split
  c.tokenizer.vocab_size = arg.vocab_size
  return c
