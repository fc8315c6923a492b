"""Stage `collect`: trajectories with per-step sensitivity, the router's training data.

The agent plays `collect.games` games of `collect.split` (and `collect.val_games` of
`collect.val_split`, for validation) acting with `collect.act` (the high tier, the low tier, or
random routing at `collect.p_high` for coverage of low-tier states). At every step both tiers score
the admissible commands on the same context, so per step the record holds both tiers' action
log-scores (`probe_logits`) and the low tier's embedding z_t (`z`: mean-pooled hidden state over the
step's new tokens; the low tier runs at every routed step anyway, so z costs no extra model call).

Outputs, per split: `episodes_<split>.jsonl` (resumable episode log) and `steps_<split>.npz`, the
StepTable: z, d_t = divergence(high, low) (direction `collect.direction`), the low tier's entropy and
top-2 margin, episode offsets, games, outcomes. In score mode a step's output is one command, so
"aggregation over the step's tokens" is the distribution over whole commands (each the sum of its
token log-probabilities).
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from mpr import io
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import check_disjoint
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import summary as summary_lib
from mpr.models.quant import precision
from mpr.records import Episode
from mpr.router import data, features, labels, routes
from mpr.stages.common import play_logged, serving_variants, split_games

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "collect")


def tiers_config(high: str = "bf16", low: str = "int3") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"high": high, "low": low})


def collect_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.split = "train"
  c.games = 400                 # evenly spaced games of `split` (0 = all)
  c.val_split = "valid_train"
  c.val_games = 100
  c.act = "high"                # high | low | random: who acts while both tiers score
  c.p_high = 0.5                # act=random: share of high steps
  c.direction = "high_low"      # d_t = KL(p_high ‖ p_low) | low_high | symmetric
  # Generate mode (agent.mode=generate): d_t from the tiers' next-token distributions along the acting
  # tier's generated tokens, the per-token KLs aggregated over the step as:
  c.token_reduce = "mean"       # mean | sum
  c.thinking = True             # count the tokens of a thinking block too
  c.update(overrides)
  return c


def check_tiers(tiers) -> None:
  for name in (tiers.high, tiers.low):
    precision(name)
  if tiers.high == tiers.low:
    raise UserError(f"tiers.high and tiers.low are both {tiers.high!r}")


def check_labels(direction: str, reduce: str, thinking: bool) -> None:
  """The `collect` label settings (direction, token_reduce, thinking), before any episode is played."""
  if direction not in labels.DIRECTIONS:
    raise UserError(f"unknown KL direction collect.direction={direction!r}; known: {list(labels.DIRECTIONS)}")
  if reduce not in ("mean", "sum"):
    raise UserError(f"collect.token_reduce must be mean or sum, got {reduce!r}")
  if not isinstance(thinking, bool):
    raise UserError(f"collect.thinking must be True or False, got {thinking!r}")


def token_step(token_labels: dict, direction: str, reduce: str = "mean", thinking: bool = True) -> tuple[float, float, float]:
  """(d_t, low entropy, low margin) of a generated step from its per-token labels (Step.token_labels):
  the KL in `direction` summed or averaged over the step's tokens (those of a thinking block only
  with `thinking`), entropy and margin averaged over the same tokens. A step cut off inside its
  thinking block has no other tokens: all of them count."""
  check_labels(direction, reduce, thinking)
  skip = 0 if thinking else int(token_labels["thinking"])
  col = {k: np.asarray(token_labels[k][skip:], np.float64) for k in agent_lib.TOKEN_LABELS}
  if col["kl_high_low"].size == 0:
    col = {k: np.asarray(token_labels[k], np.float64) for k in agent_lib.TOKEN_LABELS}
  kl = {"high_low": col["kl_high_low"], "low_high": col["kl_low_high"],
        "symmetric": 0.5 * (col["kl_high_low"] + col["kl_low_high"])}[direction]
  return (float(kl.mean() if reduce == "mean" else kl.sum()), float(col["low_entropy"].mean()),
          float(col["low_margin"].mean()))


def step_table(episodes: list[Episode], high: str, low: str, direction: str, reduce: str = "mean",
               thinking: bool = True) -> data.StepTable:
  """The router's view of collected episodes (each step must carry z and both tiers' scores, or, in
  generate mode, token-level labels)."""
  z, d, ent, mar, offsets = [], [], [], [], [0]
  for e in episodes:
    for s in e.steps:
      if s.z is None or (s.token_labels is None and set(s.probe_logits) < {high, low}):
        raise UserError(f"{e.game} step {s.t}: no embedding / tier scores (not a `collect` episode log?)")
      z.append(agent_lib.decode_z(s.z))
      if s.token_labels is not None:
        dt, h, m = token_step(s.token_labels, direction, reduce, thinking)
      else:
        lg = s.probe_logits
        dt, h, m = labels.divergence(lg[high], lg[low], direction), labels.entropy(lg[low]), labels.margin(lg[low])
      d.append(dt)
      ent.append(h)
      mar.append(m)
    offsets.append(offsets[-1] + len(e.steps))
  if not z:
    raise UserError("no steps collected (empty trajectory set)")
  f32 = lambda x: np.asarray(x, np.float32)
  return data.StepTable(z=np.stack(z).astype(np.float32), d=f32(d), offsets=np.asarray(offsets, np.int64),
                        low_entropy=f32(ent), low_margin=f32(mar), games=[e.game for e in episodes],
                        won=np.asarray([e.won for e in episodes], bool))


def table_path(sdir: str, split: str) -> str:
  return os.path.join(sdir, f"steps_{split}.npz")


def run(config, sdir: str) -> dict:
  env, cc, tiers = config.env, config.collect, config.tiers
  check_tiers(tiers)
  check_labels(cc.direction, cc.token_reduce, cc.thinking)
  if config.agent.mode == "generate" and "router" in config and features.needs_low_scores(config.router.inputs):
    raise UserError(f"router.inputs {list(config.router.inputs)} read the low tier's scores of the admissible "
                    "commands, which generate mode does not compute: use router.inputs=('z',) or agent.mode=score")
  policy = models.load(config.model)
  variants = serving_variants(config, sdir, policy, [tiers.high, tiers.low])
  route = routes.collect_route(tiers.high, tiers.low, cc.act, config.seed, cc.p_high, config.agent.mode)
  metrics: dict = {}
  lines = ["| split | games | success % | steps | d mean | d p50 | d p80 | d p95 | low entropy | low margin |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  if cc.split == cc.val_split:
    raise UserError(f"collect.split and collect.val_split are both {cc.split!r}: the router would be validated "
                    "on its training games")
  splits = {split: split_games(config, split, num) for split, num in ((cc.split, cc.games), (cc.val_split, cc.val_games))}
  check_disjoint(splits[cc.split], splits[cc.val_split], "collect")
  with open_pool(env) as pool:
    for split, games in splits.items():
      agent = agent_lib.from_config(config.agent, policy.tok, variants, rows=pool.num_slots, route=route,
                                    seed=config.seed, record_z=True)
      episodes = play_logged(pool, [(g, config.seed) for g in games], agent,
                             os.path.join(sdir, f"episodes_{split}.jsonl"), progress=f"collect {cc.act} on {split}")
      table = step_table(episodes, tiers.high, tiers.low, cc.direction, cc.token_reduce, cc.thinking)
      data.save(table_path(sdir, split), table)
      q = np.quantile(table.d, [0.5, 0.8, 0.95])
      success = summary_lib.summarize(episodes)["overall"]["success"]
      metrics[split] = {"games": len(games), "steps": table.num_steps, "success": success,
                        "embed_dim": int(table.z.shape[1]), "d_mean": float(table.d.mean()),
                        "d_quantiles": {"p50": float(q[0]), "p80": float(q[1]), "p95": float(q[2])}}
      lines.append(f"| {split} | {len(games)} | {100 * success:.1f} | {table.num_steps} | {table.d.mean():.4f} | "
                   f"{q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {table.low_entropy.mean():.3f} | "
                   f"{table.low_margin.mean():.3f} |")
  text = f"### collect: {cc.act} acting, d = KL {cc.direction} ({tiers.high} vs {tiers.low})\n\n" + "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
