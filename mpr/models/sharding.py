"""Where a model's arrays live on a ("data", "model") device mesh.

  mesh = make_mesh(jax.local_devices(), model=4)      # 8 devices → 2 × 4
  variables = place_variables(mesh, variant.variables)  # Megatron-style tensor parallel weights
  cache = place_cache(mesh, cache)                      # rows over "data", kv heads over "model"

Episode rows (the batch) are split over "data"; weights over "model", in the Megatron layout:
projections into heads and the MLP (q, k, v, gate, up, an untied LM head or a tied model's quantized
head) split their output features, the projections back (o, down) their input features, so a block
needs one all-reduce after attention and one after the MLP. The token table splits its vocabulary.
A quantized variant's frozen AQT tree (int values and scales) follows its float kernel's rule: its
last axis is the output features, its first (after a stacked layer axis) the input features or their
groups. A `pallas` variant's packed values and scales follow the same rule; the fused kernel runs on
each device's shard (mpr.models.layers, kernels.pack_tree). Norms and anything whose split axis does not
divide evenly stay replicated, which is always correct, only less sharded.
The layer axis that the scanned blocks' stacked parameters (under "layers") and the KV cache lead
with is never split: every device runs every layer.

The specs are a function of names and shapes alone, so they serve live arrays and `jax.eval_shape`
trees alike (the memory plan). GSPMD propagates the layout through the jitted agent calls: the code
that runs the model is the same on one device and on a mesh.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mpr.errors import UserError
from mpr.models.params import LAYERS

AXES = ("data", "model")
COLUMN = frozenset({"q", "k", "v", "gate", "up", "lm_head", "tied_head"})   # output features split
ROW = frozenset({"o", "down", "embed"})                                    # input features (vocab) split


def make_mesh(devices: Sequence[jax.Device], model: int = 1) -> Mesh:
  """A (len(devices) / model, model) mesh named ("data", "model")."""
  n = len(devices)
  if model < 1 or n % model:
    raise UserError(f"agent.model_parallel={model} does not divide the {n} devices")
  return Mesh(np.asarray(devices).reshape(n // model, model), AXES)


def names(path) -> list[str]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return out


def _split(shape: tuple[int, ...], axis: int, size: int) -> P:
  spec: list[Optional[str]] = [None] * len(shape)
  if shape and shape[axis] % size == 0 and shape[axis] >= size > 1:
    spec[axis] = "model"
  return P(*spec)


def param_spec(path: Sequence[str], shape: tuple[int, ...], model: int) -> P:
  """The PartitionSpec of one variable (float or frozen) at tree path `path` (names)."""
  if not shape:
    return P()
  owner = next((n for n in reversed(path) if n in COLUMN or n in ROW), None)
  if owner is None:                                            # norms
    return P(*([None] * len(shape)))
  first = 1 if LAYERS in path else 0                           # past the stacked layer axis
  return _split(shape, -1 if owner in COLUMN else first, model)


def variable_specs(variables: Any, model: int) -> Any:
  """PartitionSpecs for a variables tree ({"params": ..., "aqt": ...}), arrays or ShapeDtypeStructs."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: param_spec(names(path), tuple(x.shape), model), variables)


def shardings(mesh: Mesh, variables: Any) -> Any:
  """NamedShardings for a variables tree (arrays or ShapeDtypeStructs) on `mesh`."""
  specs = variable_specs(variables, mesh.shape["model"])
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def place_variables(mesh: Mesh, variables: Any) -> Any:
  return jax.device_put(variables, shardings(mesh, variables))


def cache_spec(cache_leaf_shape: tuple[int, ...], model: int) -> P:
  """A cache's [L, B, S, K, D] keys/values: rows over "data", kv heads over "model" (when they divide)."""
  heads = "model" if model > 1 and cache_leaf_shape[3] % model == 0 else None
  return P(None, "data", None, heads, None)


def place_cache(mesh: Mesh, cache: dict) -> dict:
  model = mesh.shape["model"]
  put = lambda x: jax.device_put(x, NamedSharding(mesh, cache_spec(x.shape, model)))
  return {"k": put(cache["k"]), "v": put(cache["v"]),
          "lengths": jax.device_put(cache["lengths"], NamedSharding(mesh, P("data")))}
