"""A fused weight-only int8 / int4 matmul for decode shapes (Pallas).

  w = pack(qvalue, scale, bits=4)                   # once per kernel, from AQT's frozen values and scales
  y = matmul(x, w)                                   # x [M, K] (M = decode batch, 1–64) → [M, N]

Why: with XLA's default lowering, a weight-only low-bit dot first materialises the dequantized
weights (or converts them in a separate pass), so at decode shapes, where the weights' bytes are the
whole cost, int4 is no faster than bf16 (gpu-quant-probe: 0.61–1.18× on an H200). Here the integers
are read once, unpacked and scaled inside the kernel, next to the multiply.

Serving: a precision with the `pallas` option (e.g. int4-g128-pallas) packs its frozen tree once
(pack_tree) and its projections call `matmul` (layers.Linear); on CPU the kernel runs interpreted.

Layout. int8: [K, N] int8. int4 (and int3, whose values fit): [K/2, N] uint8, two values per byte,
the low nibble from row r and the high nibble from row r + K/2 of the [K, N] integers. The two halves
of a byte then meet two contiguous halves of x's columns: no interleaving inside the kernel. Scales:
[G, N] f32, one row per group of K/G inputs (G = 1: per channel), as AQT's frozen scales.

On a mesh (sharded): a projection whose outputs are split (q, k, v, gate, up, an untied LM head) runs
the kernel on each device's columns as they are. One whose inputs are split (o, down: Megatron's row-parallel layers)
is packed in `shards` blocks of K/shards rows, each laid out as above, so that splitting the packed
rows evenly gives every device the packing of its own inputs; the devices' partial products are then
summed (one all-reduce, as XLA's dot would need).

The kernel: a grid over (M / block_m, N / block_n); each program loops over K in blocks of block_k
rows (within one scale group), accumulating in f32, and scales per group before adding. The same
code runs in interpret mode on CPU (the suite checks it against AQT's serving path) and lowers for
GPUs and TPUs (benchmarks/decode_matmul.py measures it there against bf16, XLA and the roofline).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mpr.errors import UserError
from mpr.models.params import LAYERS
from mpr.models.sharding import ROW


@dataclasses.dataclass(frozen=True)
class Packed:
  """A kernel's weights as `matmul` reads them."""
  values: jax.Array     # int8 [K, N], or uint8 [K/2, N] for 4 bits and fewer
  scale: jax.Array      # f32 [G, N]
  bits: int
  shards: int = 1       # blocks of K/shards inputs, each packed on its own (a row-parallel layer's devices)

  @property
  def k(self) -> int:
    """The contracted size K (of one layer's weights, not of a stacked [layers, ...] tree's)."""
    return self.values.shape[0] * (2 if self.bits <= 4 else 1)

  @property
  def group(self) -> int:
    return self.k // self.scale.shape[0]

  def local(self) -> "Packed":
    """One device's block, as a sharded caller sees it: a packing of its own inputs."""
    return dataclasses.replace(self, shards=1)


jax.tree_util.register_dataclass(Packed, data_fields=["values", "scale"], meta_fields=["bits", "shards"])


