"""Stage `router_sl`: KL-ST, the router trained on KL-threshold labels of the collected steps.

Reads the `collect` stage's step tables (this workdir's, or `router_sl.data`), labels each step
y_t = 1[d_t ≥ τ] with τ from the train table (a value or a quantile), trains the router with
class-weighted cross-entropy, validates on the validation split's steps (AUROC / average precision
against the labels) with early stopping, and saves the best router with the tiers it serves. One
router per seed of `router_sl.seeds`: the first (the reference) in `router/`, the others in
`seed_<s>/router/`. Resumes from its per-epoch checkpoints.
"""
from __future__ import annotations

import os

import numpy as np

from mpr import io
from mpr.router import data, sl
from mpr.stages import collect
from mpr.stages.common import check_seeds, router_dir

CONFIG_KEYS = ("seed", "tiers", "collect", "router", "router_sl")
READS = ("collect",)                # when router_sl.data is ''


def tables(config, sdir: str) -> tuple[data.StepTable, data.StepTable]:
  src = config.router_sl.data or os.path.join(os.path.dirname(sdir), "collect")
  return tuple(data.load(collect.table_path(src, split)) for split in (config.collect.split, config.collect.val_split))


def router_meta(config) -> dict:
  return {"high": config.tiers.high, "low": config.tiers.low, "embed": config.tiers.low,
          "direction": config.collect.direction}


def run(config, sdir: str) -> dict:
  sc = config.router_sl
  seeds = check_seeds(sc.seeds, "router_sl.seeds")
  train_table, val_table = tables(config, sdir)
  results = []
  for seed in seeds:
    workdir = os.path.dirname(router_dir(sdir, seed, seeds))
    _, r = sl.train(config.router, sl.sl_config(**{k: v for k, v in sc.to_dict().items() if k != "data"}),
                    train_table, val_table, workdir, meta=router_meta(config), seed=seed)
    results.append(r)
  lines = ["| seed | τ | positive rate train / val | best epoch | val AUROC | val AP | val acc |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['seed']} | {r['tau']:.4g} | {100 * r['pos_rate_train']:.1f}% / {100 * r['pos_rate_val']:.1f}% | "
            f"{r['best_epoch']} | {r['val_auroc']:.3f} | {r['val_ap']:.3f} | {100 * r['val_accuracy']:.1f}% |"
            for r in results]
  if len(results) > 1:
    auroc, ap = (np.array([r[k] for r in results]) for k in ("val_auroc", "val_ap"))
    lines.append(f"| mean ± sd | | | | {auroc.mean():.3f} ± {auroc.std(ddof=1):.3f} | "
                 f"{ap.mean():.3f} ± {ap.std(ddof=1):.3f} | |")
  text = "### router_sl (KL-ST)\n\n" + "\n".join(lines) + "\n"
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return {**results[0], "seeds": results}
