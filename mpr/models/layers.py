"""Decoder building blocks (Flax linen): RMSNorm, RoPE, GQA attention over a KV cache, SwiGLU MLP.

Axis letters used in shapes and einsums:
  B batch   T new tokens (chunk)   S cache length   H hidden   F MLP hidden
  N query heads   K kv heads   G = N // K (query heads per kv head)   D head dim

Quantization never appears here as bit widths: every projection is a `Linear` whose dot_general is
injected (`quant.dot_general_cls()`), the AQT pattern; `quant=None` is plain float. A projection's
bias (Qwen2's q, k, v) is never quantized: it is added after the dot_general, in the compute dtype.
The token table (`Embedding`) is the one weight read by a gather: when its precision asks for it, it
is stored at the weight bits through `quant.quantize_table`, in the same train/convert/serve modes.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mpr.models import kernels, sharding
from mpr.errors import UserError
from mpr.models.config import ModelConfig
from mpr.models.quant import dequantize_table, quantize_table

Dtype = Any
_NEG = -1e30   # masked attention logit: finite, so fully masked (padding) rows stay NaN-free


class RMSNorm(nn.Module):
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    # As in HF: normalise in f32, cast back, then scale (no 1+w offset).
    return y.astype(self.dtype) * scale.astype(self.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """[D/2] RoPE inverse frequencies, with Llama-3 scaling when configured."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  s = cfg.rope_scaling
  if s is None:
    return inv.astype(np.float32)
  wavelen = 2 * np.pi / inv
  ctx = s.original_max_position_embeddings
  # Long wavelengths (beyond ctx / low_freq_factor) are slowed by `factor`; short ones (below
  # ctx / high_freq_factor) are kept; the band between blends the two linearly in ctx / wavelen.
  blend = np.clip((ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor), 0.0, 1.0)
  return ((1 - blend) * inv / s.factor + blend * inv).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """x: [B, T, heads, D], positions: [B, T]. Non-interleaved (rotate-half, NeoX/HF) layout."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq          # [B, T, D/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]  # [B, T, 1, D]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


class Linear(nn.Module):
  """A projection; the only place a quantized dot_general enters the model."""
  features: int
  quant: Optional[Any] = None
  dtype: Dtype = jnp.float32
  bias: bool = False        # Dense adds it after the dot_general, so quantization leaves it float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.quant is not None and self.quant.mode == "serve" and self.quant.prec.kernel == "pallas":
      return _FusedProj(self.features, self.dtype, self.bias, self.quant.mesh, name="proj")(x)
    dg_cls = self.quant.dot_general_cls() if self.quant is not None else None
    return nn.Dense(self.features, use_bias=self.bias, dtype=self.dtype, param_dtype=jnp.float32,
                    dot_general_cls=dg_cls, name="proj")(x)


class _FusedProj(nn.Module):
  """A served projection through the fused Pallas kernel: reads its packed integers and scales
  (kernels.pack_tree) where Dense keeps AQT's tree, and its float bias where Dense keeps it. On a
  `mesh` the kernel runs on each device's shard of x and of the weights (the caller's name, e.g. "o",
  says how they are split)."""
  features: int
  dtype: Dtype
  bias: bool
  mesh: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.variable("aqt", "packed", lambda: None).value
    if w is None:
      raise ValueError("a pallas-kernel projection serves only packed weights (variants.make_variant)")
    x = x.astype(self.dtype)
    if self.mesh is None or self.mesh.size == 1:
      y = _fused(x, w)
    else:
      y = _fused_sharded(self.mesh, self.parent.name, x, w)
    if self.bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def _fused(x: jax.Array, w: kernels.Packed, out_dtype=None) -> jax.Array:
  y = kernels.matmul(x.reshape(-1, x.shape[-1]), w, interpret=jax.default_backend() == "cpu", out_dtype=out_dtype)
  return y.reshape(*x.shape[:-1], y.shape[-1])


def _fused_sharded(mesh, owner: str, x: jax.Array, w: kernels.Packed) -> jax.Array:
  """x [B, ..., K] through one projection's packed weights laid out on `mesh` as sharding.param_spec
  places them: each device multiplies its rows (over "data", when they divide) by its shard of the
  weights; where the inputs are split (a row-parallel layer) the partial products are summed."""
  model, data = mesh.shape["model"], mesh.shape["data"]
  path = [owner, "proj", "packed"]
  vspec = sharding.param_spec(path + ["values"], w.values.shape, model)
  sspec = sharding.param_spec(path + ["scale"], w.scale.shape, model)
  split_in, split_out = vspec[0] == "model", vspec[-1] == "model"
  if w.bits <= 4 and w.shards != (model if split_in else 1):
    raise UserError(f"{owner}: weights packed in {w.shards} input blocks, served on a model axis of {model} "
                    f"that {'splits' if split_in else 'does not split'} them (make the variant on this mesh)")
  rows = ["data" if x.shape[0] % data == 0 else None] + [None] * (x.ndim - 2)

  def local(xl, values, scale):
    w_local = kernels.Packed(values, scale, w.bits, w.shards).local()
    if not split_in:
      return _fused(xl, w_local)
    # Partial products are summed in f32 and rounded once, as one device's accumulation would be.
    return jax.lax.psum(_fused(xl, w_local, jnp.float32), "model").astype(xl.dtype)

  return jax.shard_map(local, mesh=mesh, check_vma=False,
                       in_specs=(P(*rows, "model" if split_in else None), vspec, sspec),
                       out_specs=P(*rows, "model" if split_out else None))(x, w.values, w.scale)


class Embedding(nn.Module):
  """The token table (nn.Embed's parameter and numerics), optionally stored low-bit.

  With a `quant` (given only when its precision has quant_embed): TRAIN quantizes the float table on
  the fly, CONVERT also writes the integer values and scales to the 'aqt' collection, SERVE reads
  only those (the float table is then a placeholder). Lookups dequantize just the rows they gather.
  """
  num_embeddings: int
  features: int
  quant: Optional[Any] = None
  dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
                                (self.num_embeddings, self.features), jnp.float32)
    if self.quant is not None and self.quant.mode != "train":
      prec = self.quant.prec
      groups = self.features // (prec.group_size or self.features)
      shape = (self.num_embeddings, groups, self.features // groups)
      self.qvalue = self.variable("aqt", "qvalue", lambda: jnp.zeros(shape, prec.storage_dtype))
      self.scale = self.variable("aqt", "scale", lambda: jnp.zeros((*shape[:2], 1), jnp.float32))

  def _quantized(self) -> tuple[jax.Array, jax.Array]:
    if self.quant.mode == "serve":
      return self.qvalue.value, self.scale.value
    q, scale = quantize_table(self.embedding, self.quant.prec)
    if self.quant.mode == "convert":
      self.qvalue.value, self.scale.value = q.astype(self.quant.prec.storage_dtype), scale
    return q, scale

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if self.quant is None:
      return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
    q, scale = self._quantized()
    return dequantize_table(q[tokens], scale[tokens], self.dtype)

  def table(self) -> jax.Array:
    """[V, H] in the compute dtype, as served (what a tied LM head multiplies by)."""
    if self.quant is None:
      return self.embedding.astype(self.dtype)
    return dequantize_table(*self._quantized(), self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.table().T)


def write_cache(cache: jax.Array, layer: jax.Array, chunk: jax.Array, offsets: jax.Array) -> jax.Array:
  """Writes chunk [B, T, K, D] into layer `layer` of the stacked cache [L, B, S, K, D] at each row's
  own offset.

  One scatter into the whole stack, so the scanned layers update the cache that their loop carries in
  place. It drops what falls past the end: the chunk's padding may overhang a nearly full row
  (callers check that the real tokens fit), and a dynamic_update_slice would instead shift the whole
  write back over the row's history.
  """
  b, t = chunk.shape[:2]
  rows, slots = jnp.arange(b)[:, None], offsets[:, None] + jnp.arange(t)[None, :]
  chunk = chunk.astype(cache.dtype)
  if jax.default_backend() == "cpu" and jnp.dtype(cache.dtype).itemsize < 4:
    # XLA's CPU backend scatters 16-bit floats by converting the whole operand (every layer's cache)
    # to f32 and back: scatter into this layer's slice alone, then put the slice back.
    one = jax.lax.dynamic_index_in_dim(cache, layer, 0, keepdims=False).at[rows, slots].set(chunk, mode="drop")
    return jax.lax.dynamic_update_index_in_dim(cache, one, layer, 0)
  return cache.at[layer, rows, slots].set(chunk, mode="drop")


def read_cache(cache: jax.Array, layer: jax.Array, slots: int) -> jax.Array:
  """The first `slots` cache slots of layer `layer`: [B, slots, K, D]."""
  return jax.lax.dynamic_index_in_dim(cache, layer, 0, keepdims=False)[:, :slots]


class Attention(nn.Module):
  cfg: ModelConfig
  quant: Optional[Any] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, offsets, cache, layer, inv_freq, tree=None, kv_len=None, commit=True):
    """x [B,T,H]; positions [B,T]; offsets [B] = tokens already cached per row; cache = the stacked
    (keys, values) [L,B,S,K,D] of all layers, of which this one reads and writes slice `layer`.

    Query i of row b sees cache slots j <= offsets[b] + i: its history and the chunk up to itself.
    Padding tokens at the end of a row's chunk are written too but never seen, because the
    caller advances that row's length only by its real tokens and overwrites them next time.

    With `tree` = visibility [B,T,T] query i sees the cached history and the chunk tokens j with
    tree[b, i, j]: a token tree continuing each row's history (candidate actions sharing prefixes,
    scored in one pass: each sees its ancestors and itself), possibly after a causal run of new
    context tokens that every tree token sees. The chunk is written to the cache only if `commit`
    (the caller then advances the rows' lengths over the context tokens alone).

    `kv_len` (static), when given, is how many leading cache slots any query may see (the caller's
    bound on offsets + T, or on offsets with a tree): attention reads only those, so a short
    history does not pay for the cache's full length.
    """
    cfg = self.cfg
    b, t, _ = x.shape
    n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    bias = cfg.qkv_bias
    q = Linear(n * d, self.quant, self.dtype, bias, name="q")(x).reshape(b, t, n, d)
    kk = Linear(k * d, self.quant, self.dtype, bias, name="k")(x).reshape(b, t, k, d)
    v = Linear(k * d, self.quant, self.dtype, bias, name="v")(x).reshape(b, t, k, d)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, self.dtype, name="q_norm")(q)
      kk = RMSNorm(cfg.rms_norm_eps, self.dtype, name="k_norm")(kk)
    q = apply_rope(q, positions, inv_freq)
    kk = apply_rope(kk, positions, inv_freq)
    q = q.reshape(b, t, k, n // k, d)
    k_cache, v_cache = cache
    s = k_cache.shape[2] if kv_len is None else min(kv_len, k_cache.shape[2])
    if tree is None:
      k_cache = write_cache(k_cache, layer, kk, offsets)
      v_cache = write_cache(v_cache, layer, v, offsets)
      keys, values = read_cache(k_cache, layer, s), read_cache(v_cache, layer, s)
      visible = jnp.arange(s)[None, None, :] <= (offsets[:, None] + jnp.arange(t)[None, :])[..., None]
    else:
      keys = jnp.concatenate([read_cache(k_cache, layer, s), kk.astype(k_cache.dtype)], axis=1)  # [history ; chunk]
      values = jnp.concatenate([read_cache(v_cache, layer, s), v.astype(v_cache.dtype)], axis=1)
      history = jnp.broadcast_to(jnp.arange(s)[None, None, :] < offsets[:, None, None], (b, t, s))
      visible = jnp.concatenate([history, tree], axis=-1)
      if commit:
        k_cache = write_cache(k_cache, layer, kk, offsets)
        v_cache = write_cache(v_cache, layer, v, offsets)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    logits = jnp.where(visible[:, None, None], logits, _NEG)               # [B, K, G, T, S]
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(self.dtype)).reshape(b, t, n * d)
    return Linear(cfg.hidden_size, self.quant, self.dtype, name="o")(out), (k_cache, v_cache)


class Mlp(nn.Module):
  cfg: ModelConfig
  quant: Optional[Any] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    f = self.cfg.intermediate_size
    gate = Linear(f, self.quant, self.dtype, name="gate")(x)
    up = Linear(f, self.quant, self.dtype, name="up")(x)
    return Linear(self.cfg.hidden_size, self.quant, self.dtype, name="down")(nn.silu(gate) * up)


class Block(nn.Module):
  """One decoder layer in the form `nn.scan` iterates (Decoder): the carry is (hidden states, stacked
  caches), the scanned input the layer's index into the caches, and nothing is stacked out."""
  cfg: ModelConfig
  quant: Optional[Any] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, layer, positions, offsets, inv_freq, tree=None, kv_len=None, commit=True):
    x, cache = carry
    eps = self.cfg.rms_norm_eps
    h, cache = Attention(self.cfg, self.quant, self.dtype, name="attn")(
        RMSNorm(eps, self.dtype, name="attn_norm")(x), positions, offsets, cache, layer, inv_freq,
        tree, kv_len, commit)
    x = x + h
    x = x + Mlp(self.cfg, self.quant, self.dtype, name="mlp")(RMSNorm(eps, self.dtype, name="mlp_norm")(x))
    return (x, cache), None
