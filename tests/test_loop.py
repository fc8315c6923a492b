"""The training skeleton (mpr.train.loop) on a small least-squares problem: exact resume inside a round,
early stopping that survives a restart, the NaN guard, and the metric axes."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpr.errors import UserError
from mpr.train import loop

X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)
OPT = optax.adam(0.05)


@jax.jit
def _update(w, opt_state, x, y):
  loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
  updates, opt_state = OPT.update(g, opt_state)
  return optax.apply_updates(w, updates), opt_state, loss


def _batches(r, _):        # a pure function of the round: 4 shuffled batches of 16
  perm = np.random.default_rng([7, r]).permutation(64)
  return [(X[perm[i:i + 16]], Y[perm[i:i + 16]]) for i in range(0, 64, 16)]


def _step(state, batch, _):
  w, opt_state, loss = _update(state["w"], state["opt"], *batch)
  return {"w": w, "opt": opt_state}, {"loss": loss}


def _end(r, state, metrics):
  return state, {"train/loss": float(np.mean([m["loss"] for m in metrics]))}, False


def _init():
  w = jnp.zeros(3)
  return {"w": w, "opt": OPT.init(w)}


def test_resume_inside_a_round_is_exact(tmp_path):
  ref, info = loop.train(str(tmp_path / "ref"), _init(), 3, _batches, _step, _end, label="t", total_steps=12,
                         ckpt_every=2)
  assert info == {"rounds": 3, "steps": 12, "stopped": False}
  calls = {"n": 0}

  def dying(state, batch, i):
    calls["n"] += 1
    if calls["n"] == 8:            # in round 2, after the checkpoint at step 6
      raise KeyboardInterrupt
    return _step(state, batch, i)

  with pytest.raises(KeyboardInterrupt):
    loop.train(str(tmp_path / "run"), _init(), 3, _batches, dying, _end, label="t", total_steps=12, ckpt_every=2)
  seen = []
  got, info = loop.train(str(tmp_path / "run"), _init(), 3, _batches,
                         lambda s, b, i: seen.append(i) or _step(s, b, i), _end, label="t", total_steps=12, ckpt_every=2)
  assert seen == [6, 7, 8, 9, 10, 11] and info["steps"] == 12        # only the batches not taken before
  np.testing.assert_array_equal(np.asarray(ref["w"]), np.asarray(got["w"]))
  logged = [json.loads(l) for l in (tmp_path / "ref" / "tb" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == [4, 8, 12]                     # the round's metrics at the global step


def test_early_stop_survives_a_restart_and_rounds_can_be_the_x_axis(tmp_path):
  stop_at_2 = lambda r, state, m: (state, {"grpo/x": r}, r == 1)
  _, info = loop.train(str(tmp_path), _init(), 5, _batches, _step, stop_at_2, label="t", x="round")
  assert info == {"rounds": 2, "steps": 8, "stopped": True}
  _, again = loop.train(str(tmp_path), _init(), 5, _batches, _step, stop_at_2, label="t", x="round")
  assert again == info
  logged = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == [1, 2]


def test_a_nan_loss_stops_the_run_before_it_is_checkpointed(tmp_path):
  def nan_after_3(state, batch, i):
    state, m = _step(state, batch, i)
    return state, {"loss": jnp.nan if i >= 3 else m["loss"]}

  with pytest.raises(UserError, match="loss is nan at step 4: training diverged"):
    loop.train(str(tmp_path), _init(), 3, _batches, nan_after_3, _end, label="t", ckpt_every=4)
  assert not (tmp_path / "ckpt").exists() or not any(p.name.isdigit() for p in (tmp_path / "ckpt").iterdir())
  with pytest.raises(UserError, match="x must be"):
    loop.train(str(tmp_path / "x"), _init(), 1, _batches, _step, _end, label="t", x="epoch")
