"""The decoder: token embeddings, `num_layers` pre-norm blocks, final norm, LM head.

One module for Qwen3, Qwen2 and Llama (the differences are in ModelConfig). Every call appends a
chunk of tokens to a KV cache, so a full forward, a prefill and a one-token decode step are the
same code:

  cache = init_cache(cfg, batch=B, length=S)
  hidden, cache = model.apply(variables, tokens[B, T], chunk_lens[B], cache)
  logits = model.apply(variables, hidden, method=Decoder.logits)

`chunk_lens[b]` real tokens of row b are appended after its `cache["lengths"][b]` cached ones; the
rest of the row is right padding. Each row keeps its own length, so episodes of different history
lengths share a batch without left padding or recompute.

The blocks run under `nn.scan`: one block's program is compiled once and looped, not unrolled
`num_layers` times (an 8B model's 36 layers compile as one). Every per-layer parameter is therefore
stacked under "layers" with a leading layer axis (params.expected_shapes), as are a quantized
variant's frozen integers and scales, and the KV cache is one [L, B, S, K, D] array per keys and
values that the loop carries and updates in place.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpr.models.config import ModelConfig
from mpr.models.layers import Block, Embedding, Linear, RMSNorm, rope_inv_freq

Cache = dict[str, Any]   # {"k": [L, B, S, K, D], "v": same, "lengths": [B] int32}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.bfloat16) -> Cache:
  shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "lengths": jnp.zeros((batch,), jnp.int32)}


def take_rows(cache: Cache, idx: jax.Array) -> Cache:
  """The cache of rows `idx` (rows are axis 1 of the stacked keys and values)."""
  return {"k": cache["k"][:, idx], "v": cache["v"][:, idx], "lengths": cache["lengths"][idx]}


def put_rows(cache: Cache, idx: jax.Array, sub: Cache) -> Cache:
  """`cache` with rows `idx` replaced by the rows of `sub` (take_rows' inverse)."""
  return {"k": cache["k"].at[:, idx].set(sub["k"]), "v": cache["v"].at[:, idx].set(sub["v"]),
          "lengths": cache["lengths"].at[idx].set(sub["lengths"])}


def scanned_blocks(cfg: ModelConfig, quant=None, dtype=jnp.float32) -> nn.Module:
  """`cfg.num_layers` Blocks under nn.scan: parameters (and a variant's frozen trees) stacked on a
  leading layer axis, the layer index scanned, everything else broadcast to every layer."""
  return nn.scan(Block, variable_axes={"params": 0, "aqt": 0}, split_rngs={"params": True},
                 in_axes=(0,) + (nn.broadcast,) * 6, length=cfg.num_layers)(cfg, quant, dtype)


class Decoder(nn.Module):
  cfg: ModelConfig
  quant: Optional[Any] = None       # an mpr.models.quant variant's injector, None for float
  dtype: Any = jnp.float32          # activation/compute dtype (bf16 for serving)

  def setup(self):
    cfg, quant = self.cfg, self.quant
    prec = quant.prec if quant is not None else None
    self.embed = Embedding(cfg.vocab_size, cfg.hidden_size, quant if prec and prec.quant_embed else None, self.dtype)
    self.layers = scanned_blocks(cfg, quant, self.dtype)
    self.final_norm = RMSNorm(cfg.rms_norm_eps, self.dtype)
    head_quant = quant if prec and prec.quant_head else None
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.vocab_size, head_quant, self.dtype)
    elif self._tied_head_quantized():
      # A float table quantized for the head alone: the head's matmul goes through the injected
      # dot_general (a low-bit table already quantizes both of its uses).
      self.tied_head = head_quant.dot_general_cls()()

  def _tied_head_quantized(self) -> bool:
    prec = self.quant.prec if self.quant is not None else None
    return bool(self.cfg.tie_embeddings and prec and prec.quant_head and not prec.quant_embed)

  def __call__(self, tokens: jax.Array, chunk_lens: jax.Array, cache: Cache,
               tree: Optional[tuple[jax.Array, jax.Array]] = None,
               kv_len: Optional[int] = None, commit: bool = True) -> tuple[jax.Array, Cache]:
    """tokens [B, T] → (final-norm hidden states [B, T, H], updated cache).

    `tree` = (visibility [B, T, T], position offsets [B, T]) gives the chunk's tokens their own
    visibility over each other (see Attention): continuations scored side by side as a token tree,
    after `chunk_lens` causal context tokens. `commit` (static) False returns the cache unchanged;
    otherwise the rows' lengths advance by `chunk_lens`. `kv_len` (static) bounds the cache slots
    attention reads (see Attention).
    """
    offsets = cache["lengths"]
    if tree is None:
      positions, visible = offsets[:, None] + jnp.arange(tokens.shape[1])[None, :], None
    else:
      visible, depth = tree
      positions = offsets[:, None] + depth
    inv_freq = jnp.asarray(rope_inv_freq(self.cfg))
    x = self.embed(tokens)
    (x, (ks, vs)), _ = self.layers((x, (cache["k"], cache["v"])), jnp.arange(self.cfg.num_layers),
                                   positions, offsets, inv_freq, visible, kv_len, commit)
    if not commit:
      return self.final_norm(x), cache
    return self.final_norm(x), {"k": ks, "v": vs, "lengths": offsets + chunk_lens.astype(jnp.int32)}

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., H] → f32 logits [..., V]."""
    if self._tied_head_quantized():
      contract = (((hidden.ndim - 1,), (0,)), ((), ()))
      return self.tied_head(hidden.astype(self.dtype), self.embed.table().T, contract, None).astype(jnp.float32)
    if self.cfg.tie_embeddings:
      return self.embed.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)
