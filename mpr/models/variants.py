"""Serving variants: one float weight set → a model per precision, with its real weight memory.

  variant = make_variant(cfg, params, precision("int4"))
  hidden, cache = variant.forward(tokens, chunk_lens, cache)   # jitted, shapes bucketed by the caller
  variant.weight_bytes                                           # what serving really stores

A quantized variant keeps only its frozen low-bit tree (AQT CONVERT output) plus the float leaves
it does not quantize (norms; the embeddings and LM head unless its precision has `emb` / `head`):
its SERVE-mode Decoder still declares the float weights, so `forward` feeds zeros built inside the
jitted function, which XLA drops because SERVE never reads them. A float variant stores its params in its compute dtype
(bf16): Dense/Embed cast to that dtype anyway, so this is numerically the same and halves memory.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mpr.models import kernels, params as params_lib, sharding
from mpr.models.config import ModelConfig
from mpr.models.params import expected_shapes
from mpr.models.decoder import Decoder, init_cache
from mpr.errors import UserError
from mpr.models.quant import Precision, Quant, tree_bytes


def is_frozen(path: params_lib.Path, prec: Precision) -> bool:
  """Float weights a SERVE model of `prec` declares but reads from the frozen tree instead."""
  if path == ("embed", "embedding"):
    return prec.quant_embed
  return path[-1] == "kernel" and (prec.quant_head or path[0] != "lm_head")


def freeze(cfg: ModelConfig, params: dict, prec: Precision, mesh: Mesh | None = None) -> dict:
  """AQT CONVERT: the frozen tree (per quantized weight: int values + scales) of a quantized variant.
  With a `mesh`, the float weights are read and the frozen tree written split over it (sharding.py)."""
  model = Decoder(cfg, Quant(prec, "convert"), prec.jnp_dtype)
  tokens = jnp.zeros((1, 1), jnp.int32)   # weights' quantization does not depend on activations

  def forward_and_head(m, *args):   # the head converts only when called
    return m.logits(m(*args)[0])

  def convert(p):
    _, state = model.apply({"params": p}, tokens, jnp.ones((1,), jnp.int32),
                           init_cache(cfg, 1, 1, prec.jnp_dtype), method=forward_and_head, mutable=["aqt"])
    return state["aqt"]

  if mesh is None:
    return jax.jit(convert)(params)
  return _split_aqt(convert, sharding.place_variables(mesh, {"params": params})["params"], mesh)


def _split_aqt(fn, arg, mesh: Mesh):
  """fn(arg), an 'aqt' tree, computed straight into the layout sharding.py gives that collection on `mesh`."""
  out = sharding.shardings(mesh, {"aqt": jax.eval_shape(fn, arg)})["aqt"]
  return jax.jit(fn, out_shardings=out)(arg)


@dataclasses.dataclass(frozen=True, eq=False)   # hashed by identity: a static jit argument
class Variant:
  cfg: ModelConfig
  prec: Precision
  model: Decoder
  variables: dict            # {"params": float leaves kept, "aqt": frozen tree (quantized only)}
  placeholders: tuple        # (path, shape) of float weights SERVE declares but never reads (is_frozen)

  @property
  def weight_bytes(self) -> int:
    return tree_bytes(self.variables)

  def full_variables(self, variables: dict) -> dict:
    """Inside jit: adds zero placeholders for the frozen weights the SERVE model declares."""
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
  def serve(cls, cfg: ModelConfig, prec: Precision, variables: dict, mesh: Mesh | None = None) -> "Variant":
    """A variant over ready serving variables (from make_variant, or restored from a checkpoint); a
    `pallas` kernel's are laid out for `mesh` (packed_for)."""
    if not prec.quantized:
      return cls(cfg, prec, Decoder(cfg, None, prec.jnp_dtype), variables, ())
    holes = tuple((p, s) for p, s in expected_shapes(cfg).items() if is_frozen(p, prec))
    quant = Quant(prec, "serve", mesh if prec.kernel == "pallas" else None)
    return cls(cfg, prec, Decoder(cfg, quant, prec.jnp_dtype), variables, holes)

  @property
  def packed_for(self) -> int:
    """The model-axis size a `pallas` variant's row-parallel weights are packed for (1 otherwise)."""
    mesh = self.model.quant.mesh if self.model.quant is not None else None
    return 1 if mesh is None else mesh.shape["model"]


def check_fits(cfg: ModelConfig, prec: Precision) -> None:
  """Group-wise scales need groups that tile every contracted dimension."""
  g = prec.group_size
  dims = {cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim}
  if g and any(d % g for d in dims):
    raise UserError(f"precision {prec.name}: group size {g} does not divide the model's contracted "
                    f"dimensions {sorted(dims)}")


def make_variant(cfg: ModelConfig, params: dict, prec: Precision, frozen: dict | None = None,
                 mesh: Mesh | None = None) -> Variant:
  """The serving variant of float `params` at precision `prec` (quantized ones are frozen here, or
  serve `frozen`, a tree of freeze()'s structure made another way, e.g. by mpr.models.gptq).

  With a `mesh` every array is made split over it (sharding.py) from host memory: no device ever
  holds a whole float copy of the model."""
  if prec.gptq and frozen is None:
    raise UserError(f"precision {prec.name}: GPTQ quantizes from calibration activations; put the convert "
                    "stage first in config.stages (or call mpr.models.gptq.make_variant)")
  dtype = prec.jnp_dtype
  place = (lambda tree: jax.tree.map(jnp.asarray, tree)) if mesh is None else functools.partial(sharding.place_variables, mesh)
  # Host arrays are cast on the host (ml_dtypes has bf16), so a float copy never lands on one device.
  cast = lambda x: x.astype(dtype) if isinstance(x, np.ndarray) else jnp.asarray(x, dtype)
  if not prec.quantized:
    return Variant.serve(cfg, prec, place({"params": jax.tree.map(cast, params)}))
  check_fits(cfg, prec)
  kept = {p: cast(v) for p, v in params_lib.flatten(params).items() if not is_frozen(p, prec)}
  aqt = freeze(cfg, params, prec, mesh) if frozen is None else place({"aqt": frozen})["aqt"]
  if prec.kernel == "pallas":
    aqt = _pack(aqt, prec, mesh)
  return Variant.serve(cfg, prec, {"params": place({"params": params_lib.unflatten(kept)})["params"], "aqt": aqt},
                       mesh)


def _pack(aqt: dict, prec: Precision, mesh: Mesh | None) -> dict:
  """A frozen tree packed for the fused kernel; on a mesh, packed for its model axis and split over it."""
  model = 1 if mesh is None else mesh.shape["model"]
  pack = functools.partial(kernels.pack_tree, bits=prec.weight_bits, model=model)
  return jax.jit(pack)(aqt) if mesh is None else _split_aqt(pack, aqt, mesh)


def abstract_variables(cfg: ModelConfig, prec: Precision, model: int = 1) -> dict:
  """The serving variables of `prec` as ShapeDtypeStructs, from no weights (a GPTQ tree has the shapes
  of rounding's); a `pallas` kernel's packed for a model axis of `model`."""
  prec = dataclasses.replace(prec, gptq=False)

  def build(p):
    variables = make_variant(cfg, p, dataclasses.replace(prec, kernel="xla")).variables
    if prec.kernel != "pallas":
      return variables
    return {**variables, "aqt": kernels.pack_tree(variables["aqt"], prec.weight_bits, model)}

  return jax.eval_shape(build, params_lib.abstract(cfg))
