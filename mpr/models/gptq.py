"""GPTQ: weight quantization that compensates each column's rounding error from calibration activations.

  hs = gptq.hessians(cfg, params, sequences)       # per projection: H = Σ x xᵀ over the calibration tokens
  frozen = gptq.freeze(cfg, params, prec, hs)      # AQT's frozen tree, GPTQ's integers and scales in it
  variant = Variant.serve(cfg, prec, {"params": kept_float_leaves, "aqt": frozen})   # or gptq.make_variant

Why: rounding every weight to its nearest grid point (AQT's CONVERT, absmax or an SNR-searched clip)
ignores which inputs the layer actually sees. GPTQ (Frantar et al., 2022) quantizes a kernel's input
rows one at a time and moves each row's rounding error onto the rows not yet quantized, weighted by
the inverse Hessian of the layer's squared output error, H = 2 Σ x xᵀ: the output on calibration-like
inputs stays close to the float one. The result is the same frozen tree the other variants serve (AQT's
symmetric grid, integers in int8 / int4 / int2 containers and one scale per output channel or per
group of `group_size` inputs), so serving, checkpoints and memory accounting do not change.

Here the Hessians come from the float model's activations on the calibration sequences (every projection
at once, one pass), not from the partly quantized model layer by layer as in the paper's sequential
variant: one forward pass instead of one per layer, at some loss in the deeper layers.

Axes: a kernel W is [in, out] (Dense's layout: the contraction runs over `in`); H is [in, in].
"""
from __future__ import annotations

from typing import Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpr.errors import UserError
from mpr.models import params as params_lib, sharding, variants
from mpr.models.config import ModelConfig
from mpr.models.decoder import Decoder, init_cache
from mpr.models.layers import Linear
from mpr.models.quant import MSE_RATIOS, Precision, grid

Path = tuple[str, ...]


# --- calibration ----------------------------------------------------------------------------------

def segments(streams: Iterable[np.ndarray], count: int, length: int) -> list[np.ndarray]:
  """Up to `count` calibration sequences of `length` tokens, cut from the concatenated token
  `streams` (e.g. agent contexts): one sequence length, so one compiled pass."""
  stream = np.concatenate([np.zeros(0, np.int32)] + [np.asarray(x, np.int32) for x in streams])
  n = min(count, len(stream) // length)
  if n == 0:
    raise UserError(f"gptq: calibration holds {len(stream)} tokens, fewer than one {length}-token sequence")
  return [stream[i * length:(i + 1) * length] for i in range(n)]


def hessians(cfg: ModelConfig, params: dict, sequences: Iterable[np.ndarray], head: bool = False,
             mesh=None) -> dict[Path, np.ndarray]:
  """Σ x xᵀ (float64) of the inputs of every projection over all tokens of `sequences` (1-D token
  arrays), keyed by the projection's kernel path; with `head`, of the LM head too. Sequences of one
  length share one compiled pass; with a `mesh` the float model runs split over it (sharding.py).
  The Hessians themselves are held on the host: Σ in² × 8 bytes over the projections."""
  model = Decoder(cfg, None, jnp.float32)
  if mesh is not None:
    params = sharding.place_variables(mesh, {"params": jax.tree.map(lambda x: np.asarray(x, np.float32), params)})["params"]

  @jax.jit
  def one(params, tokens):
    acc = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, Linear) and context.method_name == "__call__":
        x = args[0].reshape(-1, args[0].shape[-1]).astype(jnp.float32)
        acc[tuple(context.module.path) + ("proj", "kernel")] = x.T @ x
      return next_fun(*args, **kwargs)

    def forward(m, *a):
      hidden = m(*a)[0]
      return m.logits(hidden) if head else hidden

    n = tokens.shape[1]
    with nn.intercept_methods(record):
      model.apply({"params": params}, tokens, jnp.array([n], jnp.int32), init_cache(cfg, 1, n, jnp.float32),
                  method=forward)
    return acc

  out: dict[Path, np.ndarray] = {}
  count = 0
  for seq in sequences:
    seq = np.asarray(seq, np.int32)
    if seq.ndim != 1 or seq.size == 0:
      raise UserError(f"gptq calibration sequences must be non-empty 1-D token arrays, got shape {seq.shape}")
    for path, h in one(params, seq[None]).items():
      out[path] = out.get(path, 0.0) + np.asarray(h, np.float64)
    count += 1
  if not count:
    raise UserError("gptq: no calibration sequences")
  return out


# --- the solver -----------------------------------------------------------------------------------

def _scales(w: np.ndarray, prec: Precision) -> np.ndarray:
  """Per output channel of w [k, out] (one group of inputs): the scale at the calibration's clip ratio
  (absmax, a fixed clip, or per channel the ratio of quant.MSE_RATIOS with the least rounding error),
  on quant.grid: the grid the other variants use."""
  bound, top = grid(prec.weight_bits)
  absmax = np.abs(w).max(axis=0)
  scale_at = lambda r: np.where(absmax > 0, absmax * r / bound, 1.0)
  if prec.calibration == "clip":
    return scale_at(prec.clip_scale)
  if prec.calibration != "mse":
    return scale_at(1.0)
  err = lambda s: ((np.clip(np.round(w / s), -top, top) * s - w) ** 2).sum(axis=0)
  best, best_err = scale_at(MSE_RATIOS[0]), err(scale_at(MSE_RATIOS[0]))
  for r in MSE_RATIOS[1:]:
    s = scale_at(r)
    e = err(s)
    best, best_err = np.where(e < best_err, s, best), np.minimum(e, best_err)
  return best


