"""Serving variants: one float weight set → a model per precision, with its real weight memory.

  variant = make_variant(cfg, params, precision("int4"))
  hidden, cache = variant.forward(tokens, chunk_lens, cache)   # jitted, shapes bucketed by the caller
  variant.weight_bytes                                           # what serving really stores

A quantized variant keeps only its frozen low-bit tree (AQT CONVERT output) plus the float leaves
that are not projection kernels (embeddings, norms, the LM head): its SERVE-mode Decoder still
declares the float kernels, so `forward` feeds zeros built inside the jitted function, which XLA
drops because SERVE never reads them. A float variant stores its params in its compute dtype
(bf16): Dense/Embed cast to that dtype anyway, so this is numerically the same and halves memory.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mpr.models import params as params_lib
from mpr.models.config import ModelConfig
from mpr.models.params import expected_shapes
from mpr.models.decoder import Decoder, init_cache
from mpr.models.quant import Precision, Quant, tree_bytes


def _is_projection(path: params_lib.Path, quant_head: bool) -> bool:
  return path[-1] == "kernel" and (quant_head or path[0] != "lm_head")


def freeze(cfg: ModelConfig, params: dict, prec: Precision, quant_head: bool = False) -> dict:
  """AQT CONVERT: the frozen tree (per projection: int qvalue + scales) of a quantized variant."""
  model = Decoder(cfg, Quant(prec, "convert"), prec.jnp_dtype, quant_head)
  tokens = jnp.zeros((1, 1), jnp.int32)   # weights' quantization does not depend on activations

  @jax.jit
  def convert(p):
    _, state = model.apply({"params": p}, tokens, jnp.ones((1,), jnp.int32),
                           init_cache(cfg, 1, 1, prec.jnp_dtype), mutable=["aqt"])
    return state["aqt"]

  return convert(params)


@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: a static jit argument
class Variant:
  cfg: ModelConfig
  prec: Precision
  model: Decoder
  variables: dict            # {"params": float leaves kept, "aqt": frozen tree (quantized only)}
  placeholders: tuple        # (path, shape) of projection kernels SERVE declares but never reads

  @property
  def weight_bytes(self) -> int:
    return tree_bytes(self.variables)

  def full_variables(self, variables: dict) -> dict:
    """Inside jit: adds zero placeholders for the kernels the SERVE model declares."""
    if not self.placeholders:
      return variables
    flat = params_lib.flatten(variables["params"])
    for path, shape in self.placeholders:
      flat[path] = jnp.zeros(shape, self.prec.jnp_dtype)
    return {**variables, "params": params_lib.unflatten(flat)}

  @functools.cached_property
  def _forward(self):
    def fwd(variables, tokens, chunk_lens, cache):
      return self.model.apply(self.full_variables(variables), tokens, chunk_lens, cache)
    return jax.jit(fwd, donate_argnums=(3,))

  @functools.cached_property
  def _logits(self):
    def lg(variables, hidden):
      return self.model.apply(self.full_variables(variables), hidden, method=Decoder.logits)
    return jax.jit(lg)

  def forward(self, tokens, chunk_lens, cache):
    """Appends tokens [B, T] to the cache (donated); returns (hidden [B, T, H], new cache)."""
    return self._forward(self.variables, tokens, chunk_lens, cache)

  def logits(self, hidden):
    return self._logits(self.variables, hidden)

  def init_cache(self, batch: int, length: int):
    return init_cache(self.cfg, batch, length, self.prec.jnp_dtype)

  @classmethod
  def serve(cls, cfg: ModelConfig, prec: Precision, variables: dict, quant_head: bool = False) -> "Variant":
    """A variant over ready serving variables (from make_variant, or restored from a checkpoint)."""
    if not prec.quantized:
      return cls(cfg, prec, Decoder(cfg, None, prec.jnp_dtype), variables, ())
    holes = tuple((p, s) for p, s in expected_shapes(cfg).items() if _is_projection(p, quant_head))
    return cls(cfg, prec, Decoder(cfg, Quant(prec, "serve"), prec.jnp_dtype, quant_head), variables, holes)


def make_variant(cfg: ModelConfig, params: dict, prec: Precision, quant_head: bool = False) -> Variant:
  """The serving variant of float `params` at precision `prec` (quantized ones are frozen here)."""
  dtype = prec.jnp_dtype
  if not prec.quantized:
    return Variant.serve(cfg, prec, {"params": jax.tree.map(lambda x: jnp.asarray(x, dtype), params)})
  kept = {p: jnp.asarray(v, dtype) for p, v in params_lib.flatten(params).items()
          if not _is_projection(p, quant_head)}
  variables = {"params": params_lib.unflatten(kept), "aqt": freeze(cfg, params, prec, quant_head)}
  return Variant.serve(cfg, prec, variables, quant_head)
