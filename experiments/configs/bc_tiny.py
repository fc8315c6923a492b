"""The embedded default policy: tiny Qwen3-architecture model, behaviour cloning (+ optional DAgger).

The shipped policy is one run of this config (1300 steps of 8192 tokens: 2.2 min on one H200,
about 2 h on 2 CPU cores; the exploring expert's demonstrations take 3 min on 2 cores before it):

  python launch.py --config experiments/configs/bc_tiny.py --workdir workdirs/bc_tiny
  cp -r workdirs/bc_tiny/bc/policy/. mpr/assets/tiny/policy/      # what the repository ships

It clones the exploring expert on all 3553 train games (6.5 epochs, AdamW 2e-3, cosine). Longer
schedules overfit (validation NLL rises after ~1000 steps) and win fewer valid_train games; see
BENCHMARKS.md for the runs it was chosen from. `init=<policy folder>` trains on from a policy instead
(500 steps, lr 1e-3 restarted); `layers=N` changes the depth (mpr.models.config.tiny: 6).

Stages: expert_rollouts (the exploring expert on every train game, or `num_games` evenly spaced
ones, and on valid_train, for validation), then bc (round 0 = cloning, then `rounds` DAgger rounds on
fresh train games, each training a fixed number of steps on the growing aggregate). DAgger is off by
default: with this expert's labels it lowered valid_train success every way it was tried (BENCHMARKS.md).
On a GPU raise train.batch_tokens, the step counts and the game counts freely.
`bc.model` overrides other fields of the tiny shape (hidden_size, ...): edit them here.
"""
import ml_collections

from mpr.agent.agent import agent_config
from mpr.config_util import env_config, parse_arg
from mpr.train.lm import train_config


def get_config(arg=None):
  arg = parse_arg(arg, num_games=0, rounds=0, dagger_games=800, init="", layers=0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("expert_rollouts", "bc")
  c.env = env_config()
  c.expert = ml_collections.ConfigDict()
  c.expert.name = "exploring"
  c.expert.splits = ("train", "valid_train")
  c.expert.num_games = arg.num_games          # train games cloned (valid_train: all 200)
  c.agent = agent_config()
  c.bc = ml_collections.ConfigDict()
  c.bc.demos = ""                             # '' = this workdir's expert_rollouts/
  c.bc.split = "train"
  c.bc.val_split = "valid_train"
  c.bc.init = arg.init                        # '' = random init; a policy folder = train on from it
  c.bc.model = ml_collections.ConfigDict()   # overrides of mpr.models.config.tiny (num_layers, hidden_size, ...)
  if arg.layers:
    c.bc.model.num_layers = arg.layers
  c.bc.train = train_config(steps=1300, lr=2e-3, warmup_steps=30, batch_tokens=8192, ckpt_every=50)
  if arg.init:      # training on from a cloned policy: a fixed budget, the peak lr restarted lower
    c.bc.train.update(steps=500, lr=1e-3, warmup_steps=10)
  c.bc.dagger = ml_collections.ConfigDict()
  c.bc.dagger.rounds = arg.rounds
  c.bc.dagger.games = arg.dagger_games        # fresh train games per round, played by the policy
  c.bc.dagger.max_steps = 40                  # long enough to label the loops a lost policy falls into
  c.bc.dagger.branches = 0                    # corrections learned per episode: its first N disagreements (0 = all)
  c.bc.dagger.precision = "f32"
  # A fixed step budget per round (not epochs of an aggregate that grows every round); round r
  # shuffles with seed bc.train.seed + r.
  c.bc.dagger.train = ml_collections.ConfigDict({"steps": 400, "lr": 1e-3, "warmup_steps": 10})
  return c
