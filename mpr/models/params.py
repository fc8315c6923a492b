"""The decoder's parameter tree and the one generic mapper that fills it from named tensors.

Checkpoint formats (HF safetensors, GGUF) differ only in a key table: for each parameter of the
tree, the source tensor's name and a transform hook (e.g. torch's [out, in] → flax's [in, out]).
`fill` runs the table, checking every tensor, so a bad checkpoint fails on its first bad tensor.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

import ml_dtypes
import numpy as np

from mpr.errors import UserError
from mpr.models.config import ModelConfig

Path = tuple[str, ...]
_BF16 = np.dtype(ml_dtypes.bfloat16)
Hook = Callable[[np.ndarray], np.ndarray]


def transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


def identity(x: np.ndarray) -> np.ndarray:
  return x


def expected_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """Every parameter of `Decoder(cfg)` with its shape (flax layout)."""
  h, f, d, v = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size
  n, k = cfg.num_heads, cfg.num_kv_heads
  shapes: dict[Path, tuple[int, ...]] = {("embed", "embedding"): (v, h), ("final_norm", "scale"): (h,)}
  if not cfg.tie_embeddings:
    shapes[("lm_head", "proj", "kernel")] = (h, v)
  for i in range(cfg.num_layers):
    p = f"layer_{i}"
    shapes.update({
        (p, "attn_norm", "scale"): (h,), (p, "mlp_norm", "scale"): (h,),
        (p, "attn", "q", "proj", "kernel"): (h, n * d), (p, "attn", "k", "proj", "kernel"): (h, k * d),
        (p, "attn", "v", "proj", "kernel"): (h, k * d), (p, "attn", "o", "proj", "kernel"): (n * d, h),
        (p, "mlp", "gate", "proj", "kernel"): (h, f), (p, "mlp", "up", "proj", "kernel"): (h, f),
        (p, "mlp", "down", "proj", "kernel"): (f, h),
    })
    if cfg.qk_norm:
      shapes[(p, "attn", "q_norm", "scale")] = (d,)
      shapes[(p, "attn", "k_norm", "scale")] = (d,)
    if cfg.qkv_bias:
      shapes.update({(p, "attn", "q", "proj", "bias"): (n * d,), (p, "attn", "k", "proj", "bias"): (k * d,),
                     (p, "attn", "v", "proj", "bias"): (k * d,)})
  return shapes


def abstract(cfg: ModelConfig) -> dict:
  """The float parameter tree as f32 ShapeDtypeStructs (for jax.eval_shape: no weights needed)."""
  import jax
  return unflatten({p: jax.ShapeDtypeStruct(s, np.float32) for p, s in expected_shapes(cfg).items()})


def fill(cfg: ModelConfig, table: Iterator[tuple[Path, str, Hook]],
         get: Callable[[str], np.ndarray | None], source: str) -> dict:
  """Builds the nested param dict from `table` rows (param path, tensor name, hook)."""
  shapes = expected_shapes(cfg)
  flat: dict[Path, np.ndarray] = {}
  for path, name, hook in table:
    raw = get(name)
    if raw is None:
      raise UserError(f"{source}: missing tensor {name!r}")
    raw = np.asarray(raw)
    # bf16 checkpoints stay bf16 on the host (an 8B model: 16 GB, not 32); other dtypes become f32.
    value = hook(raw if raw.dtype == _BF16 else raw.astype(np.float32))
    if value.shape != shapes[path]:
      raise UserError(f"{source}: tensor {name!r} has shape {tuple(raw.shape)}, "
                      f"expected {shapes[path]} (after layout change) for config {cfg.family}")
    if not np.isfinite(value).all():
      raise UserError(f"{source}: tensor {name!r} holds NaN or inf")
    flat[path] = value
  missing = sorted(set(shapes) - set(flat))
  if missing:
    raise UserError(f"{source}: no tensor mapped to parameter {'/'.join(missing[0])}")
  return unflatten(flat)


def unflatten(flat: Mapping[Path, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, np.ndarray]:
  out: dict[Path, np.ndarray] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out
