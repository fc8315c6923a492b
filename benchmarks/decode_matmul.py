"""Decode-shape projections on an accelerator: bf16, int4 through XLA (AQT's serving dot), and int4
through the fused Pallas kernel (mpr.models.kernels), against the weight-bandwidth roofline.

  python benchmarks/decode_matmul.py --out benchmarks/results/decode_matmul_h200.json --bandwidth 4800
  python benchmarks/decode_matmul.py --smoke        # tiny shapes, Pallas in interpret mode (any machine)

Shapes: one Qwen3-8B decoder layer's projections (q, k, v, o, gate, up, down), timed one by one and
summed as a layer; batch (decode rows) 1–64. Each time is the median of --reps jitted calls after a
warm-up. The roofline is the weights' bytes over --bandwidth (GB/s of HBM): at decode batch sizes a
projection cannot be faster than reading its weights once. The target (issue 17 §5): int4 at least
2.5× bf16 at batch ≤ 16.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mpr.models import kernels
from mpr.models.layers import Linear
from mpr.models.quant import Quant, leaf_bits, precision

QWEN3_8B = {"q": (4096, 4096), "k": (4096, 1024), "v": (4096, 1024), "o": (4096, 4096),
            "gate": (4096, 12288), "up": (4096, 12288), "down": (12288, 4096)}
SMOKE = {"q": (128, 128), "down": (256, 128)}


def _median_seconds(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _projection(k: int, n: int, prec, key):
  """(bf16 kernel, AQT frozen tree, packed kernel) of one random projection."""
  w = jax.random.normal(key, (k, n), jnp.float32) / np.sqrt(k)
  convert = Linear(n, Quant(prec, "convert"), prec.jnp_dtype)
  x = jnp.zeros((1, k), prec.jnp_dtype)
  _, state = convert.apply({"params": {"proj": {"kernel": w}}}, x, mutable=["aqt"])
  frozen = state["aqt"]
  qt = frozen["proj"]["AqtDotGeneral_0"]["qrhs"]["frozen"]
  return w.astype(jnp.bfloat16), frozen, kernels.pack(qt.qvalue, qt.scale[0], prec.weight_bits)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--precision", default="int4-g128", help="the low tier (weight-only)")
  ap.add_argument("--batches", default="1,4,16,64")
  ap.add_argument("--bandwidth", type=float, default=4800.0, help="HBM GB/s (H200 4800, H100 SXM 3350)")
  ap.add_argument("--reps", type=int, default=50)
  ap.add_argument("--smoke", action="store_true", help="tiny shapes, Pallas in interpret mode")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  prec = precision(args.precision)
  shapes = SMOKE if args.smoke else QWEN3_8B
  if args.smoke:
    prec = precision("int4-g64" if prec.group_size else "int4")
  serve = {name: Linear(n, Quant(prec, "serve"), prec.jnp_dtype) for name, (_, n) in shapes.items()}
  made = {name: _projection(k, n, prec, jax.random.key(i)) for i, (name, (k, n)) in enumerate(shapes.items())}

  bf16 = jax.jit(lambda x, w: x @ w)
  xla = {name: jax.jit(lambda x, f, m=serve[name], k=k, n=n: m.apply(
      {"params": {"proj": {"kernel": jnp.zeros((k, n), prec.jnp_dtype)}}, "aqt": f}, x))
      for name, (k, n) in shapes.items()}
  fused = lambda x, w: kernels.matmul(x, w, interpret=args.smoke)

  rows = []
  for b in (int(v) for v in args.batches.split(",")):
    t = {"bf16": 0.0, "xla": 0.0, "pallas": 0.0}
    bytes_bf16 = bytes_low = 0
    for name, (k, n) in shapes.items():
      w16, frozen, packed = made[name]
      x = jax.random.normal(jax.random.key(b), (b, k), jnp.float32).astype(jnp.bfloat16)
      t["bf16"] += _median_seconds(bf16, x, w16, reps=args.reps)
      t["xla"] += _median_seconds(xla[name], x, frozen, reps=args.reps)
      t["pallas"] += _median_seconds(fused, x, packed, reps=args.reps)
      bytes_bf16 += w16.size * 2
      bytes_low += (leaf_bits(packed.values) + leaf_bits(packed.scale)) // 8
    roof = {"bf16": bytes_bf16 / (args.bandwidth * 1e9), "low": bytes_low / (args.bandwidth * 1e9)}
    rows.append({"batch": b, "us": {k: v * 1e6 for k, v in t.items()},
                 "roofline_us": {k: v * 1e6 for k, v in roof.items()},
                 "speedup_vs_bf16": {"xla": t["bf16"] / t["xla"], "pallas": t["bf16"] / t["pallas"]}})
    print(f"batch {b:>3}: bf16 {t['bf16'] * 1e6:8.1f} us  xla {prec.name} {t['xla'] * 1e6:8.1f} us "
          f"({t['bf16'] / t['xla']:.2f}×)  pallas {t['pallas'] * 1e6:8.1f} us ({t['bf16'] / t['pallas']:.2f}×)  "
          f"roofline bf16 {roof['bf16'] * 1e6:.1f} / low {roof['low'] * 1e6:.1f} us", flush=True)
  result = {"device": str(jax.devices()[0].device_kind), "precision": prec.name, "shapes": shapes,
            "bandwidth_gbs": args.bandwidth, "reps": args.reps, "smoke": args.smoke, "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
