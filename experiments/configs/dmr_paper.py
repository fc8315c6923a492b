"""The paper's settings: Qwen3-1.7B / 4B / 8B and DeepSeek-R1-Distill-Llama-8B, bf16 high tier, GPTQ int4
or int3 weight-only low tier (made once by the `convert` stage), on an accelerator. Bring the Hugging Face checkpoint folder yourself
(config.json, *.safetensors, tokenizer.json; no model hub is reached).

  python launch.py --config experiments/configs/dmr_paper.py:model=qwen3-8b,path=/ckpt/Qwen3-8B \
      --workdir workdirs/dmr_qwen3_8b
  ...:model=r1-llama-8b,path=/ckpt/DeepSeek-R1-Distill-Llama-8B,low=int3-gptq
  ...:low=int4                       # round to nearest instead: no calibration episodes

Devices: the agent runs on a ("data", "model") mesh of the local devices (`agent.devices`, 0 = all):
episode rows split over "data" (`env.num_slots` a multiple of it), weights and kv heads over "model"
(`mp=M`, i.e. agent.model_parallel; 1 = weights replicated, so an 8B bf16 copy of 16 GB plus its
int4 sibling must then fit each device). Hosts (mpr/hosts.py): run the same
command on every host with one --workdir they all see (NFS, a gcsfuse mount) and --distributed (TPU
slices and Slurm are detected; elsewhere --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I); each host plays its share of every stage's episodes on its own devices and all of
them train the same router from the merged logs. Environment workers are CPU processes: set
env.num_workers to the host's cores minus two.

The agent scores the admissible commands (score mode) through the model's own chat template; the
routing stages read both tiers' distributions over those commands. With --config.agent.mode=generate
the agent writes its action, and collect labels each step as the paper does: the acting tier's
generated tokens are fed through both tiers and d_t aggregates their per-token KL
(collect.token_reduce = mean | sum, collect.thinking: whether a thinking block's tokens count).
"""
import ml_collections

from mpr.agent.agent import agent_config
from mpr.agent.models import model_config
from mpr.config_util import env_config, parse_arg
from mpr.errors import UserError
from mpr.router.grpo import grpo_config
from mpr.router.model import router_config
from mpr.router.sl import sl_config
from mpr.models.quant import precision
from mpr.stages.collect import collect_config, tiers_config
from mpr.stages.convert import convert_config
from mpr.stages.route_eval import eval_config

# model -> (chat format, context budget in tokens)
MODELS = {
    "qwen3-1.7b": ("chat-qwen3", 6144),
    "qwen3-4b": ("chat-qwen3", 6144),
    "qwen3-8b": ("chat-qwen3", 6144),
    "r1-llama-8b": ("chat-deepseek-r1", 6144),
}


def get_config(arg=None):
  arg = parse_arg(arg, model="qwen3-8b", path="", low="int4-gptq", split="valid_unseen", num_games=0,
                  workers=14, slots=32, mp=1)
  if arg.model not in MODELS:
    raise UserError(f"unknown paper model {arg.model!r}; known: {sorted(MODELS)}")
  if precision(arg.low).weight_bits not in (4, 3):
    raise UserError(f"the paper's low tiers are 4- and 3-bit weights, got {arg.low!r}")
  fmt, budget = MODELS[arg.model]
  c = ml_collections.ConfigDict()
  c.seed = 0
  # convert first: both tiers are quantized once and every later stage restores them split over its mesh.
  c.stages = ("convert", "collect", "router_sl", "router_grpo", "router_grpo_scratch", "route_eval")
  c.env = env_config(num_workers=arg.workers, num_slots=arg.slots)
  c.model = model_config(tier="hf", path=arg.path, max_seq_len=budget + 512)
  c.agent = agent_config(format=fmt, budget=budget, max_action_tokens=32, model_parallel=arg.mp)
  c.tiers = tiers_config("bf16", arg.low)
  c.convert = convert_config()
  c.collect = collect_config(games=1000, val_games=200)
  c.router = router_config(width=128, heads=4, mlp_dim=256, max_len=32)
  c.router_sl = sl_config(quantile=0.8, epochs=40, batch_size=512)
  c.router_sl.data = ""
  c.router_grpo = grpo_config(iterations=30, games_per_iter=16, group_size=8, num_games=c.collect.games)
  # The paper reports valid_unseen (134 games) and valid_seen (140).
  c.eval = eval_config(arg.split, arg.num_games)
  return c
