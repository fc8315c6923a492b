"""KL-ST: supervised training of the router on KL-threshold labels.

  params, result = train(router_cfg, sl_cfg, train_table, val_table, workdir)
  cfg, params, meta = model.load_router(workdir + "/router")

1. τ = threshold(d_train, tau | quantile), from the TRAIN table only; val is labelled with the same τ.
2. y_t = 1[d_t ≥ τ] on the steps whose KL is known (NaN steps are not trained on, but their
   embeddings still fill later steps' history windows).
3. loss = Σ_b w[y_b] · CE(logits_b, y_b) / Σ_b w[y_b], with balanced class weights w = n / (2 n_c).
4. Every epoch: validation loss / accuracy / AUROC / AP of p_high against the val labels; the params
   with the best val AP are kept; `patience` epochs without a new best stop training.

Batches: the known-KL steps are shuffled per epoch by a generator seeded with (seed, epoch), cut into
`batch_size` rows (the last one padded with weight-0 rows, so one compiled shape serves all), and
each row becomes its history window (`data.windows`). The loop is mpr.train.loop's (an epoch is a
round): its checkpoint after every epoch holds the params, optimizer state, best params and
early-stopping counters; a restarted call continues from the last finished epoch and, since batch
order and dropout keys are pure functions of (seed, epoch, step), ends with the same params as an
uninterrupted run.

Writes workdir/{ckpt/, tb/metrics.jsonl, router/{router.json, params.msgpack}}.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mpr import hosts
from mpr.errors import UserError
from mpr.router import data, features
from mpr.router import labels as labels_lib
from mpr.router.model import HIGH, Router, from_config, init_params, save_router
from mpr.train import loop
from mpr.train.lm import make_optimizer


def sl_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tau = ml_collections.config_dict.placeholder(float)   # a fixed KL threshold; unset = the `quantile`
  c.quantile = 0.8         # unless tau is set: the top 20% most sensitive train steps are labelled high
  c.epochs = 30
  c.batch_size = 256       # steps per batch (one compiled shape)
  c.lr = 1e-3              # AdamW peak learning rate
  c.warmup_steps = 50      # linear warmup, then cosine decay to lr * end_lr_ratio
  c.end_lr_ratio = 0.1
  c.weight_decay = 0.01    # decoupled, on matrices only (make_optimizer)
  c.clip_norm = 1.0        # global gradient-norm clip
  c.patience = 5           # epochs without a better val AP before stopping
  # One router per seed (init, batch order, dropout), for the spread over seeds; the first is the
  # reference run that GRPO starts from and the tables report.
  c.seeds = (0,)
  c.update(overrides)
  return c


# --- batches --------------------------------------------------------------------------------------

def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(indices [batch_size] into the n training steps, valid [batch_size]) of one epoch, in order.

  A pure function of (seed, epoch): that is what lets a resumed run replay the same batches.
  """
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  out = []
  for lo in range(0, n, batch_size):
    idx = perm[lo:lo + batch_size]
    valid = np.zeros(batch_size, bool)
    valid[:idx.size] = True
    out.append((np.pad(idx, (0, batch_size - idx.size)), valid))
  return out


# --- the steps ------------------------------------------------------------------------------------

def _ce(model: Router, params, z, mask, y, deterministic: bool, key=None) -> jax.Array:
  rngs = None if deterministic else {"dropout": key}
  logp = jax.nn.log_softmax(model.apply({"params": params}, z, mask, deterministic=deterministic, rngs=rngs))
  return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0], logp        # [B], [B, 2]


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(model: Router, opt: optax.GradientTransformation, params, opt_state, z, mask, y, sw, key):
  def loss_fn(p):
    ce, _ = _ce(model, p, z, mask, y, deterministic=False, key=key)
    return jnp.sum(sw * ce) / jnp.maximum(jnp.sum(sw), jnp.finfo(jnp.float32).tiny)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(model: Router, params, z, mask, y):
  ce, logp = _ce(model, params, z, mask, y, deterministic=True)
  return jnp.exp(logp[:, HIGH]), ce


def evaluate(model: Router, params, table: data.StepTable, rows: np.ndarray, y: np.ndarray,
             weights: np.ndarray, batch_size: int) -> dict[str, float]:
  """Class-weighted loss, accuracy at p_high = 0.5, AUROC and AP of p_high on `rows` labelled `y`."""
  p, ce = [], []
  for n, idx, zw, mask in data.fixed_batches(table, rows, model.max_len, batch_size):
    pb, cb = _eval_step(model, params, zw, mask, y[idx])
    p.append(np.asarray(pb)[:n])
    ce.append(np.asarray(cb)[:n])
  p, ce = np.concatenate(p).astype(np.float64), np.concatenate(ce).astype(np.float64)
  sw = weights[y]
  return {"loss": float((sw * ce).sum() / sw.sum()), "accuracy": float(((p >= 0.5) == (y == 1)).mean()),
          "auroc": labels_lib.auroc(p, y), "ap": labels_lib.average_precision(p, y)}


# --- the loop -------------------------------------------------------------------------------------

