"""The one skeleton every stage runs in: its folder, config fingerprint, log, reuse and resume.

  DIR/<stage>/config.json    the config sections the stage depends on (written before it runs)
  DIR/<stage>/inputs.json    digests of what else it reads: model files, game source, earlier stages
  DIR/<stage>/log.txt        everything the stage logged (log.host<i>.txt from host i > 0 of a multi-host run)
  DIR/<stage>/provenance.json  one entry per run of the stage (start and every resume): git commit and
                             dirty flag, package versions, devices (mpr.provenance); every host's
                             when several run it
  DIR/<stage>/metrics.json   written atomically when the stage finishes: its presence means done
                             (with the env engine its episodes were played on, for stages that play,
                             and the provenance summary: commits, dirty, mixed)
  DIR/<stage>/summary.md     the stage's human-readable result (written by the stage)
  DIR/<stage>/.lock          held while a run is in the folder: a second run fails at once with one line

A finished stage is reused as is; an interrupted one is re-entered and resumes from what it wrote
(each stage keeps append-only logs of completed work). Re-entering a folder with a different config
or other inputs (another model under the same path, games from another ALFWORLD_DATA, a re-run
earlier stage) is refused: silently mixing results of two setups is the failure this guards against.

On a multi-host run every host runs every stage (see mpr/hosts.py) and they meet at each stage's end,
so no host starts a stage before the files of the one before it are complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from types import ModuleType
from typing import Any

import ml_collections

from mpr import hosts, io, provenance
from mpr.agent import models
from mpr.envs import games
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


def check_workdir(workdir: str) -> None:
  """A workdir that is a file, lies under one, or cannot be written fails here in one line, not
  halfway through a stage."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"--workdir {workdir} is not writable")


@contextlib.contextmanager
def _exclusive(sdir: str):
  """Holds the stage folder's lock: two runs in one workdir would play every episode into one log twice.
  The kernel drops the lock when the process ends, however it ends. Hosts of one multi-host run share
  the folder, so each locks its own file."""
  path = hosts.host_path(os.path.join(sdir, ".lock"))
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f"{sdir} is in use by another run (it holds {path}); wait for it or use another "
                      "--workdir") from None
    yield


def run_stage(name: str, module: ModuleType, config: ml_collections.ConfigDict, workdir: str) -> dict:
  sdir = os.path.join(workdir, name)
  os.makedirs(sdir, exist_ok=True)
  with _exclusive(sdir):
    metrics = _run_once(name, module, config, sdir)
  hosts.sync(f"stage {name} done")
  return metrics