def quantize_kernel(w: np.ndarray, h: np.ndarray, prec: Precision, scale_dtype=jnp.bfloat16,
                    damp: float = 0.01, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """GPTQ of one kernel w [in, out] under Hessian h [in, in]. → (integers [in, out], scales [groups, out])
  with groups = in / group_size (1 without groups); w ≈ integers · scales of each row's group.

  Rows (inputs) are quantized in order. A row's rounding error e (per output channel, divided by the
  inverse Hessian's diagonal) is subtracted from the later rows in proportion to the Cholesky factor of
  H⁻¹: the least-squares correction of the layer's output. `damp` × mean(diag H) is added to the
  diagonal for a stable inverse; inputs never seen (zero diagonal) are set to zero. A group's scales
  are taken from its rows as updated so far, then rounded to `scale_dtype` (the frozen tree's), so
  the integers are those the served scales reproduce.
  """
  if not prec.quantized:
    raise UserError(f"gptq needs a quantized precision, got {prec.name}")
  n, out = w.shape
  if h.shape != (n, n):
    raise UserError(f"gptq: Hessian shape {h.shape} does not match kernel inputs {n}")
  g = prec.group_size or n
  if n % g:
    raise UserError(f"gptq: group size {g} does not divide the kernel's {n} inputs")
  w = np.array(w, np.float64)
  h = np.array(h, np.float64)
  dead = np.diag(h) == 0
  h[dead, dead] = 1.0
  w[dead] = 0.0
  h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
  hinv = np.linalg.cholesky(np.linalg.inv(h)).T          # upper: row i holds i's effect on rows > i
  _, top = grid(prec.weight_bits)
  q = np.zeros((n, out), np.float64)
  scales = np.zeros((n // g, out), np.float64)
  for lo in range(0, n, block):
    hi = min(lo + block, n)
    err = np.zeros((hi - lo, out))
    for i in range(lo, hi):
      if i % g == 0:
        s = _scales(w[i:i + g], prec)
        scales[i // g] = np.asarray(jnp.asarray(s, scale_dtype).astype(jnp.float32), np.float64)
      s = scales[i // g]
      q[i] = np.clip(np.round(w[i] / s), -top, top)
      e = (w[i] - q[i] * s) / hinv[i, i]
      w[i + 1:hi] -= np.outer(hinv[i, i + 1:hi], e)
      err[i - lo] = e
    w[hi:] -= hinv[lo:hi, hi:].T @ err                    # the block's errors onto the later blocks at once
  return q, scales


# --- frozen variants ------------------------------------------------------------------------------

def _frozen_leaf(frozen: dict, kernel_path: Path):
  """The AQT QTensor that serves the kernel at `kernel_path` (…, "proj", "kernel") in a frozen tree."""
  node = frozen
  for name in kernel_path[:-1]:
    node = node[name]
  return node["AqtDotGeneral_0"]["qrhs"]["frozen"]


def freeze(cfg: ModelConfig, params: dict, prec: Precision, hs: dict[Path, np.ndarray],
           damp: float = 0.01) -> dict:
  """The frozen tree of `prec` (mpr.models.variants.freeze) with every projection that has a Hessian
  in `hs` quantized by GPTQ instead of rounded to nearest. On the host: the solver is numpy, kernel by
  kernel, and make_variant places the result."""
  frozen = jax.device_get(variants.freeze(cfg, params, prec))
  flat = params_lib.flatten(params)
  missing = [p for p in flat if p[-1] == "kernel" and variants.is_frozen(p, prec) and p not in hs]
  if missing:
    raise UserError(f"gptq: no calibration Hessian for {'/'.join(missing[0])} ({len(missing)} kernels)")
  for path, h in hs.items():
    if path not in flat or not variants.is_frozen(path, prec):
      continue                                   # e.g. the head of a variant that leaves it float
    qt = _frozen_leaf(frozen, path)
    scale_dtype = qt.scale[0].dtype
    q, s = quantize_kernel(np.asarray(flat[path], np.float32), h, prec, scale_dtype, damp)
    qvalue = np.asarray(q.reshape(qt.qvalue.shape)).astype(qt.qvalue.dtype)
    scale = np.asarray(s.reshape(qt.scale[0].shape)).astype(scale_dtype)
    frozen = _replace(frozen, path[:-1], qt.replace(qvalue=qvalue, scale=[scale]))
  return frozen


def _replace(tree: dict, path: Path, leaf) -> dict:
  if not path:
    return {**tree, "AqtDotGeneral_0": {**tree["AqtDotGeneral_0"], "qrhs": {**tree["AqtDotGeneral_0"]["qrhs"],
                                                                             "frozen": leaf}}}
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], leaf)}


def make_variant(cfg: ModelConfig, params: dict, prec: Precision, hs: dict[Path, np.ndarray],
                 damp: float = 0.01, mesh=None) -> variants.Variant:
  """A serving variant like mpr.models.variants.make_variant's (split over `mesh` if given), its
  projections quantized by GPTQ."""
  return variants.make_variant(cfg, params, prec, frozen=freeze(cfg, params, prec, hs, damp), mesh=mesh)