def _known(table: data.StepTable, tau: float) -> tuple[np.ndarray, np.ndarray]:
  """(rows whose KL is known, their labels at tau)."""
  rows = np.flatnonzero(np.isfinite(table.d))
  return rows, labels_lib.labels(table.d[rows], tau)


def train(router_cfg: ml_collections.ConfigDict, sl_cfg: ml_collections.ConfigDict, train_table: data.StepTable,
          val_table: data.StepTable, workdir: str, meta: dict | None = None,
          seed: int | None = None) -> tuple[dict, dict]:
  """Trains a router from scratch (or resumes in workdir) with `seed` (init, batch order, dropout;
  default: the first of sl_cfg.seeds). Returns (best-by-val-AP params, result).

  `meta` is stored with the saved router (e.g. which tiers and embedding it was trained for)."""
  seed = tuple(sl_cfg.seeds)[0] if seed is None else seed
  data.validate(train_table)
  inputs = features.check(router_cfg.inputs)
  train_table, val_table = features.featurize(inputs, train_table), features.featurize(inputs, val_table)
  dim = train_table.z.shape[1]
  data.validate(val_table, dim)
  if sl_cfg.batch_size < 1 or sl_cfg.epochs < 1 or sl_cfg.patience < 1:
    raise UserError(f"batch_size, epochs and patience must be >= 1, got {sl_cfg.batch_size}, "
                    f"{sl_cfg.epochs}, {sl_cfg.patience}")
  model = from_config(router_cfg)
  tau = (labels_lib.threshold(train_table.d, tau=sl_cfg.tau) if sl_cfg.tau is not None
         else labels_lib.threshold(train_table.d, quantile=sl_cfg.quantile))
  tr_rows, y_tr = _known(train_table, tau)
  va_rows, y_va = _known(val_table, tau)
  if not (y_va == 1).any() or not (y_va == 0).any():
    raise UserError(f"validation labels at tau={tau:g} are all one class ({y_va.size} steps with a known KL)")
  weights = np.asarray(labels_lib.class_weights(y_tr), np.float32)

  per_epoch = -(-len(tr_rows) // sl_cfg.batch_size)
  opt = make_optimizer(sl_cfg, per_epoch * sl_cfg.epochs)
  params = init_params(router_cfg, dim, seed)
  # float32 / int32 scalars: a restored checkpoint must compare exactly like the live values did.
  state = {"params": params, "opt_state": opt.init(params), "best_params": jax.tree.map(np.array, params),
           "best_ap": np.asarray(-1.0, np.float32), "best_epoch": np.asarray(0, np.int32),
           "bad_epochs": np.asarray(0, np.int32)}
  base_key = jax.random.key(seed)

  def batches(epoch, _):
    for idx, valid in epoch_batches(len(tr_rows), sl_cfg.batch_size, seed, epoch):
      zw, mask = data.windows(train_table.z, train_table.offsets, tr_rows[idx], model.max_len)
      yield zw, mask, y_tr[idx], weights[y_tr[idx]] * valid

  def step(state, batch, i):
    params, opt_state, loss = _train_step(model, opt, state["params"], state["opt_state"], *batch,
                                          jax.random.fold_in(base_key, i))
    return {**state, "params": params, "opt_state": opt_state}, {"loss": loss}

  def end_epoch(epoch, state, metrics):
    val = evaluate(model, state["params"], val_table, va_rows, y_va, weights, sl_cfg.batch_size)
    if np.float32(val["ap"]) > state["best_ap"]:
      state = {**state, "best_params": jax.tree.map(np.array, state["params"]),
               "best_ap": np.asarray(val["ap"], np.float32), "best_epoch": np.asarray(epoch + 1, np.int32),
               "bad_epochs": np.asarray(0, np.int32)}
    else:
      state = {**state, "bad_epochs": np.asarray(int(state["bad_epochs"]) + 1, np.int32)}
    summary = {"train/loss": float(np.mean([m["loss"] for m in metrics])), "train/epoch": epoch + 1,
               **{f"val/{k}": v for k, v in val.items()}}
    return state, summary, int(state["bad_epochs"]) >= sl_cfg.patience

  state, info = loop.train(workdir, state, sl_cfg.epochs, batches, step, end_epoch, label="router",
                           total_steps=per_epoch * sl_cfg.epochs)
  done = info["rounds"]

  best_params = hosts.from_primary(jax.tree.map(jnp.asarray, state["best_params"]))
  val = evaluate(model, best_params, val_table, va_rows, y_va, weights, sl_cfg.batch_size)
  result = {"tau": tau, "pos_rate_train": float(y_tr.mean()), "pos_rate_val": float(y_va.mean()),
            "n_train": int(len(tr_rows)), "n_val": int(len(va_rows)), "best_epoch": int(state["best_epoch"]),
            "epochs_run": done, "early_stopped": info["stopped"],
            "seed": seed, **{f"val_{k}": v for k, v in val.items()}}
  if hosts.is_primary():   # a folder is written by one host (every host holds the same params)
    save_router(os.path.join(workdir, "router"), router_cfg, best_params,
                {**(meta or {}), "tau": tau, "best_epoch": result["best_epoch"], "val_ap": val["ap"]})
  return best_params, result
