"""How closely precision variants track a reference variant on the same contexts, teacher-forced.

  fid = token_fidelity(ref, {"int4": v4, "int2": v2}, examples)
  fid["int4"]   # {"kl": mean KL(p_ref ‖ p_int4) per action token, "argmax_agreement": ..., "tokens": n}
                # (kl and argmax_agreement are None when no example has an action token)

`examples` are mpr.agent.demos Examples: the contexts an agent met, token for token, with the action
tokens marked. Every variant reads the same tokens, so the numbers isolate the weights' precision
from the trajectories' divergence (which success measures). Logits are taken only at the marked
positions, padded to a multiple of `_ROWS`, so a large vocabulary costs [tokens marked, V], not
[batch, length, V].
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpr.agent.demos import Example
from mpr.models.variants import Variant
from mpr.train import lm

_ROWS = 256


@jax.jit
def _compare(ref_logits, logits, valid):
  lp_ref, lp = jax.nn.log_softmax(ref_logits, -1), jax.nn.log_softmax(logits, -1)
  kl = (jnp.exp(lp_ref) * (lp_ref - lp)).sum(-1)
  agree = jnp.argmax(ref_logits, -1) == jnp.argmax(logits, -1)
  return (kl * valid).sum(), (agree * valid).sum()


def _marked_logits(variant: Variant, tokens: np.ndarray, mask: np.ndarray, lens: np.ndarray) -> jax.Array:
  """Logits predicting every marked token (position t-1 predicts token t), padded to _ROWS rows."""
  hidden, _ = variant.forward(jnp.asarray(tokens), jnp.asarray(lens), variant.init_cache(*tokens.shape))
  rows, cols = np.nonzero(mask[:, 1:])
  picked = hidden[jnp.asarray(rows), jnp.asarray(cols)]       # gathered on device: no [B, T, H] copy out
  return variant.logits(jnp.pad(picked, ((0, -len(rows) % _ROWS), (0, 0))))


def token_fidelity(ref: Variant, variants: dict[str, Variant], examples: Sequence[Example],
                   batch_tokens: int = 8192) -> dict[str, dict]:
  totals = {name: [0.0, 0.0] for name in variants}
  count = 0
  tc = lm.train_config(batch_tokens=batch_tokens)
  for tokens, mask, lens in lm.epoch_batches(examples, tc, epoch=0):
    n = int(mask[:, 1:].sum())
    if not n:
      continue
    ref_logits = _marked_logits(ref, tokens, mask, lens)
    valid = jnp.arange(ref_logits.shape[0]) < n
    for name, variant in variants.items():
      kl, agree = _compare(ref_logits, _marked_logits(variant, tokens, mask, lens), valid)
      totals[name][0] += float(kl)
      totals[name][1] += float(agree)
    count += n
  return {name: {"kl": kl / count if count else None, "argmax_agreement": agree / count if count else None,
                 "tokens": count} for name, (kl, agree) in totals.items()}
