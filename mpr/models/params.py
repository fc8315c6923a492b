"""The decoder's parameter tree and the one generic mapper that fills it from named tensors.

Checkpoint formats (HF safetensors, GGUF) differ only in a key table: for each parameter of the
tree (and for a per-layer one, each layer's slice of it), the source tensor's name and a transform
hook (e.g. torch's [out, in] → flax's [in, out]). `fill` runs the table, checking every tensor, so a
bad checkpoint fails on its first bad tensor.

Per-layer parameters live under "layers", stacked on a leading layer axis (the Decoder scans its
blocks). Checkpoints written before that hold them as "layer_0", "layer_1", ...: `legacy_shapes` and
`stack_layers` read those.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Optional

import jax
import ml_dtypes
import numpy as np

from mpr.errors import UserError
from mpr.models.config import ModelConfig

Path = tuple[str, ...]
_BF16 = np.dtype(ml_dtypes.bfloat16)
Hook = Callable[[np.ndarray], np.ndarray]
Row = tuple[Path, Optional[int], str, Hook]   # (param path, layer or None for a whole tensor, tensor name, hook)
LAYERS = "layers"


def transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


def identity(x: np.ndarray) -> np.ndarray:
  return x


def layer_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """One block's parameters (paths inside a layer) with their shapes (flax layout)."""
  h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  n, k = cfg.num_heads, cfg.num_kv_heads
  shapes = {
      ("attn_norm", "scale"): (h,), ("mlp_norm", "scale"): (h,),
      ("attn", "q", "proj", "kernel"): (h, n * d), ("attn", "k", "proj", "kernel"): (h, k * d),
      ("attn", "v", "proj", "kernel"): (h, k * d), ("attn", "o", "proj", "kernel"): (n * d, h),
      ("mlp", "gate", "proj", "kernel"): (h, f), ("mlp", "up", "proj", "kernel"): (h, f),
      ("mlp", "down", "proj", "kernel"): (f, h),
  }
  if cfg.qk_norm:
    shapes[("attn", "q_norm", "scale")] = (d,)
    shapes[("attn", "k_norm", "scale")] = (d,)
  if cfg.qkv_bias:
    shapes.update({("attn", "q", "proj", "bias"): (n * d,), ("attn", "k", "proj", "bias"): (k * d,),
                   ("attn", "v", "proj", "bias"): (k * d,)})
  return shapes


def expected_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """Every parameter of `Decoder(cfg)` with its shape (flax layout, per-layer ones stacked)."""
  h, v = cfg.hidden_size, cfg.vocab_size
  shapes: dict[Path, tuple[int, ...]] = {("embed", "embedding"): (v, h), ("final_norm", "scale"): (h,)}
  if not cfg.tie_embeddings:
    shapes[("lm_head", "proj", "kernel")] = (h, v)
  shapes.update({(LAYERS, *p): (cfg.num_layers, *s) for p, s in layer_shapes(cfg).items()})
  return shapes


def legacy_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """expected_shapes in the per-layer layout ("layer_0", ...) of checkpoints from before the scan."""
  shapes = {p: s for p, s in expected_shapes(cfg).items() if p[0] != LAYERS}
  for i in range(cfg.num_layers):
    shapes.update({(f"layer_{i}", *p): s for p, s in layer_shapes(cfg).items()})
  return shapes


def stack_layers(tree: dict, num_layers: int) -> dict:
  """A legacy per-layer tree ("layer_0", ...) in the stacked layout."""
  rest = {k: v for k, v in tree.items() if not k.startswith("layer_")}
  layers = [tree[f"layer_{i}"] for i in range(num_layers)]
  return {**rest, LAYERS: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)}


def abstract(cfg: ModelConfig) -> dict:
  """The float parameter tree as f32 ShapeDtypeStructs (for jax.eval_shape: no weights needed)."""
  return unflatten({p: jax.ShapeDtypeStruct(s, np.float32) for p, s in expected_shapes(cfg).items()})


def fill(cfg: ModelConfig, table: Iterator[Row], get: Callable[[str], np.ndarray | None], source: str) -> dict:
  """Builds the nested param dict from `table` rows: a whole tensor, or one layer's slice of a stacked one."""
  shapes = expected_shapes(cfg)
  flat: dict[Path, np.ndarray] = {}
  filled: dict[Path, set] = {}
  for path, layer, name, hook in table:
    raw = get(name)
    if raw is None:
      raise UserError(f"{source}: missing tensor {name!r}")
    raw = np.asarray(raw)
    # bf16 checkpoints stay bf16 on the host (an 8B model: 16 GB, not 32); other dtypes become f32.
    value = hook(raw if raw.dtype == _BF16 else raw.astype(np.float32))
    want = shapes[path] if layer is None else shapes[path][1:]
    if value.shape != want:
      raise UserError(f"{source}: tensor {name!r} has shape {tuple(raw.shape)}, "
                      f"expected {want} (after layout change) for config {cfg.family}")
    if not np.isfinite(value).all():
      raise UserError(f"{source}: tensor {name!r} holds NaN or inf")
    if layer is None:
      flat[path] = value
      continue
    if path not in flat:
      flat[path] = np.empty(shapes[path], value.dtype)
    elif value.dtype != flat[path].dtype:       # layers stored at different widths: keep the wider
      flat[path] = flat[path].astype(np.result_type(flat[path].dtype, value.dtype))
    flat[path][layer] = value
    filled.setdefault(path, set()).add(layer)
  for path, layers in filled.items():
    if len(layers) != cfg.num_layers:
      gap = min(set(range(cfg.num_layers)) - layers)
      raise UserError(f"{source}: no tensor mapped to layer {gap} of parameter {'/'.join(path)}")
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
