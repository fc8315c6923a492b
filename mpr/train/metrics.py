"""Training metrics to TensorBoard (tensorboardX), a JSONL file and the log, all at once.

  with MetricWriter(logdir) as w:
    w.scalars(step, {"train/loss": 1.2})

The JSONL copy (`metrics.jsonl`) is what tests and reports read; TensorBoard is for people. On a
multi-host run only host 0 writes files (every host computes the same values); all hosts log.
"""
from __future__ import annotations

import logging
import math
import os

from mpr import hosts, io
from mpr.errors import UserError


class MetricWriter:
  def __init__(self, logdir: str):
    self._tb = self._log = None
    if hosts.is_primary():
      from tensorboardX import SummaryWriter   # imported here: only training needs it
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir)
      self._log = io.JsonlLog(os.path.join(logdir, "metrics.jsonl"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    values = {k: float(v) for k, v in values.items()}
    # A NaN loss means the parameters are already NaN: stop rather than train and save them.
    bad = [k for k, v in values.items() if "loss" in k and not math.isfinite(v)]
    if bad:
      raise UserError(f"{bad[0]} is {values[bad[0]]} at step {step}: training diverged")
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)
      self._tb.flush()
      self._log.append({"step": int(step), **values})
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._log.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
