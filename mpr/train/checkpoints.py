"""Resumable training state: one orbax CheckpointManager per run folder."""
from __future__ import annotations

import os
from typing import Any

import jax


def restore_latest(directory: str, state: Any, max_to_keep: int = 1, save_interval_steps: int = 1):
  """(manager over `directory`, latest saved step or 0, `state` restored from it or as given).

  `state` is the freshly initialised pytree: its shapes and dtypes are what the restore expects."""
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps))
  step = mgr.latest_step() or 0
  if step:
    state = mgr.restore(step, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, state)))
  return mgr, step, state
