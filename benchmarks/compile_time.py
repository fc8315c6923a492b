"""Compile time of a paper-size decoder's forward on this machine, from abstract shapes (no weights).

  python benchmarks/compile_time.py --model qwen3-8b --tiers bf16,int4 --out benchmarks/results/compile_qwen3_8b_scan.json

For each tier: the seconds to lower and to compile the served forward (the agent's decode step,
1 token per row, and a prefill chunk) with jax.jit(...).lower(ShapeDtypeStructs).compile(), so the
numbers measure the compiler alone. The decoder scans its layers (one Block compiled and looped);
benchmarks/results/compile_qwen3_8b_unrolled.json holds the same measurement of the earlier unrolled
decoder (one Block per layer), for comparison.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from mpr.models.decoder import init_cache
from mpr.models.memory import model_config
from mpr.models.quant import precision
from mpr.models.variants import Variant, abstract_variables


def compile_seconds(cfg, tier: str, rows: int, chunk: int, context: int) -> dict:
  prec = precision(tier)
  variant = Variant.serve(cfg, prec, abstract_variables(cfg, prec))
  fwd = jax.jit(lambda variables, t, n, c: variant.model.apply(variant.full_variables(variables), t, n, c),
                donate_argnums=(3,))
  s = jax.ShapeDtypeStruct
  cache = jax.eval_shape(lambda: init_cache(cfg, rows, context, prec.jnp_dtype))
  t0 = time.perf_counter()
  lowered = fwd.lower(variant.variables, s((rows, chunk), jnp.int32), s((rows,), jnp.int32), cache)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {"lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2)}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="qwen3-8b")
  ap.add_argument("--tiers", default="bf16,int4")
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--chunk", type=int, default=256, help="prefill tokens per row")
  ap.add_argument("--context", type=int, default=2048)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  cfg = model_config(args.model)
  rows = []
  for tier in args.tiers.split(","):
    for kind, chunk in (("decode", 1), ("prefill", args.chunk)):
      r = {"tier": tier, "call": kind, **compile_seconds(cfg, tier, args.rows, chunk, args.context)}
      print(r, flush=True)
      rows.append(r)
  result = {"model": args.model, "layers": cfg.num_layers, "layout": "scan", "backend": jax.default_backend(),
            "rows": args.rows, "chunk": args.chunk, "context": args.context, "results": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