def stage_inputs(module: ModuleType, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """What a stage reads besides its config: the model's files, where its games come from, the
  finished stages of this workdir it builds on (`module.READS`) and whatever else `module.inputs(config)`
  names, each by digest; a model stage of a run that converts its tiers reads `convert`."""
  keys, out = module.CONFIG_KEYS, {}
  if "model" in keys:
    out["model"] = models.fingerprint(config.model)
  if "env" in keys:
    out["games"] = games.data_fingerprint(config.env, config.seed)
  if hasattr(module, "inputs"):          # what else the stage's own config points at
    out.update(module.inputs(config))
  reads = list(getattr(module, "READS", ()))
  if "model" in keys and "convert" in config.stages and not getattr(module, "CONVERTS", False):
    reads.append("convert")               # it serves the converted tiers (common.serving_variants)
  for stage in reads:
    out[f"stage {stage}"] = _made_from(os.path.join(workdir, stage))
  return json.loads(json.dumps(out, sort_keys=True))


def _made_from(sdir: str) -> str | None:
  """A finished stage's identity: the digest of the config and inputs it was made from (None while
  unfinished). Not of its metrics, which hold each host's own timings."""
  if not os.path.exists(os.path.join(sdir, "metrics.json")):
    return None
  h = hashlib.sha256()
  for name in ("config.json", "inputs.json"):
    with open(os.path.join(sdir, name), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def _check_or_record(sdir: str, name: str, what: str, now: dict) -> None:
  path = os.path.join(sdir, name)
  if not os.path.exists(path):
    io.atomic_write_json(path, now)
    return
  changed = _diff(io.read_json(path), now)
  if changed:
    raise UserError(f"{sdir} was made with {what} ({'; '.join(changed[:3])}); "
                    "use a new --workdir or delete that folder")


def _run_once(name: str, module: ModuleType, config: ml_collections.ConfigDict, sdir: str) -> dict:
  cfg_path, inputs_path = (os.path.join(sdir, f) for f in ("config.json", "inputs.json"))
  if os.path.exists(cfg_path) and not os.path.exists(inputs_path):
    raise UserError(f"{sdir} was made by an older mpr that did not record its inputs, so a changed model "
                    "or data could not be noticed; use a new --workdir or delete that folder")
  # inputs.json first: the hosts of a multi-host run record both, and one that finds config.json must
  # find inputs.json too.
  _check_or_record(sdir, "inputs.json", "other inputs", stage_inputs(module, config, os.path.dirname(sdir)))
  _check_or_record(sdir, "config.json", "a different config", stage_config(config, module.CONFIG_KEYS))

  metrics_path = os.path.join(sdir, "metrics.json")
  if os.path.exists(metrics_path):
    logging.info("stage %s: finished earlier, reusing %s", name, metrics_path)
    metrics = io.read_json(metrics_path)
  else:
    runs = _record_run(sdir)
    try:
      metrics = _run_logged(name, module, config, sdir)
    except UserError:
      _forget_if_nothing_done(sdir)
      raise
    if "env" in module.CONFIG_KEYS:     # the engine every episode of the stage was played on
      metrics = {**metrics, "engine": config.env.engine}
    metrics["provenance"] = provenance.summary(runs)
    hosts.sync(f"stage done in {sdir}")      # every host has written its summary.md before the note
    _note_provenance(sdir, metrics["provenance"])
    io.atomic_write_json(metrics_path, metrics)
  return metrics


def _note_provenance(sdir: str, summary: dict) -> None:
  """A summary.md made from uncommitted or mixed code says so under its tables."""
  path, note = os.path.join(sdir, "summary.md"), provenance.caveat(summary)
  if note and hosts.is_primary() and os.path.exists(path):
    with open(path) as f:
      io.atomic_write_text(path, f.read().rstrip("\n") + "\n\n" + note + "\n")


def _record_run(sdir: str) -> list[dict]:
  """Appends this run to the stage's provenance.json (resumes add entries) and returns all of them.

  On several hosts the entry is host 0's and lists every host's snapshot under "hosts": a host running
  other code makes the result mixed."""
  path = os.path.join(sdir, "provenance.json")
  runs = io.read_json(path)["runs"] if os.path.exists(path) else []
  snap = provenance.snapshot()
  if hosts.count() > 1:
    io.atomic_write_json(hosts.host_path(path), snap)
    hosts.sync(f"provenance of {sdir}")
    stem, ext = os.path.splitext(path)
    snap["hosts"] = [io.read_json(f"{stem}.host{i}{ext}") for i in range(hosts.count())]
    hosts.sync(f"provenance of {sdir} read")      # every host has read every file before they go
    os.remove(hosts.host_path(path))
  runs.append(snap)
  if hosts.is_primary():
    io.atomic_write_json(path, {"runs": runs})
  return runs


def _forget_if_nothing_done(sdir: str) -> None:
  """Removes a stage folder that holds only its recorded config and log, as a run refused for bad input
  leaves it, so the corrected rerun is not refused as "a different config"."""
  if hosts.is_primary() and all(f in ("config.json", "inputs.json", "provenance.json", ".lock")
                                or f.startswith(("log.", ".lock.host"))
                                for f in os.listdir(sdir)):
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