def pack(qvalue, scale, bits: int, shards: int = 1, out_shards: int = 1) -> Packed:
  """AQT frozen values ([K, N] per channel, [G, K/G, N] grouped; at most 4 bits: in [-8, 7], as AQT's
  grid makes them) and scales ([1, N] / [G, 1, N]), packed in `shards` blocks of K/shards inputs.
  `out_shards`: the devices its N outputs are split over (when they divide), checked to tile too.
  Traceable: jax.eval_shape gives the layout."""
  q = jnp.asarray(qvalue).astype(jnp.int8)
  if q.ndim == 3:
    q = q.reshape(-1, q.shape[-1])
  k, n = q.shape
  s = jnp.asarray(scale, jnp.float32).reshape(-1, n)
  if k % s.shape[0]:
    raise UserError(f"kernels.pack: {s.shape[0]} scale groups do not tile K={k}")
  if bits <= 4 and k % 2:
    raise UserError(f"kernels.pack: {bits}-bit values pack in pairs of rows, K={k} is odd")
  per = 2 * shards if bits <= 4 else shards
  if k % per:
    raise UserError(f"kernels.pack: K={k} does not split into {shards} input blocks"
                    + (f" of whole pairs of rows (a multiple of {per})" if bits <= 4 else ""))
  if shards > 1 and s.shape[0] > 1 and s.shape[0] % shards:
    raise UserError(f"kernels.pack: {s.shape[0]} scale groups do not split over {shards} input blocks")
  local = k // shards
  _block_k(local // 2 if bits <= 4 else local, k // s.shape[0], local // 2 if bits <= 4 else 0)   # matmul can tile it
  _block_n(n // out_shards if n % out_shards == 0 and n >= out_shards else n)
  if bits > 4:
    return Packed(q, s, bits, shards)
  blocks = q.reshape(shards, local, n)
  half = local // 2
  lo, hi = blocks[:, :half].astype(jnp.uint8) & 0xF, blocks[:, half:].astype(jnp.uint8) & 0xF
  return Packed((lo | (hi << 4)).reshape(k // 2, n), s, bits, shards)


def pack_tree(frozen: dict, bits: int, model: int = 1, stacked: bool = False, owner: str = "") -> dict:
  """A frozen variables tree with every projection's AQT tree (proj/AqtDotGeneral_0/qrhs/frozen)
  replaced by its packed weights (proj/packed), what a `pallas` kernel precision serves. The
  row-parallel projections (sharding.ROW) are packed in `model` blocks (the mesh's model axis). Under
  "layers" every leaf leads with the layer axis: each layer is packed on its own."""
  if not isinstance(frozen, dict):
    return frozen
  if "AqtDotGeneral_0" in frozen:
    qt = frozen["AqtDotGeneral_0"]["qrhs"]["frozen"]
    row = owner in ROW
    one = functools.partial(pack, bits=bits, shards=model if row else 1, out_shards=1 if row else model)
    try:
      return {"packed": (jax.vmap(one) if stacked else one)(qt.qvalue, qt.scale[0])}
    except UserError as e:
      split = f" (a model axis of {model} splits its {'inputs' if row else 'outputs'})" if model > 1 else ""
      raise UserError(f"{owner}: {e}{split}") from None
  return {k: pack_tree(v, bits, model, stacked or k == LAYERS, k if k != "proj" else owner) for k, v in frozen.items()}


def _signed_nibbles(b):
  """uint8 → (low, high) nibbles as signed ints in [-8, 7]."""
  b = b.astype(jnp.int32)
  lo, hi = b & 0xF, (b >> 4) & 0xF
  return lo - ((lo >> 3) << 4), hi - ((hi >> 3) << 4)


def _kernel(x_ref, w_ref, s_ref, o_ref, *, bits: int, k: int, block_k: int, group: int):
  bm = x_ref.shape[0]
  bn = o_ref.shape[1]
  dtype = x_ref.dtype
  packed = bits <= 4
  rows = k // 2 if packed else k                  # rows of w_ref; a block covers block_k of them

  def body(i, acc):
    start = pl.multiple_of(i * block_k, block_k)     # aligned slices (Mosaic needs to know)
    w = w_ref[pl.ds(start, block_k), :]
    if packed:
      lo, hi = _signed_nibbles(w)
      x_lo = x_ref[:, pl.ds(start, block_k)]
      x_hi = x_ref[:, pl.ds(start + k // 2, block_k)]
      part_lo = jnp.dot(x_lo, lo.astype(dtype), preferred_element_type=jnp.float32)
      part_hi = jnp.dot(x_hi, hi.astype(dtype), preferred_element_type=jnp.float32)
      s_lo = s_ref[pl.ds(start // group, 1), :]
      s_hi = s_ref[pl.ds((start + k // 2) // group, 1), :]
      return acc + part_lo * s_lo + part_hi * s_hi
    part = jnp.dot(x_ref[:, pl.ds(start, block_k)], w.astype(dtype), preferred_element_type=jnp.float32)
    return acc + part * s_ref[pl.ds(start // group, 1), :]

  acc = jax.lax.fori_loop(0, rows // block_k, body, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _block_k(rows: int, group: int, half: int) -> int:
  """The K block: at most 256 rows, inside one scale group, and (packed) not across the halves."""
  for b in (256, 128, 64, 32, 16, 8):
    if rows % b == 0 and group % b == 0 and (half == 0 or half % b == 0):
      return b
  raise UserError(f"kernels: no K block of 8–256 rows tiles {rows} rows in groups of {group}")


def _block_n(n: int, block_n: int = 256) -> int:
  """The N block: all of N up to block_n, else the largest power of two up to block_n that divides it."""
  if n <= block_n:
    return n
  b = block_n
  while b >= 16 and n % b:
    b //= 2
  if b < 16:
    raise UserError(f"kernels: no N block of 16–{block_n} columns tiles {n} columns")
  return b


@functools.partial(jax.jit, static_argnames=("block_m", "block_n", "interpret", "out_dtype"))
def matmul(x: jax.Array, w: Packed, *, block_m: int = 64, block_n: int = 256, interpret: bool = False,
           out_dtype=None) -> jax.Array:
  """x [M, K] @ dequantized w → [M, N] in `out_dtype` (default x's; f32 accumulation). `interpret`
  runs the kernel as JAX ops (CPU)."""
  m, k = x.shape
  if w.shards != 1:
    raise UserError(f"kernels.matmul: weights packed for {w.shards} devices; call it per device on Packed.local()")
  if k != w.k:
    raise UserError(f"kernels.matmul: x has {k} columns, the weights {w.k} rows")
  n = w.values.shape[1]
  bn = _block_n(n, block_n)
  # Decode batches: one block of M rows, a power of two of at least 16 (Triton's smallest dot).
  bm = min(block_m, max(16, 1 << max(0, m - 1).bit_length()))
  mp = -(-m // bm) * bm
  xp = jnp.pad(x, ((0, mp - m), (0, 0))) if mp != m else x
  rows = w.values.shape[0]
  half = k // 2 if w.bits <= 4 else 0
  block_k = _block_k(rows, w.group, half)
  kernel = functools.partial(_kernel, bits=w.bits, k=k, block_k=block_k, group=w.group)
  out = pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((mp, n), out_dtype or x.dtype), grid=(mp // bm, n // bn),
      in_specs=[pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
                pl.BlockSpec((rows, bn), lambda i, j: (0, j)),
                pl.BlockSpec((w.scale.shape[0], bn), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      interpret=interpret)(xp, w.values, w.scale)
  return out[:m]
