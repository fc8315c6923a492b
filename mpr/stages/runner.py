"""The one skeleton every stage runs in: its folder, config fingerprint, log, reuse and resume.

  DIR/<stage>/config.json    the config sections the stage depends on (written before it runs)
  DIR/<stage>/log.txt        everything the stage logged
  DIR/<stage>/metrics.json   written atomically when the stage finishes: its presence means done
  DIR/<stage>/summary.md     the stage's human-readable result (written by the stage)

A finished stage is reused as is; an interrupted one is re-entered and resumes from what it wrote
(each stage keeps append-only logs of completed work). Re-entering a folder with a different config
is refused: silently mixing results of two configs is the failure this guards against.
"""
from __future__ import annotations

import json
import logging
import os
import time
from types import ModuleType
from typing import Any

import ml_collections

from mpr import io
from mpr.errors import UserError


def stage_config(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> dict[str, Any]:
  d = config.to_dict()
  missing = [k for k in keys if k not in d]
  if missing:
    raise UserError(f"config lacks section(s) {missing} needed by this stage")
  # Round-trip through JSON so tuples and lists compare equal to what was stored.
  return json.loads(json.dumps({k: d[k] for k in keys}, sort_keys=True))


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def run_stage(name: str, module: ModuleType, config: ml_collections.ConfigDict, workdir: str) -> dict:
  sdir = os.path.join(workdir, name)
  os.makedirs(sdir, exist_ok=True)
  fingerprint = stage_config(config, module.CONFIG_KEYS)
  cfg_path = os.path.join(sdir, "config.json")
  if os.path.exists(cfg_path):
    changed = _diff(io.read_json(cfg_path), fingerprint)
    if changed:
      raise UserError(f"{sdir} was made with a different config ({'; '.join(changed[:3])}); "
                      "use a new --workdir or delete that folder")
  else:
    io.atomic_write_json(cfg_path, fingerprint)

  metrics_path = os.path.join(sdir, "metrics.json")
  if os.path.exists(metrics_path):
    logging.info("stage %s: finished earlier, reusing %s", name, metrics_path)
    return io.read_json(metrics_path)

  handler = logging.FileHandler(os.path.join(sdir, "log.txt"))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    logging.info("stage %s: start in %s", name, sdir)
    t0 = time.time()
    metrics = module.run(config, sdir)
    metrics["stage_seconds"] = time.time() - t0
    io.atomic_write_json(metrics_path, metrics)
    logging.info("stage %s: done in %.1f s", name, metrics["stage_seconds"])
  finally:
    root.removeHandler(handler)
    handler.close()
  return metrics
