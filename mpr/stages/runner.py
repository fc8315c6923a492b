"""The one skeleton every stage runs in: its folder, config fingerprint, log, reuse and resume.

  DIR/<stage>/config.json    the config sections the stage depends on (written before it runs)
  DIR/<stage>/log.txt        everything the stage logged (log.host<i>.txt from host i > 0 of a multi-host run)
  DIR/<stage>/metrics.json   written atomically when the stage finishes: its presence means done
  DIR/<stage>/summary.md     the stage's human-readable result (written by the stage)

A finished stage is reused as is; an interrupted one is re-entered and resumes from what it wrote
(each stage keeps append-only logs of completed work). Re-entering a folder with a different config
is refused: silently mixing results of two configs is the failure this guards against.

On a multi-host run every host runs every stage (see mpr/hosts.py) and they meet at each stage's end,
so no host starts a stage before the files of the one before it are complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from types import ModuleType
from typing import Any

import ml_collections

from mpr import hosts, io
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
    metrics = io.read_json(metrics_path)
  else:
    try:
      metrics = _run_logged(name, module, config, sdir)
    except UserError:
      _forget_if_nothing_done(sdir)
      raise
    io.atomic_write_json(metrics_path, metrics)
  hosts.sync(f"stage {name} done")
  return metrics


def _forget_if_nothing_done(sdir: str) -> None:
  """Removes a stage folder that holds only its recorded config and log, as a run refused for bad input
  leaves it, so the corrected rerun is not refused as "a different config"."""
  if hosts.is_primary() and all(f == "config.json" or f.startswith("log.") for f in os.listdir(sdir)):
    shutil.rmtree(sdir)


def _run_logged(name: str, module: ModuleType, config: ml_collections.ConfigDict, sdir: str) -> dict:
  handler = logging.FileHandler(hosts.host_path(os.path.join(sdir, "log.txt")))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    logging.info("stage %s: start in %s", name, sdir)
    t0 = time.time()
    metrics = module.run(config, sdir)
    metrics["stage_seconds"] = time.time() - t0
    logging.info("stage %s: done in %.1f s", name, metrics["stage_seconds"])
    return metrics
  finally:
    root.removeHandler(handler)
    handler.close()
