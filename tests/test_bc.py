"""Behaviour-cloning training: it learns, it resumes exactly after an interruption, it refuses bad input."""
import json

import jax
import numpy as np
import pytest

from mpr.agent import demos, prompt
from mpr.errors import UserError
from mpr.models import tiny
from mpr.records import Episode, Step
from mpr.train import lm


def _episode(i):
  rooms = ["fridge 1", "cabinet 2", "countertop 1", "sinkbasin 1"]
  steps = [Step(t=t, observation=f"You arrive at {rooms[(i + t) % 4]}. You see a apple {i % 3}.",
                admissible=[f"go to {r}" for r in rooms], action=f"go to {rooms[(i + t + 1) % 4]}")
           for t in range(3)]
  return Episode(f"g{i}", "pick_and_place_simple", 0, f"put a apple {i % 3} in fridge 1", steps, won=True)


@pytest.fixture(scope="module")
def setup():
  tok = tiny.tokenizer()
  cfg = tiny.model_config(tok, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                          num_kv_heads=1, head_dim=32)
  ex = demos.examples([_episode(i) for i in range(24)], tok, prompt.COMPACT, budget=256, reserve=16)
  tc = lm.train_config(epochs=3, lr=3e-3, warmup_steps=2, batch_tokens=512, bucket=64, log_every=2, ckpt_every=3)
  return cfg, ex, tc


def test_training_lowers_the_action_loss(tmp_path, setup):
  cfg, ex, tc = setup
  params = tiny.init_params(cfg, 0)
  before = lm.evaluate(cfg, params, ex, tc)["nll"]
  params, final = lm.train(cfg, params, ex, ex[:4], tc, str(tmp_path))
  assert final["train_nll"] < 0.5 * before
  assert (tmp_path / "tb" / "metrics.jsonl").exists()


@pytest.mark.parametrize("budget", [False, True])
def test_resume_after_interruption_is_exact(tmp_path, setup, monkeypatch, budget):
  cfg, ex, tc = setup
  if budget:    # a step budget past the first epoch: the interruption lands in the second
    tc = lm.train_config(**{**tc.to_dict(), "steps": lm.batches_per_epoch(ex, tc) + 4})
    assert lm.batches_per_epoch(ex, tc) < 8 < tc.steps
  ref, _ = lm.train(cfg, tiny.init_params(cfg, 0), ex, [], tc, str(tmp_path / "ref"))

  real_step, calls = lm._train_step, {"n": 0}

  def dying_step(*args):
    calls["n"] += 1
    if calls["n"] == 8:           # after the checkpoint at step 6, before the end
      raise KeyboardInterrupt
    return real_step(*args)

  monkeypatch.setattr(lm, "_train_step", dying_step)
  with pytest.raises(KeyboardInterrupt):
    lm.train(cfg, tiny.init_params(cfg, 0), ex, [], tc, str(tmp_path / "run"))
  monkeypatch.setattr(lm, "_train_step", real_step)
  resumed, _ = lm.train(cfg, tiny.init_params(cfg, 1), ex, [], tc, str(tmp_path / "run"))  # init ignored
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_a_step_budget_wraps_epochs_and_stops_on_time(tmp_path, setup, monkeypatch):
  cfg, ex, tc = setup
  per_epoch = lm.batches_per_epoch(ex, tc)
  real_step, seen = lm._train_step, []
  monkeypatch.setattr(lm, "_train_step", lambda *a: seen.append(a[4].copy()) or real_step(*a))
  tc = lm.train_config(**{**tc.to_dict(), "steps": per_epoch + 2})
  _, final = lm.train(cfg, tiny.init_params(cfg, 0), ex, [], tc, str(tmp_path))
  assert final["steps"] == len(seen) == per_epoch + 2
  # The steps past the first epoch are the second epoch's first batches.
  second = lm.epoch_batches(ex, tc, epoch=1)
  for got, want in zip(seen[per_epoch:], second):
    np.testing.assert_array_equal(got, want[0])


def test_batches_cover_every_example_once_per_epoch(setup):
  _, ex, tc = setup
  batches = lm.epoch_batches(ex, tc, epoch=0)
  assert sum(int((lens > 0).sum()) for _, _, lens in batches) == len(ex)
  assert lm.batches_per_epoch(ex, tc) == len(batches)
  assert all(t.shape[1] % tc.bucket == 0 and t.shape[0] * t.shape[1] <= max(tc.batch_tokens, t.shape[1])
             for t, _, _ in batches)
  again = lm.epoch_batches(ex, tc, epoch=0)
  assert all((a[0] == b[0]).all() for a, b in zip(batches, again))


def test_bad_budgets_and_model_fields_are_clear_errors(tmp_path, setup):
  cfg, ex, tc = setup
  with pytest.raises(UserError, match="train.steps must be >= 0"):
    lm.train(cfg, tiny.init_params(cfg, 0), ex, [], lm.train_config(**{**tc.to_dict(), "steps": -1}), str(tmp_path))
  tok = tiny.tokenizer()
  assert tiny.model_config(tok, num_layers=6).num_layers == 6
  for bad in ({"layers": 6}, {"vocab_size": 100}):
    with pytest.raises(UserError, match="unknown or fixed model fields"):
      tiny.model_config(tok, **bad)


