"""The one training skeleton behind behaviour cloning, KL-ST and GRPO.

A run is `rounds` rounds (BC and KL-ST: epochs; GRPO: iterations). A round feeds the batches of its
batch iterator through one jitted step, then ends (validation, early stopping, the round's summary):

  state, info = loop.train(workdir, state, rounds, batches, step, end_round, label="router")

  batches(r, state)      -> the round's batches, a pure function of r and the state the round starts from
                            (so a restart can skip the ones it already took). With ckpt_every > 0 a
                            restart inside a round passes the state it restored, so there batches
                            must not read the state (BC and KL-ST do not; GRPO, which does, checkpoints
                            only at the end of its rounds)
  step(state, batch, i)  -> (state, metrics)            i: the global step index (e.g. for dropout keys)
  end_round(r, state, step_metrics) -> (state, metrics, stop)     metrics are logged; stop ends the run

What the skeleton owns:
- Resume: orbax checkpoints of {state, round, taken, step, stopped} in workdir/ckpt, every `ckpt_every`
  steps inside a round (0 = never) and at every round's end. A restart restores the latest, skips the
  batches of the round already taken and ends with the state an uninterrupted run ends with; a run that
  stopped early stays stopped.
- Metrics: the step metrics every `log_every` steps (0 = never) and the round's at its end, to
  TensorBoard and metrics.jsonl (MetricWriter), at the global step (or at the round, x="round").
- A NaN guard: a non-finite loss stops the run with one line (UserError) before it is checkpointed.
- Several hosts: every host runs the same steps; what is checkpointed and carried on is host 0's copy.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterable, Optional

import numpy as np
from tqdm import tqdm

from mpr.errors import UserError
from mpr.train import checkpoints
from mpr.train.metrics import MetricWriter

Batches = Callable[[int, Any], Iterable[Any]]
Step = Callable[[Any, Any, int], tuple[Any, dict]]
EndRound = Callable[[int, Any, list[dict]], tuple[Any, dict, bool]]


def _finite_losses(metrics: dict, where: str) -> None:
  bad = [k for k, v in metrics.items() if "loss" in k and not math.isfinite(float(v))]
  if bad:
    raise UserError(f"{bad[0]} is {float(metrics[bad[0]])} at {where}: training diverged")


def train(workdir: str, state: Any, rounds: int, batches: Batches, step: Step, end_round: EndRound, *,
          label: str, total_steps: Optional[int] = None, ckpt_every: int = 0, log_every: int = 0,
          x: str = "step") -> tuple[Any, dict]:
  """Runs rounds [done, rounds) from the latest checkpoint in workdir. → (state, info): info holds
  `rounds` (finished), `steps` (taken in all) and `stopped` (end_round asked to stop)."""
  if x not in ("step", "round"):
    raise UserError(f"loop.train: x must be 'step' or 'round', got {x!r}")
  run = {"state": state, "round": np.zeros((), np.int64), "taken": np.zeros((), np.int64),
         "step": np.zeros((), np.int64), "stopped": np.zeros((), np.int8)}
  # Checkpoint keys are step + round: strictly increasing whether a save ends a round or falls inside one.
  mgr, latest, run = checkpoints.restore_latest(os.path.join(workdir, "ckpt"), run)
  state, r, taken, gstep, stopped = (run["state"], int(run["round"]), int(run["taken"]), int(run["step"]),
                                     bool(run["stopped"]))
  if latest:
    logging.info("%s: resumed at round %d of %d (%d steps taken)", label, r + 1 if taken else r, rounds, gstep)

  def save() -> tuple[Any, bool]:
    saved = checkpoints.save(mgr, gstep + r, {"state": state, "round": np.asarray(r, np.int64),
                                              "taken": np.asarray(taken, np.int64), "step": np.asarray(gstep, np.int64),
                                              "stopped": np.asarray(stopped, np.int8)})
    return saved["state"], bool(saved["stopped"])     # host 0's: every host goes on (or stops) alike

  bar = tqdm(total=total_steps or rounds, initial=gstep if total_steps else r, desc=label,
             unit="step" if total_steps else "round", dynamic_ncols=True)
  try:
    with MetricWriter(os.path.join(workdir, "tb")) as writer:
      while r < rounds and not stopped:
        metrics, pending = [], False
        for i, batch in enumerate(batches(r, state)):
          if i < taken:                     # taken before the restart
            continue
          if pending:                       # a mid-round checkpoint, once another batch follows
            _finite_losses(metrics[-1], f"step {gstep}")
            (state, _), pending = save(), False
          state, m = step(state, batch, gstep)
          metrics.append(m)
          taken, gstep = taken + 1, gstep + 1
          if total_steps:
            bar.update(1)
          if log_every and gstep % log_every == 0:
            writer.scalars(gstep, {f"train/{k}": v for k, v in m.items()} | {"train/round": r})
          pending = bool(ckpt_every) and gstep % ckpt_every == 0
        metrics = [{k: float(v) for k, v in m.items()} for m in metrics]
        for m in metrics[-1:]:
          _finite_losses(m, f"step {gstep}")
        state, summary, stop = end_round(r, state, metrics)
        writer.scalars(r + 1 if x == "round" else gstep, summary)
        bar.set_postfix_str(", ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in list(summary.items())[:3]),
                            refresh=False)
        r, taken, stopped = r + 1, 0, bool(stop)
        if not total_steps:
          bar.update(1)
        state, stopped = save()
  finally:   # an interrupted run still completes the checkpoint it was writing
    bar.close()
    mgr.wait_until_finished()
    mgr.close()
  return state, {"rounds": r, "steps": gstep, "stopped": stopped}
