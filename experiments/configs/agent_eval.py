"""The agent at fixed precisions on one split (default: the shipped tiny policy on valid_seen).

  python launch.py --config experiments/configs/agent_eval.py --workdir workdirs/eval_tiny
  ...:runlocal                                   a quick subset (the README's main command)
  ...:split=valid_unseen,precisions=bf16+int4    any split; '+'-separated precisions
  ...:precisions=bf16+int4-g32-emb+w4a8          with options (mpr.models.quant: groups, mse, head, emb)
  ...:tier=hf,path=/ckpt/Qwen3-8B,format=chat-qwen3   another model tier (mpr.agent.models)
  ...:engine=textworld                           on the real engine: the same episodes as on FastEnv
                                                 (compare with `python -m mpr.eval.crosscheck A/eval B/eval`)

The first precision is the reference of the comparison table.
"""
import ml_collections

from mpr.agent.agent import agent_config
from mpr.agent.models import model_config
from mpr.config_util import env_config, parse_arg, runlocal_default


def get_config(arg=None):
  arg = parse_arg(arg, split="valid_seen", num_games=0, precisions="bf16+int8+int4+int3+int2",
                  tier="mpr", path="", format="compact", mode="score", runlocal=False, engine="fast")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("eval",)
  c.env = env_config(engine=arg.engine)
  c.model = model_config(tier=arg.tier, path=arg.path)
  c.agent = agent_config(format=arg.format, mode=arg.mode)
  c.eval = ml_collections.ConfigDict()
  c.eval.split = arg.split
  c.eval.num_games = runlocal_default(arg, "num_games", 36)     # 0 = every game of the split
  c.eval.precisions = tuple(arg.precisions.split("+"))
  c.eval.fidelity = True        # per-token KL / argmax agreement of each quantized precision vs the first
  return c
