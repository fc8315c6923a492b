"""The router: a small Transformer encoder over the history of each step's inputs (the paper's frozen step
embedding z_t, optionally with cheap signals: mpr.router.features).

  cfg = router_config(width=64)
  params = init_params(cfg, embed_dim=D, seed=0)
  p = p_high(params, cfg, zw, mask)           # [B] probability that the step needs the high tier
  save_router(dir, cfg, params, {"tau": tau}); cfg, params, meta = load_router(dir)

Axes: B rows, L history slots (the last `max_len` steps, right-aligned as `mpr.router.data.windows`
makes them: padding on the left, the current step at slot L-1), D the width of one step's inputs
(router.json's `embed_dim`: z's width, plus one per extra input), W model width.
Logits are [B, 2] with index HIGH = 1 the high-precision tier and 0 the low one.

Padded slots are zeroed before any arithmetic and masked as attention keys, so whatever they hold
(even NaN) never changes the output. A history longer than `max_len` is cut to its last `max_len`
steps, so that call equals the one on the truncated window.
"""
from __future__ import annotations

import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from mpr import io
from mpr.errors import UserError

HIGH = 1        # logits index of the high-precision tier (0 = low)
POOLINGS = ("last", "mean")


def router_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128          # model width W: the paper's router costs 17-29 ms a call, so it stays small
  c.heads = 4            # attention heads (W must divide evenly among them)
  c.layers = 2           # encoder blocks, as in the paper's v1
  c.mlp_dim = 256        # hidden width of each block's MLP
  c.max_len = 32         # L_max: most recent steps seen; ALFWorld episodes run up to 50 steps
  c.pooling = "last"     # "last": the current step's slot, which attends to the whole history; "mean": masked mean
  c.dropout = 0.0        # on attention weights, residual branches and the input; the step table is small
  c.inputs = ("z",)      # what it reads per step (mpr.router.features): the paper's z, optionally cheap signals
  unknown = sorted(set(overrides) - set(c.keys()))
  if unknown:
    raise UserError(f"unknown router config field {unknown[0]!r} (fields: {', '.join(sorted(c.keys()))})")
  if "inputs" in overrides:       # a saved router.json holds a list
    overrides = {**overrides, "inputs": tuple(overrides["inputs"])}
  c.update(overrides)
  return c


