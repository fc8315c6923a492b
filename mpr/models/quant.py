"""Precision variants of one float weight set, through AQT's injected dot_general.

  prec = precision("int4")                  # a named Precision (bits, granularity, calibration)
  frozen = freeze(cfg, params, prec)        # CONVERT: stored low-bit weights + scales ('aqt' tree)
  model, variables = serving(cfg, params_or_none, frozen, prec)   # SERVE reads only those

The float params are never copied per variant: TRAIN mode quantizes them on the fly (`Quant(prec,
"train")`), CONVERT produces the frozen tree once, SERVE reads it. Variants differ only in the
`Quant` injector handed to the decoder, whose `dot_general_cls()` every projection calls.

Named variants (weights; activations stay in `dtype` unless act_bits is set):
  f32   reference float32, no quantization (parity tests)
  bf16  the high-precision tier: bf16 compute, float weights
  int8  W8A16 per-channel          w8a8  int8 weights and activations, int32 accumulation
  int4  W4A16 per-channel          int3  W3A16 (stored in int4 containers)
  int2  W2A16 (stored as int2)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mpr.errors import UserError


@dataclasses.dataclass(frozen=True)
class Precision:
  name: str
  weight_bits: Optional[int] = None   # None: float weights
  act_bits: Optional[int] = None      # 8: W8A8, the int8×int8→int32 dot
  group_size: Optional[int] = None    # None: one scale per output channel; k: per k-long group of inputs
  calibration: str = "absmax"         # absmax | clip (absmax × clip_scale) | mse (SNR-optimal clip search)
  clip_scale: float = 1.0
  dtype: str = "bfloat16"             # compute/activation dtype

  @property
  def quantized(self) -> bool:
    return self.weight_bits is not None

  @property
  def storage_bits(self) -> int:
    """Bits each stored weight really occupies (XLA has int8, int4 and int2 containers)."""
    if self.weight_bits is None:
      return 16 if self.dtype == "bfloat16" else 32
    return {8: 8, 4: 4, 3: 4, 2: 2}[self.weight_bits]

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


PRECISIONS = {
    "f32": Precision("f32", dtype="float32"),
    "bf16": Precision("bf16"),
    "int8": Precision("int8", weight_bits=8),
    "w8a8": Precision("w8a8", weight_bits=8, act_bits=8),
    "int4": Precision("int4", weight_bits=4),
    "int3": Precision("int3", weight_bits=3),
    "int2": Precision("int2", weight_bits=2),
}
_CALIBRATIONS = ("absmax", "clip", "mse")


def precision(name: str, **overrides) -> Precision:
  """A named variant, optionally with fields overridden (group_size=128, calibration="mse", ...)."""
  if name not in PRECISIONS:
    raise UserError(f"unknown precision {name!r}; known: {sorted(PRECISIONS)}")
  p = dataclasses.replace(PRECISIONS[name], **overrides)
  if p.calibration not in _CALIBRATIONS:
    raise UserError(f"unknown calibration {p.calibration!r}; known: {list(_CALIBRATIONS)}")
  if p.weight_bits not in (None, 2, 3, 4, 8) or p.act_bits not in (None, 8):
    raise UserError(f"unsupported bit widths: weights {p.weight_bits}, activations {p.act_bits}")
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
    aqt_config.set_auto_calib_scale(cfg, (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5))
  if p.act_bits is not None:
    # int8 × int8 must accumulate in int32: without it XLA:CPU takes a 100× slower path (stack.md §4).
    aqt_config.set_accumulator_dtype(cfg, jnp.int32, None, None)
  return cfg


@dataclasses.dataclass(frozen=True)
class Quant:
  """The injector a Decoder receives: a Precision plus an AQT mode (train | convert | serve)."""
  prec: Precision
  mode: str = "serve"

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


# --- weight memory ------------------------------------------------------------------------------

def leaf_bits(x: Any) -> int:
  """Bits an array occupies; `.nbytes` counts int4/int2 as a whole byte per element, this does not."""
  dtype = jnp.dtype(x.dtype)
  bits = {jnp.dtype(jnp.int4): 4, jnp.dtype(jnp.int2): 2}.get(dtype, dtype.itemsize * 8)
  return int(np.prod(x.shape)) * bits


def tree_bytes(tree: Any) -> int:
  return sum(leaf_bits(x) for x in jax.tree_util.tree_leaves(tree)) // 8
