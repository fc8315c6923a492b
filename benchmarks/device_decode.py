"""Decode-step latency per precision for Qwen3-8B shapes on an accelerator, beside its roofline.

  python benchmarks/device_decode.py [--model qwen3-8b] [--variants bf16 int8 int4 int4-pallas] [--batches 1 8]
         [--bandwidth-gbs 4800] [--out device_decode.json]

Random weights (made on the device, so the host never holds 32 GB of floats). For each variant and
batch: median decode-step ms on a 1024-token cache, the weight bytes it streams per step, and the
roofline = weight bytes / HBM bandwidth (decode at small batch is bound by reading the weights
once per step). `--model tiny` runs the same code on the CPU as a smoke test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp


from mpr.models import config as config_lib
from mpr.models import params as params_lib
from mpr.models.quant import precision
from mpr.models.variants import make_variant


def device_params(cfg, seed=0):
  shapes = params_lib.expected_shapes(cfg)
  keys = iter(jax.random.split(jax.random.key(seed), len(shapes)))
  flat = {p: (jnp.ones(s, jnp.float32) if p[-1] == "scale" else 0.02 * jax.random.normal(next(keys), s))
          for p, s in shapes.items()}
  return params_lib.unflatten(flat)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="qwen3-8b", choices=["qwen3-8b", "qwen3-4b", "qwen3-1.7b", "tiny"])
  p.add_argument("--variants", nargs="+", default=["bf16", "int8", "int4", "int4-pallas"])
  p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
  p.add_argument("--cache-len", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="HBM bandwidth (H200: 4800)")
  p.add_argument("--out", default="")
  a = p.parse_args()
  cfg = config_lib.tiny() if a.model == "tiny" else config_lib.qwen3(a.model.split("-")[1], max_seq_len=a.cache_len)
  print(f"{a.model}: {cfg.num_params / 1e6:.1f} M params on {jax.devices()[0].device_kind}, jax {jax.__version__}")
  params = device_params(cfg)
  rows = []
  for name in a.variants:
    v = make_variant(cfg, params, precision(name))
    fwd = jax.jit(lambda variables, t, n, c, v=v: v.model.apply(v.full_variables(variables), t, n, c)[0])
    for b in a.batches:
      cache = v.init_cache(b, a.cache_len)
      cache = {**cache, "lengths": jnp.full((b,), a.cache_len // 2, jnp.int32)}
      tok, n = jnp.ones((b, 1), jnp.int32), jnp.ones((b,), jnp.int32)
      jax.block_until_ready(fwd(v.variables, tok, n, cache))
      times = []
      for _ in range(a.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(v.variables, tok, n, cache))
        times.append(time.perf_counter() - t0)
      ms = 1e3 * statistics.median(times)
      roof = 1e3 * v.weight_bytes / (a.bandwidth_gbs * 1e9)
      rows.append({"model": a.model, "variant": name, "batch": b, "decode_ms": ms,
                   "weight_gb": v.weight_bytes / 1e9, "roofline_ms": roof})
      print(f"{name:5s} b={b:2d}: {ms:8.2f} ms/step  weights {v.weight_bytes / 1e9:6.2f} GB  "
            f"roofline {roof:6.2f} ms  ({roof / ms:.0%} of roofline)", flush=True)
    del v
  if a.out:
    with open(a.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
