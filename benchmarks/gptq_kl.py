"""GPTQ against rounding to nearest: KL(p_f32 ‖ p_variant) of a model's low-bit tiers on held-out agent contexts.

  python benchmarks/gptq_kl.py --tier smollm2 --bits 4,3 --out benchmarks/results/gptq_smollm2.json

Calibration: the exploring expert's episodes on `--calib-games` train games, rendered as the agent
reads them (`--format`, `--budget`), concatenated and cut into `--segments` sequences of `--seq-len`
tokens; every projection's Hessian comes from the float model on them (mpr.models.gptq). Held out: the
same on `--eval-games` valid_train games (a game gives several contexts of up to `--budget` tokens, and on
CPU each costs every tier a forward pass: keep it small there); the KL and the argmax agreement are taken at the action
tokens (mpr.eval.fidelity), against the f32 model. Per bit width: absmax and `mse` rounding (AQT's
CONVERT), and GPTQ with absmax and with `mse` scales.
"""
from __future__ import annotations

import argparse
import json
import time

from mpr import compile_cache
from mpr.agent import demos, models, prompt
from mpr.envs.games import find_games, select_games
from mpr.envs.pool import LocalPool
from mpr.envs.rollout import expert_policy, rollout
from mpr.eval import fidelity
from mpr.models import gptq
from mpr.models.quant import precision
from mpr.models.variants import make_variant


def _examples(split: str, num: int, tok, fmt, budget: int) -> list[demos.Example]:
  games = [(g, 0) for g in select_games(find_games(split, num_generated=num), num)]   # generated: only `num`
  with LocalPool(1, expert="exploring") as pool:
    episodes = rollout(pool, games, expert_policy, progress=f"expert on {split}")
  return demos.examples(episodes, tok, fmt, budget, reserve=32)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tier", default="smollm2")
  ap.add_argument("--path", default="")
  ap.add_argument("--format", default="chat-smollm2")
  ap.add_argument("--budget", type=int, default=1024)
  ap.add_argument("--bits", default="4,3")
  ap.add_argument("--calib-games", type=int, default=48)
  ap.add_argument("--eval-games", type=int, default=8)
  ap.add_argument("--segments", type=int, default=32)
  ap.add_argument("--seq-len", type=int, default=512)
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  compile_cache.enable()
  t0 = time.time()
  policy = models.load(models.model_config(tier=args.tier, path=args.path))
  fmt = prompt.make(args.format)
  calib = _examples("train", args.calib_games, policy.tok, fmt, args.budget)
  held = _examples("valid_train", args.eval_games, policy.tok, fmt, args.budget)
  segments = gptq.segments([x.tokens for x in calib], args.segments, args.seq_len)
  n = len(segments)
  hs = list(gptq.hessians(policy.cfg, policy.params, segments))   # 135M: every layer's Hessians fit at once
  t_calib = time.time() - t0
  print(f"calibration: {n} x {args.seq_len} tokens from {len(calib)} contexts, {t_calib:.0f} s", flush=True)
  ref = make_variant(policy.cfg, policy.params, precision("f32"))
  tiers, made = {}, {}
  for bits in args.bits.split(","):
    for calib_name in ("", "-mse"):
      prec = precision(f"int{bits}{calib_name}")
      for name, make in ((prec.name, lambda: make_variant(policy.cfg, policy.params, prec)),
                         (f"{prec.name} + GPTQ", lambda: gptq.make_variant(policy.cfg, policy.params, prec, hs))):
        t1 = time.time()
        tiers[name] = make()
        made[name] = time.time() - t1
      print(f"{prec.name}: rounded in {made[prec.name]:.0f} s, GPTQ in {made[prec.name + ' + GPTQ']:.0f} s", flush=True)
  # One pass over the held-out contexts: the f32 reference's logits are computed once for every tier.
  rows = [{"variant": name, "bits": tiers[name].prec.weight_bits, "kl": fid["kl"],
           "argmax_agreement": fid["argmax_agreement"], "tokens": fid["tokens"], "quantize_s": made[name]}
          for name, fid in fidelity.token_fidelity(ref, tiers, held).items()]
  result = {"tier": args.tier, "format": args.format, "calibration": {"train games": args.calib_games,
            "sequences": n, "seq_len": args.seq_len, "examples": len(calib), "seconds": t_calib},
            "held_out": {"valid_train games": args.eval_games, "examples": len(held)}, "rows": rows,
            "seconds": time.time() - t0}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print("| variant | KL(p_f32 ‖ p) per action token | argmax agreement |\n|---|---:|---:|")
  for r in rows:
    print(f"| {r['variant']} | {r['kl']:.3g} | {100 * r['argmax_agreement']:.1f}% |")


if __name__ == "__main__":
  main()
