"""What code, packages and devices made a result: recorded by every stage each time it runs.

A stage folder's `provenance.json` holds one entry per run of the stage (the first start and every
resume after a kill), so a result that mixed code versions says so:

  {"runs": [{"time": "2026-12-04T17:20:03Z", "git": {"commit": "adf1482…", "dirty": false},
             "mpr": "0.1.0", "python": "3.11.7", "packages": {"jax": "0.10.2", ...},
             "backend": "cpu", "devices": 1, "processes": 1}, ...]}

`summary(runs)` condenses it for a stage's metrics and tables: the commits, whether any run had
uncommitted changes to tracked files, whether several commits contributed.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Optional, Sequence

import mpr

PACKAGES = ("jax", "jaxlib", "flax", "aqtp", "optax", "orbax-checkpoint", "numpy", "textworld", "alfworld")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mpr.__file__)))


def git_state(root: str = _ROOT) -> Optional[dict]:
  """{"commit", "dirty"} of the checkout mpr runs from, or None when it is not one (an installed copy)."""
  def git(*args: str) -> str:
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
  try:
    if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
      return None     # mpr lies inside some other repository (e.g. site-packages under a project)
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": dirty}


def _version(name: str) -> Optional[str]:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def snapshot() -> dict:
  """This process's code, package versions and devices, now."""
  import jax
  return {"time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "git": git_state(), "mpr": mpr.__version__, "python": platform.python_version(),
          "packages": {p: _version(p) for p in PACKAGES}, "backend": jax.default_backend(),
          "devices": jax.device_count(), "processes": jax.process_count()}


def summary(runs: Sequence[dict]) -> dict:
  """{"commits": [...], "dirty": bool, "mixed": bool}: what a table needs to say about its code (every
  host's, where a run had several)."""
  gits = [h.get("git") or {} for r in runs for h in r.get("hosts", [r])]
  commits = list(dict.fromkeys(g.get("commit") or "unknown" for g in gits))
  return {"commits": commits, "dirty": any(g.get("dirty") for g in gits), "mixed": len(commits) > 1}


def caveat(s: dict) -> str:
  """A sentence for a table whose results are not from one clean commit; '' when they are."""
  notes = []
  if s.get("mixed"):
    notes.append(f"several code versions ({', '.join(c[:7] for c in s['commits'])}) contributed")
  if s.get("dirty"):
    notes.append("made from a tree with uncommitted changes")
  if s.get("commits") == ["unknown"]:
    notes.append("made outside a git checkout")
  return ("**Provenance:** " + "; ".join(notes) + ".") if notes else ""
