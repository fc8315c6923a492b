"""How well each router input set predicts the KL-ST labels: validation AUROC / AP, beside single signals.

  python benchmarks/router_inputs.py --collect WORKDIR/collect --out results/router_inputs_tiny [--seeds 0,1,2]

Reads a `collect` stage's train and validation step tables, labels steps d_t ≥ τ (τ: the train quantile
of dmr_tiny's router_sl config), and for each input set (mpr.router.features) trains the KL-ST router of
dmr_tiny's config once per seed and scores it on the validation steps. Single signals are scored
directly, with no training: the low tier's entropy and margin at the step (the heuristics' signals), the
same at the previous step, and the step index. Writes results.json and table.md under --out; the
routers' folders stay under --out/routers/.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

from mpr import io, provenance
from mpr.router import data, features, labels, sl

INPUT_SETS = (("z",), ("z", "entropy", "margin"), ("z", "prev_entropy", "prev_margin", "step"),
              ("z", "entropy", "margin", "prev_entropy", "prev_margin", "step"), ("entropy", "margin", "step"))
SIGNALS = {"entropy": ("entropy", 1), "margin (lower → high)": ("margin", -1),
           "previous entropy": ("prev_entropy", 1), "previous margin (lower → high)": ("prev_margin", -1),
           "step index": ("step", 1)}


def _dmr_tiny():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments/configs/dmr_tiny.py")
  spec = importlib.util.spec_from_file_location("dmr_tiny", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--collect", required=True, help="a collect stage folder (steps_<split>.npz)")
  ap.add_argument("--out", required=True)
  ap.add_argument("--seeds", default="0,1,2")
  args = ap.parse_args()
  c = _dmr_tiny()
  train, val = (data.load(os.path.join(args.collect, f"steps_{s}.npz")) for s in (c.collect.split, c.collect.val_split))
  seeds = [int(s) for s in args.seeds.split(",")]
  tau = labels.threshold(train.d, quantile=c.router_sl.quantile)
  known = np.isfinite(val.d)
  y = labels.labels(val.d[known], tau)
  rows = []
  for name, (signal, sign) in SIGNALS.items():
    score = sign * features.featurize((signal,), val).z[known, 0]
    rows.append({"inputs": name, "trained": False, "auroc": [labels.auroc(score, y)],
                 "ap": [labels.average_precision(score, y)]})
  for inputs in INPUT_SETS:
    row = {"inputs": "+".join(inputs), "trained": True, "auroc": [], "ap": []}
    for seed in seeds:
      cfg = c.router.copy_and_resolve_references()
      cfg.inputs = inputs
      sc = {k: v for k, v in c.router_sl.to_dict().items() if k != "data"}
      _, r = sl.train(cfg, sl.sl_config(**sc), train, val,
                      os.path.join(args.out, "routers", f"{row['inputs']}_seed{seed}"), seed=seed)
      row["auroc"].append(r["val_auroc"])
      row["ap"].append(r["val_ap"])
    rows.append(row)
  lines = [f"Validation steps: {int(known.sum())} ({c.collect.val_split}), positive rate {100 * y.mean():.1f}% at "
           f"τ = {tau:.4g} (train quantile {c.router_sl.quantile}); train steps {train.num_steps}. Trained rows: "
           f"KL-ST routers, mean ± std over seeds {seeds}.", "",
           "| inputs | trained | AUROC | AP |", "|---|---|---:|---:|"]
  for r in rows:
    fmt = lambda v: f"{np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else "")
    lines.append(f"| {r['inputs']} | {'router' if r['trained'] else 'signal alone'} | {fmt(r['auroc'])} | {fmt(r['ap'])} |")
  table = "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(args.out, "table.md"), table)
  io.atomic_write_json(os.path.join(args.out, "results.json"),
                       {"collect": os.path.abspath(args.collect), "tau": tau, "seeds": seeds, "rows": rows,
                        "val_steps": int(known.sum()), "positive_rate": float(y.mean()),
                        "provenance": provenance.snapshot()})
  print(table)


if __name__ == "__main__":
  main()
