"""Stage `bc`: the tiny default policy, by behaviour cloning and DAgger.

  round 0   clone the expert: next-token loss on the action tokens of the expert's train episodes
            (from the `expert_rollouts` stage in the same workdir, or `bc.demos`)
  round r   DAgger: the current policy plays `bc.dagger.games` fresh train games while the expert
            watches and labels every visited state; the labelled states join the data and the
            policy trains on the aggregate (its compounding errors are what pure cloning misses)

Everything resumes: each round's rollouts are an fsynced episode log, its training checkpoints
under round_<r>/ckpt, its result round_<r>/model (a policy folder, f32). The final policy (f32 params + tokenizer) is
written to `policy/`, which is what mpr/assets/tiny/policy ships (see experiments/configs/bc_tiny.py).
"""
from __future__ import annotations

import os

import numpy as np

from mpr import hosts, io
from mpr.agent import agent as agent_lib, demos, models, prompt
from mpr.envs.pool import open_pool
from mpr.errors import UserError
from mpr.eval import summary as summary_lib
from mpr.models import checkpoint, tiny
from mpr.models.quant import precision
from mpr.models.variants import make_variant
from mpr.records import Episode
from mpr.stages.common import play_logged, split_games
from mpr.train import lm

CONFIG_KEYS = ("seed", "env", "expert", "agent", "bc")
READS = ("expert_rollouts",)         # when bc.demos is ''


def _episodes(path: str) -> list[Episode]:
  if not os.path.isfile(path):
    raise UserError(f"no demonstrations at {path}: run the expert_rollouts stage first (or set bc.demos)")
  return [Episode.from_json(r) for r in io.read_jsonl(path)]


def _dagger_rollouts(config, cfg, params, tok, r: int, rdir: str) -> list[Episode]:
  env, dc = config.env, config.bc.dagger
  games = split_games(config, config.bc.split)
  pick = np.sort(np.random.default_rng([config.seed, r]).choice(len(games), min(dc.games, len(games)), replace=False))
  games = [games[i] for i in pick]
  variant = make_variant(cfg, params, precision(dc.precision), mesh=agent_lib.mesh_of(config.agent))
  with open_pool(env, max_steps=dc.max_steps, expert=config.expert.name) as pool:
    agent = agent_lib.from_config(config.agent, tok, {dc.precision: variant}, rows=pool.num_slots,
                                  route=agent_lib.fixed(dc.precision), seed=config.seed)
    return play_logged(pool, [(g, config.seed) for g in games], agent,
                       os.path.join(rdir, "episodes.jsonl"), progress=f"DAgger round {r}")


def inputs(config) -> dict:
  """The policy bc trains on from, by digest (mpr.stages.runner records it with the stage's inputs)."""
  return {"bc.init": models.fingerprint(models.model_config(path=config.bc.init))} if config.bc.init else {}


def start_params(bc, cfg, seed: int) -> dict:
  """Random init, or the params of the policy folder `bc.init`: training goes on from that policy
  (e.g. more cloning epochs or DAgger rounds on top of a shipped one, without redoing its rounds)."""
  if not bc.init:
    return tiny.init_params(cfg, seed)
  got, params = checkpoint.load_model(bc.init)
  if got != cfg:
    raise UserError(f"bc.init {bc.init}: its model {checkpoint.config_to_json(got)} is not this config's "
                    f"{checkpoint.config_to_json(cfg)} (set bc.model to match it)")
  mine, ours = (os.path.join(d, "tokenizer.json") for d in (bc.init, tiny.ASSETS))
  if not os.path.isfile(mine) or io.file_digest(mine) != io.file_digest(ours):
    raise UserError(f"bc.init {bc.init}: its tokenizer is not the tiny policy's ({tiny.ASSETS})")
  return params


def run(config, sdir: str) -> dict:
  bc, ac = config.bc, config.agent
  if bc.dagger.branches < 0:
    raise UserError(f"bc.dagger.branches must be >= 0 (0 = every disagreement), got {bc.dagger.branches}")
  if ac.format != "compact":
    raise UserError(f"bc trains the tiny policy, whose format is compact (agent.format={ac.format!r})")
  tok = tiny.tokenizer()
  cfg = tiny.model_config(tok, **bc.model.to_dict())
  source = bc.demos or os.path.join(os.path.dirname(sdir), "expert_rollouts")
  to_examples = lambda eps, branches=0: demos.examples(eps, tok, prompt.COMPACT, ac.budget, ac.max_action_tokens,
                                                      branches)
  train_ex = to_examples(_episodes(os.path.join(source, f"episodes_{bc.split}.jsonl")))
  val_ex = to_examples(_episodes(os.path.join(source, f"episodes_{bc.val_split}.jsonl")))
  params = start_params(bc, cfg, config.seed)
  dagger_ex: list[demos.Example] = []
  metrics: dict = {"demo_examples": len(train_ex), "val_examples": len(val_ex), "rounds": []}
  for r in range(bc.dagger.rounds + 1):
    rdir = os.path.join(sdir, f"round_{r}")
    row = {"round": r}
    if r > 0:
      episodes = _dagger_rollouts(config, cfg, params, tok, r, rdir)
      dagger_ex += to_examples(episodes, bc.dagger.branches)
      row["dagger_success"] = summary_lib.summarize(episodes)["overall"]["success"]
    model_dir = os.path.join(rdir, "model")
    if os.path.isfile(os.path.join(model_dir, "model.json")):
      cfg, params = checkpoint.load_model(model_dir)
      row.update(io.read_json(os.path.join(rdir, "train.json")))
    else:
      # Each round its own batch order: with a step cap, each round trains on another sample.
      tc = bc.train if r == 0 else lm.train_config(**{**bc.train.to_dict(), **bc.dagger.train.to_dict(),
                                                      "seed": bc.train.seed + r})
      params, result = lm.train(cfg, params, train_ex + dagger_ex, val_ex, tc, rdir, label=f"bc round {r}")
      io.atomic_write_json(os.path.join(rdir, "train.json"), result)   # before the model: it marks done
      if hosts.is_primary():   # folders are written by one host (every host holds the same params)
        # A policy folder (agent_eval.py:path=... evaluates any round), in f32: the next round trains on.
        models.save_policy(model_dir, cfg, params, tiny.ASSETS, extra={"round": r}, param_dtype="float32")
      row.update(result)
    row["dagger_examples"] = len(dagger_ex)
    metrics["rounds"].append(row)
  if hosts.is_primary():
    # f32: the master weights every precision variant is made from (bf16 is itself a variant).
    models.save_policy(os.path.join(sdir, "policy"), cfg, params, tiny.ASSETS,
                       extra={"made_by": "experiments/configs/bc_tiny.py", "init": bc.init,
                              "rounds": metrics["rounds"]}, param_dtype="float32")
  lines = ["| round | examples (demo + DAgger) | DAgger success on train | val NLL | val token acc |",
           "|---|---|---|---|---|"]
  for row in metrics["rounds"]:
    succ = row.get("dagger_success")
    lines.append(f"| {row['round']} | {len(train_ex)} + {row['dagger_examples']} | "
                 f"{'—' if succ is None else f'{100 * succ:.1f}%'} | {row['val_nll']:.4f} | "
                 f"{100 * row['val_token_accuracy']:.1f}% |")
  text = "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
