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
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpr.models.config import ModelConfig
from mpr.models.layers import Block, Embedding, Linear, RMSNorm, rope_inv_freq

Cache = dict[str, Any]   # {"k": [L] of [B,S,K,D], "v": same, "lengths": [B] int32}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.bfloat16) -> Cache:
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
  return {"k": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
          "v": [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
          "lengths": jnp.zeros((batch,), jnp.int32)}


class Decoder(nn.Module):
  cfg: ModelConfig
  quant: Optional[Any] = None       # an mpr.models.quant variant's injector, None for float
  dtype: Any = jnp.float32          # activation/compute dtype (bf16 for serving)

  def setup(self):
    cfg, quant = self.cfg, self.quant
    prec = quant.prec if quant is not None else None
    self.embed = Embedding(cfg.vocab_size, cfg.hidden_size, quant if prec and prec.quant_embed else None, self.dtype)
    self.blocks = [Block(cfg, quant, self.dtype, name=f"layer_{i}") for i in range(cfg.num_layers)]
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
    ks, vs = [], []
    for block, kc, vc in zip(self.blocks, cache["k"], cache["v"]):
      x, kc, vc = block(x, positions, offsets, kc, vc, inv_freq, visible, kv_len, commit)
      ks.append(kc)
      vs.append(vc)
    if not commit:
      return self.final_norm(x), cache
    new_cache = {"k": ks, "v": vs, "lengths": offsets + chunk_lens.astype(jnp.int32)}
    return self.final_norm(x), new_cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[..., H] → f32 logits [..., V]."""
    if self._tied_head_quantized():
      contract = (((hidden.ndim - 1,), (0,)), ((), ()))
      return self.tied_head(hidden.astype(self.dtype), self.embed.table().T, contract, None).astype(jnp.float32)
    if self.cfg.tie_embeddings:
      return self.embed.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)
