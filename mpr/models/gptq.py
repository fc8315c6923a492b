"""GPTQ: weight quantization that compensates each column's rounding error from calibration activations.

  hs = gptq.hessians(cfg, params, sequences)       # per layer, per projection: H = Σ x xᵀ over the calibration tokens
  frozen = gptq.freeze(cfg, params, prec, hs)      # AQT's frozen tree, GPTQ's integers and scales in it
  variant = Variant.serve(cfg, prec, {"params": kept_float_leaves, "aqt": frozen})   # or gptq.make_variant

Why: rounding every weight to its nearest grid point (AQT's CONVERT, absmax or an SNR-searched clip)
ignores which inputs the layer actually sees. GPTQ (Frantar et al., 2022) quantizes a kernel's input
rows one at a time and moves each row's rounding error onto the rows not yet quantized, weighted by
the inverse Hessian of the layer's squared output error, H = 2 Σ x xᵀ: the output on calibration-like
inputs stays close to the float one. The result is the same frozen tree the other variants serve (AQT's
symmetric grid, integers in int8 / int4 / int2 containers and one scale per output channel or per
group of `group_size` inputs), so serving, checkpoints and memory accounting do not change.

Calibration runs layer by layer: the calibration sequences' hidden states are carried through one
block at a time, that block's Hessians are handed to the solver and dropped before the next block
runs, so the host holds one layer's Hessians (an 8B model: about 2 GB, not 35). The inputs are the
float model's activations, not the partly quantized model's as in the paper's sequential variant.

Axes: a kernel W is [in, out] (Dense's layout: the contraction runs over `in`); H is [in, in].
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpr.errors import UserError
from mpr.models import params as params_lib, sharding, variants
from mpr.models.config import ModelConfig
from mpr.models.decoder import Decoder
from mpr.models.layers import Block, Linear, rope_inv_freq
from mpr.models.params import LAYERS
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
             mesh=None) -> Iterator[tuple[Optional[int], dict[Path, np.ndarray]]]:
  """Σ x xᵀ (float64, on the host) of the inputs of every projection over all tokens of `sequences`
  (1-D token arrays), one layer at a time: yields (layer, {stacked kernel path: H}) for each block in
  order, then with `head` (None, {LM head path: H}). Lazy: a layer's forward pass runs when the
  consumer asks for it. With a `mesh` the float model runs split over it (sharding.py)."""
  seqs = [np.asarray(x, np.int32) for x in sequences]
  for seq in seqs:
    if seq.ndim != 1 or seq.size == 0:
      raise UserError(f"gptq calibration sequences must be non-empty 1-D token arrays, got shape {seq.shape}")
  if not seqs:
    raise UserError("gptq: no calibration sequences")
  # One piece of the model on the device(s) at a time, in f32: no whole float copy of an 8B model.
  def put(tree):
    tree = {"params": jax.tree.map(lambda x: np.asarray(x, np.float32), tree)}
    return tree if mesh is None else sharding.place_variables(mesh, tree)

  model, block = Decoder(cfg, None, jnp.float32), Block(cfg, None, jnp.float32)
  inv_freq = jnp.asarray(rope_inv_freq(cfg))

  @jax.jit
  def one_layer(variables, x):
    acc = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, Linear) and context.method_name == "__call__":
        inputs = args[0].reshape(-1, args[0].shape[-1])
        acc[(LAYERS, *context.module.path, "proj", "kernel")] = inputs.T @ inputs
      return next_fun(*args, **kwargs)

    n = x.shape[1]
    kv = jnp.zeros((1, 1, n, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
    with nn.intercept_methods(record):
      (x, _), _ = block.apply(variables, (x, (kv, kv)), 0, jnp.arange(n)[None], jnp.zeros((1,), jnp.int32), inv_freq)
    return x, acc

  @jax.jit
  def embed(variables, tokens):
    return model.apply(variables, tokens, method=lambda m, t: m.embed(t))

  @jax.jit
  def head_input(variables, x):
    x = model.apply(variables, x, method=lambda m, x: m.final_norm(x))[0]
    return x.T @ x

  def layer_by_layer():
    xs = [embed(put({"embed": params["embed"]}), seq[None]) for seq in seqs]
    for layer in range(cfg.num_layers):
      variables = put(jax.tree.map(lambda a: a[layer], params[LAYERS]))
      out: dict[Path, np.ndarray] = {}
      for i, x in enumerate(xs):
        xs[i], acc = one_layer(variables, x)
        for path, h in acc.items():
          out[path] = out.get(path, 0.0) + np.asarray(h, np.float64)
      yield layer, out
    if head:
      norm = put({"final_norm": params["final_norm"]})
      yield None, {("lm_head", "proj", "kernel"): sum(np.asarray(head_input(norm, x), np.float64) for x in xs)}

  return layer_by_layer()     # bad sequences fail at the call, not at the first layer


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


def freeze(cfg: ModelConfig, params: dict, prec: Precision,
           hessians: Iterable[tuple[Optional[int], dict[Path, np.ndarray]]], damp: float = 0.01, mesh=None) -> dict:
  """The frozen tree of `prec` (mpr.models.variants.freeze) with every projection quantized by GPTQ
  under the Hessians that `hessians` (as from hessians()) gives, layer by layer, instead of rounded to
  nearest. On the host: the solver is numpy, kernel by kernel, and make_variant places the result. The
  rounded tree it starts from is made over `mesh` when given (no whole float copy on one device)."""
  frozen = jax.device_get(variants.freeze(cfg, params, prec, mesh))
  flat = params_lib.flatten(params)
  kernels = [p for p in flat if p[-1] == "kernel" and variants.is_frozen(p, prec)]
  # Writable copies of the frozen integers and scales, overwritten one solved kernel (or layer slice) at a time.
  qvalues = {p: np.array(_frozen_leaf(frozen, p).qvalue) for p in kernels}
  scales = {p: np.array(_frozen_leaf(frozen, p).scale[0]) for p in kernels}
  solved = set()
  for layer, hs in hessians:
    for path, h in hs.items():
      if path not in qvalues:
        continue                                 # e.g. the head of a variant that leaves it float
      at = () if layer is None else (layer,)
      w = np.asarray(flat[path][at], np.float32)
      q, s = quantize_kernel(w, h, prec, scales[path].dtype, damp)
      qvalues[path][at] = q.reshape(qvalues[path][at].shape)
      scales[path][at] = s.reshape(scales[path][at].shape)
      solved.add((path, layer))
  for path in kernels:
    want = [None] if path[0] != LAYERS else range(cfg.num_layers)
    gap = next((i for i in want if (path, i) not in solved), -1)
    if gap != -1:
      where = "" if gap is None else f" (layer {gap})"
      raise UserError(f"gptq: no calibration Hessian for {'/'.join(path)}{where}")
    qt = _frozen_leaf(frozen, path)
    frozen = _replace(frozen, path[:-1], qt.replace(qvalue=qvalues[path], scale=[scales[path]]))
  return frozen


def _replace(tree: dict, path: Path, leaf) -> dict:
  if not path:
    return {**tree, "AqtDotGeneral_0": {**tree["AqtDotGeneral_0"], "qrhs": {**tree["AqtDotGeneral_0"]["qrhs"],
                                                                             "frozen": leaf}}}
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], leaf)}


def make_variant(cfg: ModelConfig, params: dict, prec: Precision,
                 hessians: Iterable[tuple[Optional[int], dict[Path, np.ndarray]]], damp: float = 0.01,
                 mesh=None) -> variants.Variant:
  """A serving variant like mpr.models.variants.make_variant's (split over `mesh` if given), its
  projections quantized by GPTQ."""
  return variants.make_variant(cfg, params, prec, frozen=freeze(cfg, params, prec, hessians, damp, mesh), mesh=mesh)
