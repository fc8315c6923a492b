"""Precision variants of one float weight set, through AQT's injected dot_general.

  prec = precision("int4")                  # a named Precision (bits, granularity, calibration)
  prec = precision("w4a8-g32-mse-head")     # the same, with options in its name
  variant = make_variant(cfg, params, prec) # mpr.models.variants: CONVERT once, then SERVE

The float params are never copied per variant: TRAIN mode quantizes them on the fly (`Quant(prec,
"train")`), CONVERT produces the frozen tree once, SERVE reads it. Variants differ only in the
`Quant` injector handed to the decoder, whose `dot_general_cls()` every projection calls.

Named variants (weights; activations stay in `dtype` unless act_bits is set):
  f32   reference float32, no quantization (parity tests)
  bf16  the high-precision tier: bf16 compute, float weights
  int8  W8A16 per-channel          w8a8  int8 weights and activations, int32 accumulation
  int4  W4A16 per-channel          w4a8  int4 weights, int8 activations   w4a4  both int4
  int3  W3A16 (stored in int4 containers)
  int2  W2A16 (stored as int2)
Options, appended with '-' (any order, each once; the name is rewritten in canonical order):
  g<N>      group-wise scales: one per N inputs of each output channel (per-channel without it)
  mse       per channel (or group), the clipping ratio with the best SNR (AQT's auto calibration)
  clip<x>   clip every channel at x × its absmax (quantized activations too)
  head      quantize the LM head (on a tied model: its matmul, through the injected dot_general)
  emb       store the token embedding table at the weight bits, per row (or group of it). A tied
            model's head then reads that low-bit table too, weight-only: its activations stay float
  gptq      the projections' integers by GPTQ (error-compensating, from calibration activations) on the
            grid and scales the other options choose; made by the `convert` stage, which calibrates
  pallas    serve the projections through the fused Pallas kernel (weight-only 8, 4 and 3 bits): the
            integers are packed once and unpacked and scaled inside the matmul
Activations (a8, a4) are quantized dynamically per token (per token and group with g<N>).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mpr.errors import UserError


@dataclasses.dataclass(frozen=True)
class Precision:
  name: str
  weight_bits: Optional[int] = None   # None: float weights
  act_bits: Optional[int] = None      # 8 or 4: activations quantized per token, integer dot
  group_size: Optional[int] = None    # None: one scale per output channel; k: per k-long group of inputs
  calibration: str = "absmax"         # absmax | clip (absmax × clip_scale) | mse (SNR-optimal clip search)
  clip_scale: float = 1.0
  dtype: str = "bfloat16"             # compute/activation dtype
  quant_head: bool = False            # the LM head's weights too (it usually stays high precision)
  quant_embed: bool = False           # the token embedding table too
  gptq: bool = False                  # projections quantized by GPTQ from calibration (mpr.models.gptq)
  kernel: str = "xla"                 # how served projections multiply: xla (AQT's dot) | pallas (mpr.models.kernels)

  @property
  def quantized(self) -> bool:
    return self.weight_bits is not None

  @property
  def storage_bits(self) -> int:
    """Bits each stored weight really occupies (XLA has int8, int4 and int2 containers)."""
    if self.weight_bits is None:
      return 16 if self.dtype == "bfloat16" else 32
    return _CONTAINER_BITS[self.weight_bits]

  @property
  def storage_dtype(self):
    return {8: jnp.int8, 4: jnp.int4, 2: jnp.int2}[self.storage_bits]

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


_CONTAINER_BITS = {8: 8, 4: 4, 3: 4, 2: 2}
PRECISIONS = {
    "f32": Precision("f32", dtype="float32"),
    "bf16": Precision("bf16"),
    "int8": Precision("int8", weight_bits=8),
    "w8a8": Precision("w8a8", weight_bits=8, act_bits=8),
    "int4": Precision("int4", weight_bits=4),
    "w4a8": Precision("w4a8", weight_bits=4, act_bits=8),
    "w4a4": Precision("w4a4", weight_bits=4, act_bits=4),
    "int3": Precision("int3", weight_bits=3),
    "int2": Precision("int2", weight_bits=2),
}
_CALIBRATIONS = ("absmax", "clip", "mse")
MSE_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)   # clipping candidates of `mse`


def grid(bits: int) -> tuple[float, float]:
  """AQT's symmetric integer grid for `bits`: (bound, top). scale = absmax / bound; integers within ±top,
  top = bound − 1/2 (zero preserved, round to nearest even)."""
  bound = 2.0 ** (bits - 1) - 0.5
  return bound, bound - 0.5
_OPTION = re.compile(r"g(?P<group>[1-9]\d*)|(?P<mse>mse)|clip(?P<clip>0?\.\d+|1(\.0*)?)|(?P<head>head)|(?P<emb>emb)"
                     r"|(?P<gptq>gptq)|(?P<pallas>pallas)")


def _canonical(p: Precision) -> str:
  base = next((n for n, q in PRECISIONS.items()
               if (q.weight_bits, q.act_bits, q.dtype) == (p.weight_bits, p.act_bits, p.dtype)), None)
  if base is None:
    raise UserError(f"unsupported bit widths: weights {p.weight_bits}, activations {p.act_bits}; "
                    f"known precisions: {sorted(PRECISIONS)}")
  opts = [f"g{p.group_size}"] if p.group_size else []
  opts += {"absmax": [], "mse": ["mse"], "clip": [f"clip{p.clip_scale:g}"]}[p.calibration]
  opts += ["head"] * p.quant_head + ["emb"] * p.quant_embed + ["gptq"] * p.gptq + ["pallas"] * (p.kernel == "pallas")
  return "-".join([base] + opts)


def _parse(name: str) -> tuple[str, dict[str, Any]]:
  """'int4-g32-mse' → ('int4', {'group_size': 32, 'calibration': 'mse'})."""
  base, *opts = name.split("-")
  if base not in PRECISIONS:
    raise UserError(f"unknown precision {name!r}; known: {sorted(PRECISIONS)}, with options "
                    "-g<N> -mse -clip<x> -head -emb -gptq -pallas")
  fields: dict[str, Any] = {}
  for opt in opts:
    m = _OPTION.fullmatch(opt)
    if not m:
      raise UserError(f"unknown option {opt!r} in precision {name!r}; options: g<N>, mse, clip<x> (0 < x <= 1), head, emb, gptq, pallas")
    kind = next(k for k, v in m.groupdict().items() if v)
    if kind == "group":
      new = {"group_size": int(m["group"])}
    elif kind == "mse":
      new = {"calibration": "mse"}
    elif kind == "clip":
      new = {"calibration": "clip", "clip_scale": float(m["clip"])}
    elif kind == "pallas":
      new = {"kernel": "pallas"}
    else:
      new = {{"head": "quant_head", "emb": "quant_embed", "gptq": "gptq"}[kind]: True}
    if set(new) & set(fields):
      raise UserError(f"precision {name!r}: {opt!r} repeats or contradicts an earlier option")
    fields.update(new)
  return base, fields


def precision(name: str, **overrides) -> Precision:
  """A named variant with '-' options ("int4-g32-mse"), optionally with fields overridden."""
  base, fields = _parse(name)
  p = dataclasses.replace(PRECISIONS[base], **{**fields, **overrides})
  if p.calibration not in _CALIBRATIONS:
    raise UserError(f"unknown calibration {p.calibration!r}; known: {list(_CALIBRATIONS)}")
  if p.kernel not in ("xla", "pallas"):
    raise UserError(f"precision {name!r}: unknown kernel {p.kernel!r}; known: xla, pallas")
  if p.kernel == "pallas" and (p.act_bits or p.weight_bits not in (8, 4, 3)):
    raise UserError(f"precision {name!r}: the pallas kernel serves weight-only 8, 4 and 3 bits")
  if not p.quantized and (p.group_size or p.calibration != "absmax" or p.quant_head or p.quant_embed or p.gptq):
    raise UserError(f"precision {name!r}: options apply to quantized weights, {base} has float weights")
  if p.calibration == "clip" and not 0.0 < p.clip_scale <= 1.0:
    raise UserError(f"precision {name!r}: clip scale must be in (0, 1], got {p.clip_scale}")
  if p.calibration != "clip" and p.clip_scale != 1.0:
    raise UserError(f"precision {name!r}: a clip scale needs calibration='clip'")
  p = dataclasses.replace(p, name=_canonical(p))
  # The name is what configs, logs and checkpoints carry: it must rebuild these exact fields.
  try:
    base, fields = _parse(p.name)
    same = dataclasses.replace(PRECISIONS[base], name=p.name, **fields) == p
  except UserError:
    same = False
  if not same:
    raise UserError(f"precision {name!r}: clip scale {p.clip_scale!r} does not survive its name {p.name!r}; "
                    "use at most 6 significant digits")
  return p


def _aqt_config(p: Precision):
  from aqt.jax.v2 import config as aqt_config
  from aqt.jax.v2.aqt_dot_general import dot_general_make

  cfg = dot_general_make(lhs_bits=p.act_bits, rhs_bits=p.weight_bits)
  rhs = cfg.fwd.dg_quantizer.rhs
  # f32 scales: bf16-rounded frozen scales would make SERVE differ from on-the-fly TRAIN outputs.
  aqt_config.set_scale_and_bias_dtype(cfg, jnp.float32)
  if p.weight_bits == 3:
    rhs.numerics.dtype = jnp.int4      # 3-bit values live in 4-bit containers
  elif p.weight_bits == 2:
    aqt_config.set_fwd_rhs_dtype_int2(cfg)
  if p.calibration == "clip":
    aqt_config.set_absmax_calib_scale(cfg, p.clip_scale)
  elif p.calibration == "mse":
    # Candidate clipping ratios; AQT keeps, per channel (or group), the one with the best SNR.
    aqt_config.set_auto_calib_scale(cfg, MSE_RATIOS)
  if p.act_bits is not None:
    # Integer × integer must accumulate in int32: without it XLA:CPU takes a 100× slower path (stack.md §4).
    aqt_config.set_accumulator_dtype(cfg, jnp.int32, None, None)
  return cfg


@dataclasses.dataclass(frozen=True)
class Quant:
  """The injector a Decoder receives: a Precision plus an AQT mode (train | convert | serve), and for a
  `pallas` kernel the mesh its packed weights are split over (None: one device)."""
  prec: Precision
  mode: str = "serve"
  mesh: Optional[Any] = None

  def dot_general_cls(self):
    from aqt.jax.v2 import tiled_dot_general
    from aqt.jax.v2.flax import aqt_flax

    modes = {"train": aqt_flax.QuantMode.TRAIN, "convert": aqt_flax.QuantMode.CONVERT,
             "serve": aqt_flax.QuantMode.SERVE}
    tiling = None
    if self.prec.group_size:
      # Dense contracts lhs axis -1 with rhs axis 0: tile both into groups of group_size inputs.
      tiling = tiled_dot_general.Cfg(
          lhs=tiled_dot_general.TensorTiling(
              contraction_axes=[tiled_dot_general.AxisTiling(axis=-1, tile_size=self.prec.group_size)],
              remaining_axes=[]),
          rhs=tiled_dot_general.TensorTiling(
              contraction_axes=[tiled_dot_general.AxisTiling(axis=0, tile_size=self.prec.group_size)],
              remaining_axes=[]))
    return functools.partial(
        aqt_flax.AqtDotGeneral, _aqt_config(self.prec), prng_name=None,
        rhs_quant_mode=modes[self.mode], lhs_quant_mode=aqt_flax.QuantMode.TRAIN,
        rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
        lhs_freeze_mode=aqt_flax.FreezerMode.NONE, use_legacy_freezer=False, tiling_cfg=tiling)


def injector(prec: Precision, mode: str = "serve") -> Optional[Quant]:
  return Quant(prec, mode) if prec.quantized else None


# --- tables (embeddings) ---------------------------------------------------------------------------

def quantize_table(table: jax.Array, prec: Precision) -> tuple[jax.Array, jax.Array]:
  """[V, H] float → (integer values [V, H/g, g] as f32, scales [V, H/g, 1] f32): one scale per row
  (per token), or per g-long group of it. A lookup is a gather, not a dot_general, so AQT's injector
  does not reach it; the grid is AQT's symmetric one (bound 2^(b-1) - 1/2, zero preserved, round to
  nearest even), so a tied table quantized here matches the projections' numerics."""
  v, h = table.shape
  g = prec.group_size or h
  w = table.astype(jnp.float32).reshape(v, h // g, g)
  bound, top = grid(prec.weight_bits)
  absmax = jnp.max(jnp.abs(w), axis=-1, keepdims=True)

  def at(ratio):
    scale = jnp.where(absmax > 0, absmax * ratio / bound, 1.0)
    q = jnp.round(jnp.clip(w / scale, -top, top))
    return q, scale

  if prec.calibration != "mse":
    return at(prec.clip_scale if prec.calibration == "clip" else 1.0)
  # A running best keeps two candidate tables alive, not nine (a 150k-token table is GBs in f32).
  q, scale = at(MSE_RATIOS[0])
  err = jnp.sum((q * scale - w) ** 2, axis=-1, keepdims=True)
  for ratio in MSE_RATIOS[1:]:
    q_r, scale_r = at(ratio)
    err_r = jnp.sum((q_r * scale_r - w) ** 2, axis=-1, keepdims=True)
    better = err_r < err           # ties keep the larger ratio
    q, scale, err = jnp.where(better, q_r, q), jnp.where(better, scale_r, scale), jnp.minimum(err, err_r)
  return q, scale


def dequantize_table(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """(values [..., G, g], scales [..., G, 1]) → [..., G·g] in `dtype`."""
  w = q.astype(jnp.float32) * scale
  return w.reshape(*w.shape[:-2], -1).astype(dtype)


# --- weight memory ------------------------------------------------------------------------------

def leaf_bits(x: Any) -> int:
  """Bits an array occupies; `.nbytes` counts int4/int2 as a whole byte per element, this does not."""
  dtype = jnp.dtype(x.dtype)
  bits = {jnp.dtype(jnp.int4): 4, jnp.dtype(jnp.int2): 2}.get(dtype, dtype.itemsize * 8)
  return int(np.prod(x.shape)) * bits


def tree_bytes(tree: Any) -> int:
  return sum(leaf_bits(x) for x in jax.tree_util.tree_leaves(tree)) // 8
