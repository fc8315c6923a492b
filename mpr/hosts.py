"""Multi-host runs: one `launch.py` process per host, joined by `jax.distributed`, sharing one workdir.

Why this shape: every model mpr serves fits one host, so hosts split the *episodes*, not the
model. Each host serves the policy on its own devices (the agent's mesh is over
`jax.local_devices()`), plays its share of a stage's games into its own episode log in the shared
workdir, and after a barrier reads every host's log: all hosts then hold the same episodes and run
the same deterministic code on them. The router is small; every host trains it, and whatever is
carried forward or checkpointed is host 0's copy (`from_primary`), so hosts cannot drift apart.

The workdir must be storage every host sees (NFS, a gcsfuse mount); `check_shared_workdir` refuses
to start otherwise. With one process every function here is the identity or a no-op.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from mpr import io
from mpr.errors import UserError

T = TypeVar("T")


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Joins the run (`jax.distributed.initialize`); unset arguments come from the cluster (TPU pod, Slurm)."""
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(f"cannot join the multi-host run: {str(e).strip().splitlines()[0]} "
                    "(give --coordinator_address, --num_processes and --process_id where no cluster "
                    "is detected)") from None


def index() -> int:
  return jax.process_index()


def count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier over all hosts (every host must reach the same `name`)."""
  if count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def share(items: Sequence[T]) -> list[T]:
  """This host's share of `items`: every count()-th one, from index()."""
  return list(items[index()::count()])


def from_primary(tree: Any) -> Any:
  """`tree` as host 0 has it, on every host; jax arrays stay jax arrays, and every dtype is exact
  (leaves travel as bytes: the broadcast runs in jax, where 64-bit values would narrow)."""
  if count() == 1:
    return tree
  from jax.experimental import multihost_utils
  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.asarray(x) for x in leaves]
  got = multihost_utils.broadcast_one_to_all([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])
  out = [np.asarray(b).view(a.dtype).reshape(a.shape) for a, b in zip(arrays, got)]
  return treedef.unflatten([jnp.asarray(o) if isinstance(x, jax.Array) else o for x, o in zip(leaves, out)])


def host_path(path: str) -> str:
  """This host's file for a log that several hosts fill: `path` itself on a single host."""
  if count() == 1:
    return path
  stem, ext = os.path.splitext(path)
  return f"{stem}.host{index()}{ext}"


def check_shared_workdir(workdir: str) -> None:
  """Refuses a multi-host run whose hosts do not all see the same `workdir`."""
  if count() == 1:
    return
  token = int(from_primary(np.asarray(np.random.default_rng().integers(2**31 - 1), np.int32)))
  folder = os.path.join(workdir, "hosts")
  io.atomic_write_json(os.path.join(folder, f"host{index()}.json"), {"token": token, "host": socket.gethostname()})
  sync("workdir written")
  paths = [os.path.join(folder, f"host{i}.json") for i in range(count())]
  unseen = sum(not os.path.exists(p) or io.read_json(p).get("token") != token for p in paths)
  # Decided together: a host that fails alone would leave the others waiting at the next barrier.
  from jax.experimental import multihost_utils
  blind = np.asarray(multihost_utils.process_allgather(np.asarray(unseen, np.int32)))
  if blind.any():
    who = ", ".join(f"host {h}" for h in np.flatnonzero(blind))
    raise UserError(f"--workdir {workdir} is not shared by all hosts ({who} cannot see the others' files in "
                    f"{folder}); a multi-host run needs a workdir every host sees (NFS, a gcsfuse mount)")
