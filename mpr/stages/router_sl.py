"""Stage `router_sl`: KL-ST, the router trained on KL-threshold labels of the collected steps.

Reads the `collect` stage's step tables (this workdir's, or `router_sl.data`), labels each step
y_t = 1[d_t ≥ τ] with τ from the train table (a value or a quantile), trains the router with
class-weighted cross-entropy, validates on the validation split's steps (AUROC / average precision
against the labels) with early stopping, and saves the best router to `router/` with the tiers it
serves. Resumes from its per-epoch checkpoints.
"""
from __future__ import annotations

import os

from mpr import io
from mpr.router import data, sl
from mpr.stages import collect

CONFIG_KEYS = ("seed", "tiers", "collect", "router", "router_sl")
READS = ("collect",)                # when router_sl.data is ''


def tables(config, sdir: str) -> tuple[data.StepTable, data.StepTable]:
  src = config.router_sl.data or os.path.join(os.path.dirname(sdir), "collect")
  return tuple(data.load(collect.table_path(src, split)) for split in (config.collect.split, config.collect.val_split))


def router_meta(config) -> dict:
  return {"high": config.tiers.high, "low": config.tiers.low, "embed": config.tiers.low,
          "direction": config.collect.direction}


def run(config, sdir: str) -> dict:
  train_table, val_table = tables(config, sdir)
  sc = config.router_sl
  _, result = sl.train(config.router, sl.sl_config(**{k: v for k, v in sc.to_dict().items() if k != "data"}),
                       train_table, val_table, sdir, meta=router_meta(config))
  text = (f"### router_sl (KL-ST)\n\n| τ | positive rate train / val | best epoch | val AUROC | val AP | val acc |\n"
          f"|---:|---:|---:|---:|---:|---:|\n| {result['tau']:.4g} | {100 * result['pos_rate_train']:.1f}% / "
          f"{100 * result['pos_rate_val']:.1f}% | {result['best_epoch']} | {result['val_auroc']:.3f} | "
          f"{result['val_ap']:.3f} | {100 * result['val_accuracy']:.1f}% |\n")
  io.atomic_write_text(os.path.join(sdir, "summary.md"), text)
  print(text)
  return result
