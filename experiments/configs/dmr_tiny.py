"""Dynamic mixed-precision routing on the embedded default (the shipped tiny policy), on CPU.

  python launch.py --config experiments/configs/dmr_tiny.py --workdir workdirs/dmr_tiny
  ...:runlocal                       the reduced pipeline of the README's main command
  ...:low=int2,high=bf16             the two tiers (default bf16 / int2-mse-emb: chosen on valid_train, BENCHMARKS.md)
  ...:engine=textworld               every episode on the real engine (the same episodes as on FastEnv)
  --config.router.inputs="('z','entropy','margin')"   the router also reads the low tier's entropy / margin

Stages: collect (both tiers score every step of train / valid_train episodes; z_t from the low
tier) → router_sl (KL-ST) → router_grpo (from the KL-ST router; `router_grpo_scratch`: from a
random init, the GRPO-only ablation) → route_eval (every method and operating point on
`eval.split`; Tables 1-4, Pareto plot).

Measured on 2 CPU cores, two processes one per core (README, "GPUs, TPUs and several hosts"), full run
at 0ff4aff: collect 1000 + 200 games 16 min, router_sl (3 seeds) 10.5 min, router_grpo (3 λ × 20
iterations × 8 games × 8 episodes, the selection on valid_train, 2 more seeds) 80 min, the scratch
ablation 15 min; route_eval plays 2 + 10 points per pre-set share (3 routers, their 3 random baselines,
entropy, margin, first-k, oracle) and the other seeds' routers at 20% and 30%: 50 points of 500
episodes, about 7.6 h (a router point ~9 min, random and heuristics 6-9 min, the oracle 11-12 min).
"""
import ml_collections

from mpr.agent.agent import agent_config
from mpr.agent.models import model_config
from mpr.config_util import env_config, parse_arg, runlocal_default
from mpr.router.grpo import grpo_config
from mpr.router.model import router_config
from mpr.router.sl import sl_config
from mpr.stages.collect import collect_config, tiers_config
from mpr.stages.convert import convert_config
from mpr.stages.route_eval import eval_config


def get_config(arg=None):
  arg = parse_arg(arg, high="bf16", low="int2-mse-emb", split="valid_seen", num_games=0, runlocal=False,
                  tier="mpr", path="", format="compact", engine="fast")
  c = ml_collections.ConfigDict()
  c.seed = 0
  # runlocal (`make demo`) shows the pipeline and its baselines working within 20 minutes on 2 cores, also on
  # generated games, where TextWorld steps cost ~130 ms (50 ms on the released games) and the tiny
  # policy's failed episodes run to the step cap: fewer games, a 30-step cap, one GRPO iteration and
  # no GRPO-from-scratch ablation. It is a demonstration, not a measurement (that is the full run).
  c.stages = ("collect", "router_sl", "router_grpo", *(() if arg.runlocal else ("router_grpo_scratch",)),
              "route_eval")
  c.env = env_config(max_steps=30 if arg.runlocal else 50, engine=arg.engine)
  c.model = model_config(tier=arg.tier, path=arg.path)
  c.agent = agent_config(format=arg.format)
  c.tiers = tiers_config(arg.high, arg.low)
  c.convert = convert_config()     # used when 'convert' is added to the stages (e.g. for a -gptq low tier)
  c.collect = collect_config(games=12 if arg.runlocal else 1000, val_games=6 if arg.runlocal else 200)
  # The router reads the paper's z and the low tier's entropy and margin at the step: chosen on valid_train
  # (results/router_inputs_tiny/: AP 0.859 against 0.573 for z alone).
  c.router = router_config(width=64, heads=4, mlp_dim=128, max_len=32, inputs=("z", "entropy", "margin"))
  seeds = (0,) if arg.runlocal else (0, 1, 2)
  c.router_sl = sl_config(quantile=0.8, epochs=20 if arg.runlocal else 40, batch_size=256, seeds=seeds)
  c.router_sl.data = ""                  # '' = this workdir's collect/
  # GRPO draws its rounds from the games collect played, so no further games are generated. Full run: λ swept
  # and kept on valid_train, then three seeds there. The loss mean and advantage scaling are grpo_config's
  # defaults (decision, center), kept by an earlier 12-setting sweep on valid_train (BENCHMARKS.md); add
  # `--config.router_grpo.loss_means="('decision','episode')"` (or `advantages`) to sweep them again.
  c.router_grpo = grpo_config(iterations=1 if arg.runlocal else 20, games_per_iter=2 if arg.runlocal else 8,
                              group_size=4 if arg.runlocal else 8, num_games=c.collect.games, seeds=seeds,
                              lams=(0.2,) if arg.runlocal else (0.05, 0.2, 0.5))
  # Every method at the same pre-set shares of validation steps sent high (runlocal: 20% only); the full
  # run plays valid_seen and 360 generated test games at every point (500 episodes).
  c.eval = eval_config(arg.split, runlocal_default(arg, "num_games", 6),
                       shares=(0.2,) if arg.runlocal else (0.1, 0.2, 0.3, 0.5),
                       seed_shares=() if arg.runlocal else (0.2, 0.3),
                       generated_split="" if arg.runlocal else "test_generated")
  return c
