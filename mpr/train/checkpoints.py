"""Resumable training state: one orbax CheckpointManager per run folder.

State is checkpointed as host 0's values in numpy (`hosts.from_primary`): orbax writes host-local
numpy once from the primary host, where it refuses host-local jax arrays on a multi-host run, and
every host resumes from the same state.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpr import hosts
from mpr.errors import UserError


def restore_latest(directory: str, state: Any, max_to_keep: int = 1, save_interval_steps: int = 1):
  """(manager over `directory`, latest saved step or 0, `state` restored from it or as given).

  `state` is the freshly initialised pytree: its shapes and dtypes are what the restore expects, and
  its jax-array leaves come back as jax arrays."""
  import orbax.checkpoint as ocp
  mgr = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps))
  step = mgr.latest_step() or 0
  if step:
    try:
      got = mgr.restore(step, args=ocp.args.StandardRestore(jax.tree.map(np.asarray, state)))
    except Exception as e:  # orbax raises many types for a tree that is not this state's
      raise UserError(f"{directory}: step {step} does not hold this run's training state (another model, "
                      f"config or mpr version?): {type(e).__name__}: {str(e).splitlines()[0][:200]}; "
                      "delete the folder to start over") from None
    state = jax.tree.map(lambda mine, x: jnp.asarray(x) if isinstance(mine, jax.Array) else x, state, got)
  return mgr, step, state


def save(mgr, step: int, state: Any) -> Any:
  """Checkpoints host 0's copy of `state` as `step` and returns that copy (on one host, `state`
  itself); every host calls this."""
  import orbax.checkpoint as ocp
  state = hosts.from_primary(state)
  mgr.save(step, args=ocp.args.StandardSave(jax.tree.map(np.array, state)))
  return state
