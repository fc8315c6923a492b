"""Stage `convert`: quantize once. Each tier the run serves (tiers.high, tiers.low) is written as a
frozen serving variant in convert/<precision>/ (orbax through checkpoint.save_variant: only what
serving reads, file hashes checked on load, renamed into place so a kill leaves no half tier).

A `-gptq` tier (e.g. int4-gptq, int3-mse-gptq) is quantized here by GPTQ (mpr.models.gptq): the
exploring expert plays `convert.calib_games` games of `convert.calib_split`, its episodes are rendered as
the agent reads them (agent.format, agent.budget) and cut into `convert.segments` sequences of
`convert.seq_len` tokens, whose activations give every projection's Hessian.

Every later stage of the same run that serves the model restores these (common.serving_variants),
split over its mesh as they are read, instead of quantizing the float weights again; their float
copy is never put on a device. A tier already written is kept when the stage resumes.
"""
from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from mpr import hosts, io
from mpr.agent import agent as agent_lib, demos, models
from mpr.envs.pool import open_pool
from mpr.envs.rollout import expert_policy
from mpr.models import checkpoint, gptq
from mpr.models.quant import precision, tree_bytes
from mpr.models.variants import abstract_variables, make_variant
from mpr.stages.collect import check_tiers
from mpr.stages.common import play_logged, split_games

CONFIG_KEYS = ("seed", "env", "model", "agent", "tiers", "convert")
CONVERTS = True      # runner: the one model stage that does not read convert/ itself


def convert_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.calib_split = "train"      # GPTQ calibration: where the expert plays (never an evaluation split)
  c.calib_games = 48
  c.segments = 32              # calibration sequences ...
  c.seq_len = 512              # ... of this many tokens
  c.damp = 0.01                # GPTQ's Hessian damping, a fraction of its mean diagonal
  c.update(overrides)
  return c


def calibration(config, policy, sdir: str) -> list[np.ndarray]:
  """GPTQ's calibration sequences: agent contexts of the exploring expert's episodes, which walk
  more of each house than the shortest path does."""
  cc = config.convert
  games = split_games(config, cc.calib_split, cc.calib_games)
  with open_pool(config.env, expert="exploring") as pool:
    episodes = play_logged(pool, [(g, config.seed) for g in games], expert_policy,
                           os.path.join(sdir, f"calibration_{cc.calib_split}.jsonl"),
                           progress=f"calibration on {cc.calib_split}")
  fmt = agent_lib.prompt_format(config.agent)
  contexts = demos.examples(episodes, policy.tok, fmt, config.agent.budget, reserve=config.agent.max_action_tokens)
  return gptq.segments([x.tokens for x in contexts], cc.segments, cc.seq_len)


def run(config, sdir: str) -> dict:
  check_tiers(config.tiers)
  policy = models.load(config.model)
  # Where the variant is computed. The files do not depend on it, except a -pallas tier's int4/int3
  # packing, which follows the model axis (agent is in CONFIG_KEYS: another mesh is another convert).
  mesh = agent_lib.mesh_of(config.agent)
  names = (config.tiers.high, config.tiers.low)
  # Every host decides from the same folder state: none writes before all have looked.
  hosts.sync("convert: look")
  todo = [n for n in names if not os.path.isfile(os.path.join(sdir, n, "model.json"))]
  hosts.sync("convert: looked")
  calib = None
  metrics, lines = {}, ["| tier | bytes | converted in (s) |", "|---|---:|---:|"]
  for name in names:
    prec, start, seconds = precision(name), time.perf_counter(), None
    if name in todo:
      if prec.gptq:
        calib = calibration(config, policy, sdir) if calib is None else calib
        # Layer by layer, again for each GPTQ tier: one layer's Hessians held at a time, at the cost of
        # one more float forward pass over the calibration (cheap beside the solver).
        hs = gptq.hessians(policy.cfg, policy.params, calib, head=prec.quant_head, mesh=mesh)
        variant = gptq.make_variant(policy.cfg, policy.params, prec, hs, config.convert.damp, mesh=mesh)
      else:
        variant = make_variant(policy.cfg, policy.params, prec, mesh=mesh)
      if hosts.is_primary():
        checkpoint.save_variant(os.path.join(sdir, name), variant)
      hosts.sync(f"convert {name}")
      seconds = round(time.perf_counter() - start, 2)
    size = tree_bytes(abstract_variables(policy.cfg, prec))
    metrics[name] = {"bytes": size, "seconds": seconds}     # seconds: None when converted by an earlier run
    lines.append(f"| {name} | {size:,} | {'earlier run' if seconds is None else seconds} |")
  text = "### convert: frozen serving tiers\n\n" + "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