def test_training_goes_on_from_a_policy_folder_only_when_it_matches(tmp_path, setup):
  import ml_collections
  from mpr.agent import models
  from mpr.stages import bc
  cfg, _, _ = setup
  params = tiny.init_params(cfg, 3)
  models.save_policy(str(tmp_path / "p"), cfg, params, tiny.ASSETS, extra={}, param_dtype="float32")
  start = lambda path, c=cfg: bc.start_params(ml_collections.ConfigDict({"init": path}), c, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start(str(tmp_path / "p"))),
                                                  jax.tree.leaves(params)))
  assert not np.array_equal(jax.tree.leaves(start(""))[0], jax.tree.leaves(params)[0])   # '' = random init
  # The runner records the init policy among the stage's inputs, by digest.
  recorded = lambda path: bc.inputs(ml_collections.ConfigDict({"bc": {"init": path}}))
  assert recorded("") == {} and set(recorded(str(tmp_path / "p"))["bc.init"]) >= {"model.json", "tokenizer.json"}
  with pytest.raises(UserError, match="is not this config's"):
    start(str(tmp_path / "p"), tiny.model_config(tiny.tokenizer(), num_layers=3, hidden_size=64,
                                                 intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32))
  (tmp_path / "p" / "tokenizer.json").write_text((tmp_path / "p" / "tokenizer.json").read_text().replace("apple", "appel"))
  with pytest.raises(UserError, match="tokenizer is not the tiny policy's"):
    start(str(tmp_path / "p"))
  with pytest.raises(UserError):
    start(str(tmp_path / "missing"))


def test_weight_decay_reaches_matrices_not_norms_or_biases():
  from mpr.models import config as config_lib, params as params_lib
  cfg = config_lib.tiny(vocab_size=64, qkv_bias=True)
  mask = params_lib.flatten(lm.decayed(params_lib.abstract(cfg)))
  assert {p for p, on in mask.items() if on} == {p for p in mask if p[-1] in ("kernel", "embedding")}
  assert not mask[("layers", "attn_norm", "scale")] and not mask[("layers", "attn", "q", "proj", "bias")]
  assert mask[("layers", "mlp", "down", "proj", "kernel")] and mask[("embed", "embedding")]


def test_a_training_checkpoint_of_another_state_is_a_one_line_error(tmp_path):
  """E.g. a run folder from before the layers were stacked: its per-layer Adam moments fit no new state."""
  from mpr.train import checkpoints
  old = {"params": {"layer_0": {"kernel": np.ones((4, 4), np.float32)}}}
  mgr, step, _ = checkpoints.restore_latest(str(tmp_path / "ckpt"), old)
  assert step == 0
  checkpoints.save(mgr, 3, old)
  mgr.wait_until_finished()
  new = {"params": {"layers": {"kernel": np.ones((2, 4, 4), np.float32)}}}
  with pytest.raises(UserError, match=r"step 3 does not hold this run's training state .*delete the folder"):
    checkpoints.restore_latest(str(tmp_path / "ckpt"), new)


def test_no_examples_is_a_clear_error(tmp_path, setup):
  cfg, _, tc = setup
  with pytest.raises(UserError, match="no training examples"):
    lm.train(cfg, tiny.init_params(cfg, 0), [], [], tc, str(tmp_path))


def test_bc_stage_end_to_end_on_a_few_real_games(tmp_path, alfworld_data):
  """expert demos → cloning → one DAgger round → a policy folder the agent loads."""
  import os
  import subprocess
  import sys
  from mpr.agent import models
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, os.path.join(root, "launch.py"), "--workdir", str(tmp_path),
          "--config", os.path.join(root, "experiments/configs/bc_tiny.py") + ":num_games=4,rounds=1,dagger_games=2,layers=2",
          "--config.bc.train.steps=3", "--config.bc.dagger.train.steps=2", "--config.bc.dagger.max_steps=4",
          "--config.env.num_slots=2"]
  p = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  metrics = json.load(open(tmp_path / "bc" / "metrics.json"))
  assert [r["round"] for r in metrics["rounds"]] == [0, 1] and metrics["rounds"][1]["dagger_examples"] > 0
  assert metrics["rounds"][1]["steps"] == 2     # the DAgger round trains its step budget, not epochs
  assert len((tmp_path / "bc" / "round_1" / "episodes.jsonl").read_text().splitlines()) == 2
  policy = models.load(models.model_config(path=str(tmp_path / "bc" / "policy")))
  assert policy.tok.vocab_size == policy.cfg.vocab_size and policy.cfg.num_layers == 2   # bc_tiny.py:layers=2
  # Every round's model is a policy folder too (f32: the next round trains on from it).
  round_0 = models.load(models.model_config(path=str(tmp_path / "bc" / "round_0" / "model")))
  assert round_0.cfg == policy.cfg
  assert json.load(open(tmp_path / "bc" / "round_0" / "model" / "model.json"))["param_dtype"] == "float32"
  assert json.load(open(tmp_path / "bc" / "policy" / "model.json"))["param_dtype"] == "float32"
  assert "| 1 |" in (tmp_path / "bc" / "summary.md").read_text()

