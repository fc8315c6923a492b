"""Stage `convert`: quantize once. Each tier the run serves (tiers.high, tiers.low) is written as a
frozen serving variant in convert/<precision>/ (orbax through checkpoint.save_variant: only what
serving reads, file hashes checked on load, renamed into place so a kill leaves no half tier).

Every later stage of the same run that serves the model restores these (common.serving_variants),
split over its mesh as they are read, instead of quantizing the float weights again; their float
copy is never put on a device. A tier already written is kept when the stage resumes.
"""
from __future__ import annotations

import os
import time

from mpr import hosts, io
from mpr.agent import agent as agent_lib, models
from mpr.models import checkpoint
from mpr.models.quant import precision, tree_bytes
from mpr.models.variants import make_variant
from mpr.stages.collect import check_tiers

CONFIG_KEYS = ("model", "tiers")
CONVERTS = True      # runner: the one model stage that does not read convert/ itself


def tier_dir(sdir: str, name: str) -> str:
  return os.path.join(sdir, name)


def run(config, sdir: str) -> dict:
  check_tiers(config.tiers)
  policy = models.load(config.model)
  mesh = agent_lib.mesh_of(config.agent)       # where the variant is computed; the files do not depend on it
  metrics, lines = {}, ["| tier | bytes | seconds |", "|---|---:|---:|"]
  for name in (config.tiers.high, config.tiers.low):
    path, start = tier_dir(sdir, name), time.perf_counter()
    if not os.path.isfile(os.path.join(path, "model.json")):
      variant = make_variant(policy.cfg, policy.params, precision(name), mesh=mesh)
      if hosts.is_primary():
        checkpoint.save_variant(path, variant)
      hosts.sync(f"convert {name}")
    size = tree_bytes(checkpoint.load_variant(path).variables)
    metrics[name] = {"bytes": size, "seconds": round(time.perf_counter() - start, 2)}
    lines.append(f"| {name} | {size:,} | {metrics[name]['seconds']} |")
  text = "### convert: frozen serving tiers\n\n" + "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return metrics