class _Block(nn.Module):
  """Pre-LayerNorm encoder block: x + attn(LN x), then x + mlp(LN x)."""
  width: int
  heads: int
  mlp_dim: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
    keys = mask[:, None, None, :]                                  # [B, 1, 1, L]: padded keys never attended
    h = nn.LayerNorm()(x)
    h = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout)(
        h, h, mask=keys, deterministic=deterministic)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.gelu(nn.Dense(self.mlp_dim)(nn.LayerNorm()(x)))
    h = nn.Dense(self.width)(nn.Dropout(self.dropout)(h, deterministic=deterministic))
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class Router(nn.Module):
  width: int
  heads: int
  layers: int
  mlp_dim: int
  max_len: int
  pooling: str
  dropout: float

  @nn.compact
  def __call__(self, z: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """z [B, L, D], right-aligned mask [B, L] -> logits [B, 2]."""
    z, mask = z[:, -self.max_len:], mask[:, -self.max_len:].astype(bool)
    l = z.shape[1]
    z = jnp.where(mask[..., None], z, 0.0)   # where, not multiply: 0 * NaN garbage would still be NaN
    n_valid = mask.sum(-1)                                                  # [B]
    # Positions count from the oldest kept step; padding slots get 0 and are masked anyway.
    pos = jnp.maximum(jnp.arange(l)[None, :] - (l - n_valid)[:, None], 0)   # [B, L]
    x = nn.Dense(self.width, name="in_proj")(z) + nn.Embed(self.max_len, self.width, name="pos")(pos)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    for i in range(self.layers):
      x = _Block(self.width, self.heads, self.mlp_dim, self.dropout, name=f"block_{i}")(x, mask, deterministic)
    x = nn.LayerNorm(name="norm")(x)                                        # [B, L, W]
    if self.pooling == "last":
      h = x[:, -1]
    else:
      w = mask[..., None].astype(x.dtype)
      h = (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    return nn.Dense(2, name="head")(h)


def from_config(cfg: ml_collections.ConfigDict) -> Router:
  """The Router module for `cfg` (hashable, so it can be a static jit argument)."""
  if cfg.pooling not in POOLINGS:
    raise UserError(f"router pooling must be one of {POOLINGS}, got {cfg.pooling!r}")
  if min(cfg.width, cfg.heads, cfg.layers, cfg.mlp_dim, cfg.max_len) < 1 or cfg.width % cfg.heads:
    raise UserError(f"router needs positive sizes and width divisible by heads, got width={cfg.width}, "
                    f"heads={cfg.heads}, layers={cfg.layers}, mlp_dim={cfg.mlp_dim}, max_len={cfg.max_len}")
  if not 0.0 <= cfg.dropout < 1.0:
    raise UserError(f"router dropout must be in [0, 1), got {cfg.dropout}")
  return Router(width=int(cfg.width), heads=int(cfg.heads), layers=int(cfg.layers), mlp_dim=int(cfg.mlp_dim),
                max_len=int(cfg.max_len), pooling=str(cfg.pooling), dropout=float(cfg.dropout))


def init_params(cfg: ml_collections.ConfigDict, embed_dim: int, seed: int = 0) -> dict:
  z = jnp.zeros((1, cfg.max_len, embed_dim), jnp.float32)
  return from_config(cfg).init(jax.random.key(seed), z, jnp.ones((1, cfg.max_len), bool))["params"]


def embed_dim(params: dict) -> int:
  """D, the step-embedding width the params were built for."""
  return int(params["in_proj"]["kernel"].shape[0])


@functools.partial(jax.jit, static_argnums=0)
def _p_high(model: Router, params: dict, z: jax.Array, mask: jax.Array) -> jax.Array:
  return jax.nn.softmax(model.apply({"params": params}, z, mask), axis=-1)[:, HIGH]


def p_high(params: dict, cfg: ml_collections.ConfigDict, z, mask) -> jax.Array:
  """[B] softmax probability of the high tier.

  Compiles once per (B, L): callers pad B to a few bucket sizes (and use L = max_len) rather than
  passing every ragged batch size.
  """
  if z.shape[-1] != embed_dim(params):
    raise UserError(f"step input width {z.shape[-1]} does not match the router's {embed_dim(params)} "
                    f"(another embedding model, or other router.inputs?)")
  return _p_high(from_config(cfg), params, jnp.asarray(z, jnp.float32), jnp.asarray(mask, bool))


# --- saved routers -----------------------------------------------------------------------------

def save_router(path: str, cfg: ml_collections.ConfigDict, params: dict, meta: dict) -> None:
  """path/{router.json, params.msgpack}; written to a sibling folder renamed into place."""
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, "params.msgpack"), "wb") as f:
    f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    f.flush()
    os.fsync(f.fileno())
  io.atomic_write_json(os.path.join(tmp, "router.json"),
                       {**meta, "config": cfg.to_dict(), "embed_dim": embed_dim(params)})
  if os.path.exists(path):
    shutil.rmtree(path)
  os.replace(tmp, path)


def load_router(path: str) -> tuple[ml_collections.ConfigDict, dict, dict]:
  """(cfg, params, meta) of a saved router; checks every tensor against what the config implies."""
  meta_file, params_file = os.path.join(path, "router.json"), os.path.join(path, "params.msgpack")
  if not os.path.isfile(meta_file) or not os.path.isfile(params_file):
    raise UserError(f"{path}: not a saved router (needs router.json and params.msgpack)")
  try:
    meta = io.read_json(meta_file)
    cfg, dim = router_config(**meta.pop("config")), int(meta.pop("embed_dim"))
  except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
    raise UserError(f"{meta_file}: corrupt router description ({type(e).__name__})") from None
  try:
    with open(params_file, "rb") as f:
      stored = serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack raises many types for damaged bytes
    raise UserError(f"{params_file}: corrupt router params ({type(e).__name__})") from None
  want = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(cfg, dim)), sep="/")
  have = traverse_util.flatten_dict(stored, sep="/") if isinstance(stored, dict) else {}
  for key, spec in want.items():
    if key not in have:
      raise UserError(f"{params_file}: lacks tensor {key} (router.json describes another router)")
    if tuple(np.shape(have[key])) != spec.shape:
      raise UserError(f"{params_file}: tensor {key} has shape {list(np.shape(have[key]))}, "
                      f"expected {list(spec.shape)}")
  extra = sorted(set(have) - set(want))
  if extra:
    raise UserError(f"{params_file}: unexpected tensor {extra[0]} (router.json describes another router)")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in have.items()}, sep="/")
  return cfg, params, meta
