"""Next-token training on masked targets: the loop behind behaviour cloning.

  params, metrics = train(cfg, params, train_examples, val_examples, config.train, workdir)

Batches: examples are grouped by length into buckets of `bucket` tokens, and each batch holds about
`batch_tokens` tokens (fewer rows for longer buckets), so a few compiled shapes serve every batch
and padding stays under one bucket step. The batch order of every epoch is a pure function of the
seed and the epoch, which is what makes resume exact: the loop (mpr.train.loop, an epoch per round)
restores the latest checkpoint (params, optimizer state, position) and skips the batches already taken.

Optimizer: AdamW (decoupled weight decay on matrices only) under a linear-warmup cosine schedule,
with global-norm clipping. Checkpoints every `ckpt_every` steps and at each epoch's end under
workdir/ckpt; metrics every `log_every` steps to TensorBoard + metrics.jsonl under workdir/tb.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mpr import hosts
from mpr.agent.demos import Example
from mpr.errors import UserError
from mpr.models.config import ModelConfig
from mpr.models.decoder import Decoder, init_cache
from mpr.train import loop


def train_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.epochs = 4
  c.steps = 0               # > 0: train exactly this many steps instead (epochs wrap around as needed)
  c.lr = 1e-3
  c.warmup_steps = 100
  c.end_lr_ratio = 0.1
  c.weight_decay = 0.05
  c.clip_norm = 1.0
  c.batch_tokens = 8192
  c.bucket = 128
  c.seed = 0
  c.log_every = 50
  c.ckpt_every = 200
  c.update(overrides)
  return c


# --- batches --------------------------------------------------------------------------------------

def _buckets(examples: Sequence[Example], tc) -> dict[int, tuple[list[int], int]]:
  """Padded length -> (indices of the examples of that bucket, rows per batch of that length)."""
  by_len: dict[int, list[int]] = {}
  for i, x in enumerate(examples):
    by_len.setdefault(-(-len(x.tokens) // tc.bucket) * tc.bucket, []).append(i)
  return {length: (by_len[length], max(1, tc.batch_tokens // length)) for length in sorted(by_len)}


def batches_per_epoch(examples: Sequence[Example], tc) -> int:
  return sum(-(-len(idx) // rows) for idx, rows in _buckets(examples, tc).values())


def epoch_batches(examples: Sequence[Example], tc, epoch: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(tokens [B, L], loss mask [B, L], lengths [B]) batches of one epoch, in its shuffled order."""
  rng = np.random.default_rng([tc.seed, epoch])
  out = []
  for length, (members, rows) in _buckets(examples, tc).items():
    idx = rng.permutation(members)
    for lo in range(0, len(idx), rows):
      chunk = idx[lo:lo + rows]
      toks = np.zeros((rows, length), np.int32)
      mask = np.zeros((rows, length), bool)
      lens = np.zeros((rows,), np.int32)
      for r, i in enumerate(chunk):
        n = len(examples[i].tokens)
        toks[r, :n], mask[r, :n], lens[r] = examples[i].tokens, examples[i].loss, n
      out.append((toks, mask, lens))
  return [out[i] for i in rng.permutation(len(out))]


# --- the step -------------------------------------------------------------------------------------

def _loss(model: Decoder, params, tokens, mask, lens):
  b, t = tokens.shape
  hidden, _ = model.apply({"params": params}, tokens, lens, init_cache(model.cfg, b, t, jnp.float32))
  logits = model.apply({"params": params}, hidden[:, :-1], method="logits")
  logp = jax.nn.log_softmax(logits, axis=-1)
  target = tokens[:, 1:]
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  w = mask[:, 1:].astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
  return (nll * w).sum() / n, {"tokens": w.sum(), "nll_sum": (nll * w).sum(), "correct": (correct * w).sum()}


def make_optimizer(tc, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, min(tc.warmup_steps, max(total_steps - 1, 1)),
                                                max(total_steps, 2), tc.lr * tc.end_lr_ratio)
  return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=tc.weight_decay, mask=decayed))


def decayed(params) -> dict:
  """Which parameters weight decay applies to: the matrices (kernels, the token table), not norms'
  scales or biases. By name: stacked layers give a norm's scale two axes."""
  return jax.tree_util.tree_map_with_path(lambda path, x: str(getattr(path[-1], "key", "")) in ("kernel", "embedding"),
                                          params)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def _train_step(model, opt, params, opt_state, tokens, mask, lens):
  (loss, aux), grads = jax.value_and_grad(_loss, argnums=1, has_aux=True)(model, params, tokens, mask, lens)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)


@functools.partial(jax.jit, static_argnums=(0,))
def _eval_step(model, params, tokens, mask, lens):
  return _loss(model, params, tokens, mask, lens)[1]


def evaluate(cfg: ModelConfig, params, examples: Sequence[Example], tc) -> dict[str, float]:
  """Masked-token NLL and accuracy (teacher forced) over `examples`."""
  model = Decoder(cfg)
  tot = {"tokens": 0.0, "nll_sum": 0.0, "correct": 0.0}
  for toks, mask, lens in epoch_batches(examples, tc, epoch=0):
    aux = _eval_step(model, params, toks, mask, lens)
    for k in tot:
      tot[k] += float(aux[k])
  n = max(tot["tokens"], 1.0)
  return {"nll": tot["nll_sum"] / n, "token_accuracy": tot["correct"] / n}


# --- the loop -------------------------------------------------------------------------------------

def train(cfg: ModelConfig, params, train_examples: Sequence[Example], val_examples: Sequence[Example],
          tc, workdir: str, label: str = "train") -> tuple[dict, dict]:
  """Trains `params` for tc.epochs (or tc.steps); resumes from workdir/ckpt. Returns (params, final metrics)."""
  if not train_examples:
    raise UserError("no training examples (empty demonstration set)")
  if tc.steps < 0 or tc.epochs < 1:
    raise UserError(f"train.steps must be >= 0 and train.epochs >= 1, got {tc.steps} and {tc.epochs}")
  model = Decoder(cfg)
  per_epoch = batches_per_epoch(train_examples, tc)
  total = tc.steps or per_epoch * tc.epochs
  opt = make_optimizer(tc, total)
  val = None

  def batches(epoch, _):     # the last epoch of a `steps` run stops at step `total`
    return epoch_batches(train_examples, tc, epoch)[:total - epoch * per_epoch]

  def step(state, batch, _):
    params, opt_state, loss, gnorm = _train_step(model, opt, state["params"], state["opt_state"], *batch)
    return {"params": params, "opt_state": opt_state}, {"loss": loss, "grad_norm": gnorm}

  def end_epoch(epoch, state, metrics):
    nonlocal val
    val = evaluate(cfg, state["params"], val_examples, tc) if val_examples else None
    summary = {"train/epoch": epoch + 1, **({f"val/{k}": v for k, v in val.items()} if val else {})}
    return state, summary, False

  state, _ = loop.train(workdir, {"params": params, "opt_state": opt.init(params)}, -(-total // per_epoch),
                        batches, step, end_epoch, label=label, total_steps=total, ckpt_every=tc.ckpt_every,
                        log_every=tc.log_every)
  params = state["params"]
  final = {"steps": total, "examples": len(train_examples)}
  if val_examples:
    final.update({f"val_{k}": v for k, v in (val or evaluate(cfg, params, val_examples, tc)).items()})
  final["train_nll"] = evaluate(cfg, params, train_examples[:: max(1, len(train_examples) // 500)], tc)["nll"]
  return hosts.from_primary(params), final
