"""Router latency per call against the cost of a low-precision agent step (target: under 1%).

  python benchmarks/router_latency.py [--dims 256,2048,4096] [--batches 1,8] [--calls 300]
                                      [--step-ms 15.0] [--out benchmarks/results/router_latency_cpu.json]

Times `mpr.router.routes.router_p_high` — what the agent calls once per routing decision batch: the
history windows built on the host, the jitted 2-layer encoder, p(high) back on the host — for the
dmr_tiny router (width 64) and the paper configs' (width 128), at step-embedding widths D of the tiny
policy (256) and of the Qwen3 / Llama models (2048 for 1.7B, 4096 for 8B), with histories of
`max_len` steps. Medians over `--calls` calls after a warm-up. One call routes a whole batch, so an
episode's step pays ms/batch; `--step-ms` is the low tier's model ms per step it is compared with
(give the batch-1 median of benchmarks/agent_step.py on the same machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


from mpr import io
from mpr.router.model import init_params, router_config
from mpr.router.routes import router_p_high


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--dims", default="256,2048,4096")
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--calls", type=int, default=300)
  ap.add_argument("--step-ms", type=float, default=15.0)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  print("| router width | D | batch | history | ms/call (median) | ms per episode | % of a low-tier step |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for width, mlp in ((64, 128), (128, 256)):
    cfg = router_config(width=width, heads=4, mlp_dim=mlp, max_len=32)
    for d in map(int, args.dims.split(",")):
      params = init_params(cfg, d, 0)
      for b in map(int, args.batches.split(",")):
        zs = [rng.normal(size=(40, d)).astype(np.float32) for _ in range(b)]   # longer than max_len
        for _ in range(5):
          router_p_high(params, cfg, zs)
        times = []
        for _ in range(args.calls):
          t0 = time.perf_counter()
          router_p_high(params, cfg, zs)
          times.append(1e3 * (time.perf_counter() - t0))
        ms = statistics.median(times)
        # One call routes the whole batch: each episode's step pays ms / b.
        rows.append({"width": width, "embed_dim": d, "batch": b, "history": cfg.max_len, "ms_median": ms,
                     "share_of_step": ms / b / args.step_ms})
        print(f"| {width} | {d} | {b} | {cfg.max_len} | {ms:.3f} | {ms / b:.3f} | {100 * ms / b / args.step_ms:.2f}% |")
  if args.out:
    io.atomic_write_json(args.out, {"args": vars(args), "results": rows})


if __name__ == "__main__":
  main()
