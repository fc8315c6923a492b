"""What the agent asks of a model variant: prefill, generate, score continuations, distributions.

All entry points take host-side token lists, pad them to bucketed shapes (so repeated agent steps
reuse compiled programs) and run jitted code on the variant. Padding is on the right: each cache
row has its own length (see decoder.py), so no left padding or recomputation is ever needed.

  cache = variant.init_cache(batch, cache_len)
  last, cache = prefill(variant, cache, [prompt_ids_0, prompt_ids_1])        # last hidden per row
  out = generate(variant, cache, last, max_new_tokens=16, eos_ids=tok.eos_ids)
  lp = score(variant, cache, last, row_of=[0, 0, 1], continuations=[[5, 6], [7], [8, 9, 10]])
  last, cache, lp = prefill_score(variant, cache, [new_ids_0, new_ids_1], row_of, continuations)  # both, one pass
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpr.models.variants import Variant

MIN_BUCKET = 8
COARSE = 128      # bucket() steps by this above it
KV_MIN = 128      # the shortest attention window over the cache


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
  """The padded size for n: the next power of two (at least `minimum`) up to COARSE, then the next
  multiple of COARSE, which bounds padding at long lengths (a 700-token rebuild pads to 768, not 1024)
  while keeping the compiled shapes few."""
  if n > COARSE:
    return -(-int(n) // COARSE) * COARSE
  return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def pad_batch(seqs: Sequence[Sequence[int]], length: Optional[int] = None, pad: int = 0):
  """Right-pads token lists → (tokens [B, T] int32, lens [B] int32), T bucketed unless given."""
  lens = np.array([len(s) for s in seqs], np.int32)
  t = length or bucket(int(lens.max(initial=1)))
  out = np.full((len(seqs), t), pad, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out, lens


def _check_room(cache, lens) -> np.ndarray:
  """The rows' cached lengths, after checking that `lens` more tokens fit each row."""
  lengths = np.asarray(cache["lengths"])
  room = cache["k"].shape[2] - lengths
  if np.any(np.asarray(lens) > room):
    raise ValueError(f"KV cache overflow: appending {np.asarray(lens).tolist()} tokens with room "
                     f"{room.tolist()}; use a longer cache (trim the history)")
  return lengths


def kv_window(cache, needed: int) -> int:
  """How many leading cache slots attention reads when no query sees past slot `needed`: its
  bucket() (at least KV_MIN) so few programs are compiled, capped at the cache's length."""
  return min(cache["k"].shape[2], bucket(needed, KV_MIN))


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(2,))
def _prefill(variant: Variant, variables, cache, tokens, lens, kv_len: int):
  hidden, cache = variant.model.apply(variant.full_variables(variables), tokens, lens, cache, kv_len=kv_len)
  last = jnp.take_along_axis(hidden, jnp.maximum(lens - 1, 0)[:, None, None], axis=1)[:, 0]
  return hidden, last, cache


def prefill(variant: Variant, cache, seqs: Sequence[Sequence[int]], return_hidden: bool = False):
  """Appends each row's tokens (at least one) to its cache row.

  Returns (hidden state of each row's last new token [B, H], cache[, all hidden states [B, T, H]]).
  """
  tokens, lens = pad_batch(seqs)
  lengths = _check_room(cache, lens)
  kv_len = kv_window(cache, int((lengths + tokens.shape[1]).max()))
  hidden, last, cache = _prefill(variant, variant.variables, cache, tokens, lens, kv_len)
  return (last, cache, hidden) if return_hidden else (last, cache)


# --- generation ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Generation:
  tokens: np.ndarray        # [B, max_new] generated ids (valid up to lengths)
  logprobs: np.ndarray      # [B, max_new] log p of each generated token under the variant
  lengths: np.ndarray       # [B] tokens generated before eos / the cap (eos included)
  cache: dict               # holds the context plus all generated tokens but the last


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 8), donate_argnums=(2,))
def _generate(variant: Variant, variables, cache, last_hidden, max_new: int, eos_ids: tuple,
              temperature: float, rng, kv_len: int):
  variables = variant.full_variables(variables)
  b = last_hidden.shape[0]
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def pick(hidden, key):
    logits = variant.model.apply(variables, hidden, method="logits")
    logp = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 0.0:
      tok = jnp.argmax(logits, axis=-1)
    else:
      tok = jax.random.categorical(key, logits / temperature, axis=-1)
    return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]

  def body(state):
    i, cache, hidden, toks, lps, done, key = state
    key, sub = jax.random.split(key)
    tok, lp = pick(hidden, sub)
    toks = toks.at[:, i].set(jnp.where(done, 0, tok))
    lps = lps.at[:, i].set(jnp.where(done, 0.0, lp))
    now_done = done | jnp.isin(tok, eos) | (i + 1 >= max_new)
    # Feed the new token only for rows still running: finished rows append nothing.
    h, cache = variant.model.apply(variables, tok[:, None], (~now_done).astype(jnp.int32), cache, kv_len=kv_len)
    return i + 1, cache, h[:, 0], toks, lps, now_done | done, key

  def cond(state):
    return (state[0] < max_new) & ~jnp.all(state[5])

  init = (jnp.int32(0), cache, last_hidden, jnp.zeros((b, max_new), jnp.int32),
          jnp.zeros((b, max_new), jnp.float32), jnp.zeros((b,), bool), rng)
  i, cache, _, toks, lps, _, _ = jax.lax.while_loop(cond, body, init)
  return toks, lps, cache


def generate(variant: Variant, cache, last_hidden, *, max_new_tokens: int, eos_ids: Sequence[int] = (),
             temperature: float = 0.0, rng: Optional[jax.Array] = None) -> Generation:
  """Greedy (temperature 0) or sampled decoding from each row's cached context."""
  lengths = _check_room(cache, np.full(last_hidden.shape[0], max_new_tokens))
  rng = jax.random.key(0) if rng is None else rng
  kv_len = kv_window(cache, int(lengths.max()) + int(max_new_tokens))
  toks, lps, cache = _generate(variant, variant.variables, cache, last_hidden, int(max_new_tokens),
                               tuple(int(e) for e in eos_ids), float(temperature), rng, kv_len)
  toks, lps = np.asarray(toks), np.asarray(lps)
  lengths = np.full(toks.shape[0], toks.shape[1], np.int32)
  for row in range(toks.shape[0]):
    hit = np.flatnonzero(np.isin(toks[row], list(eos_ids))) if eos_ids else []
    if len(hit):
      lengths[row] = hit[0] + 1
  return Generation(toks, lps, lengths, cache)


def cut_at_stop(tokenizer, tokens: Sequence[int], stop_strings: Sequence[str]) -> tuple[str, int]:
  """Text up to the earliest stop string, and how many generated tokens it takes to cover it.

  Stop strings are matched on decoded text (a stop like "\n" or "Observation:" need not be a token
  boundary); generation itself stops on eos ids inside the jitted loop, and the caller rolls the
  cache back to the kept tokens with `truncate_cache`.
  """
  text = tokenizer.decode(list(tokens))
  cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
  if cut < 0:
    return text, len(tokens)
  keep = next(n for n in range(len(tokens) + 1) if len(tokenizer.decode(list(tokens[:n]))) >= cut)
  return text[:cut], keep


def truncate_cache(cache, lengths) -> dict:
  """Rolls rows back to `lengths` cached tokens (e.g. after a stop string): later tokens are dead."""
  return {**cache, "lengths": jnp.asarray(lengths, jnp.int32)}


# --- scoring ------------------------------------------------------------------------------------

def _tree_pass(variant: Variant, variables, cache, last_hidden, tokens, visible, depth, prev, lens,
               kv_len: int, commit: bool):
  variables = variant.full_variables(variables)
  hidden, cache = variant.model.apply(variables, tokens, lens, cache, (visible, depth), kv_len=kv_len,
                                      commit=commit)
  # A token is predicted by its parent's hidden state, or by the history's last one at the root.
  h = jnp.concatenate([last_hidden[:, None], hidden], axis=1)
  h = jnp.take_along_axis(h, prev[..., None], axis=1)
  logp = jax.nn.log_softmax(variant.model.apply(variables, h, method="logits"), axis=-1)
  last = jnp.take_along_axis(hidden, jnp.maximum(lens - 1, 0)[:, None, None], axis=1)[:, 0]
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0], hidden, last, cache   # logp [B, T]


# Scoring alone returns only the log-probs, so XLA drops the hidden states it would otherwise copy out.
_score = jax.jit(lambda *args: _tree_pass(*args, commit=False)[0], static_argnums=(0, 9))
_prefill_score = jax.jit(functools.partial(_tree_pass, commit=True), static_argnums=(0, 9), donate_argnums=(2,))


def _pack(b: int, contexts: Sequence[Sequence[int]], row_of: Sequence[int],
          continuations: Sequence[Sequence[int]]):
  """One chunk per row: its context tokens (causal), then its continuations merged into a prefix
  tree ("go to cabinet 1", "go to cabinet 2", ... share "go to cabinet") whose tokens see the
  context and their own ancestors. → (tokens, visible, depth, prev, context lens, paths), where
  paths[m] = (row, chunk index of each token of continuation m)."""
  if any(len(c) == 0 for c in continuations):
    raise ValueError("empty continuation")
  nodes: list[dict] = [{} for _ in range(b)]        # per row: (parent node, token) -> node
  parent: list[list[int]] = [[] for _ in range(b)]
  toks: list[list[int]] = [[] for _ in range(b)]
  paths = []
  for r, c in zip(row_of, continuations):
    node, path = -1, []
    for tok in c:
      key = (node, int(tok))
      if key not in nodes[r]:
        nodes[r][key] = len(toks[r])
        toks[r].append(int(tok))
        parent[r].append(node)
      node = nodes[r][key]
      path.append(node)
    paths.append((r, path))
  lens = np.array([len(c) for c in contexts], np.int32)
  t = bucket(max(int(n) + len(x) for n, x in zip(lens, toks)))
  tokens = np.zeros((b, t), np.int32)
  depth = np.zeros((b, t), np.int32)                # position after the row's cached history
  prev = np.zeros((b, t), np.int32)                 # index into [last_hidden ; chunk hidden]
  visible = np.broadcast_to(np.eye(t, dtype=bool), (b, t, t)).copy()   # padding sees itself only
  for r in range(b):
    n = int(lens[r])
    tokens[r, :n] = contexts[r]
    depth[r, :n] = np.arange(n)
    visible[r, :n, :n] = np.tri(n, dtype=bool)
    for i, (tok, par) in enumerate(zip(toks[r], parent[r])):   # parents precede their children
      j = n + i
      tokens[r, j] = tok
      visible[r, j, :n] = True
      if par >= 0:
        depth[r, j] = depth[r, n + par] + 1
        prev[r, j] = n + par + 1
        visible[r, j] |= visible[r, n + par]
      else:                                          # a root: predicted by the context's last token
        depth[r, j], prev[r, j] = n, n
  return tokens, visible, depth, prev, lens, [(r, [n + int(lens[r]) for n in path]) for r, path in paths]


def score(variant: Variant, cache, last_hidden, row_of: Sequence[int],
          continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
  """Per-token log-probabilities of each continuation given its row's cached context.

  row_of[m] names the cache row continuation m extends. A row's continuations are merged into a
  prefix tree packed into one chunk, where each token attends to the row's history and its own
  ancestors: scoring 50 candidate actions costs one forward pass over their distinct prefixes and
  never copies the cache, which is not modified.
  """
  b = last_hidden.shape[0]
  tokens, visible, depth, prev, lens, paths = _pack(b, [[]] * b, row_of, continuations)
  kv_len = kv_window(cache, int(np.asarray(cache["lengths"]).max()))
  out = np.asarray(_score(variant, variant.variables, cache, last_hidden, tokens, visible, depth, prev, lens,
                          kv_len))
  return [out[r, path] for r, path in paths]


def prefill_score(variant: Variant, cache, seqs: Sequence[Sequence[int]], row_of: Sequence[int],
                  continuations: Sequence[Sequence[int]], return_hidden: bool = False):
  """`prefill(seqs)` then `score(row_of, continuations)` in one forward pass: each row's chunk is its
  new context tokens followed by its continuations' prefix tree. Only the context enters the cache.

  Returns (last hidden [B, H], cache, per-continuation log-probs[, hidden [B, T, H], whose first
  len(seqs[b]) positions of row b are the context's]). Rows with continuations need context tokens.
  """
  b = len(seqs)
  if any(len(seqs[r]) == 0 for r in row_of):
    raise ValueError("a row scored by prefill_score needs new context tokens")
  tokens, visible, depth, prev, lens, paths = _pack(b, seqs, row_of, continuations)
  lengths = _check_room(cache, lens)
  kv_len = kv_window(cache, int(lengths.max()))
  h0 = jnp.zeros((b, variant.cfg.hidden_size), variant.prec.jnp_dtype)   # never read: roots follow context
  out, hidden, last, cache = _prefill_score(variant, variant.variables, cache, h0, tokens, visible, depth,
                                            prev, lens, kv_len)
  out = np.asarray(out)
  lps = [out[r, path] for r, path in paths]
  return (last, cache, lps, hidden) if return_hidden else (last, cache, lps)


# --- distributions --------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _log_dists(variant: Variant, variables, hidden, positions):
  variables = variant.full_variables(variables)
  h = jnp.take_along_axis(hidden, positions[..., None], axis=1)                    # [B, P, H]
  return jax.nn.log_softmax(variant.model.apply(variables, h, method="logits"), axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _teacher(variant: Variant, variables, cache, last_hidden, tokens, lens, kv_len: int):
  variables = variant.full_variables(variables)
  hidden, _ = variant.model.apply(variables, tokens, lens, cache, kv_len=kv_len, commit=False)
  # Token j is predicted by the hidden state before it: the context's last one for j = 0.
  before = jnp.concatenate([last_hidden[:, None].astype(hidden.dtype), hidden[:, :-1]], axis=1)
  return jax.nn.log_softmax(variant.model.apply(variables, before, method="logits"), axis=-1)


def teacher_forced(variant: Variant, cache, last_hidden, seqs: Sequence[Sequence[int]]) -> tuple[jax.Array, np.ndarray]:
  """Each row's next-token log-distributions along `seqs[b]` continuing its cached context, the
  tokens fed as given (teacher forcing): ([B, T, V] on device, lengths [B]); position j of row b
  (j < len(seqs[b])) is the distribution token j was drawn from. The cache is left as it was."""
  tokens, lens = pad_batch(seqs)
  lengths = _check_room(cache, lens)
  kv_len = kv_window(cache, int((lengths + tokens.shape[1]).max()))
  return _teacher(variant, variant.variables, cache, last_hidden, tokens, lens, kv_len), lens


def next_token_logprobs(variant: Variant, hidden, positions: Sequence[Sequence[int]]) -> jax.Array:
  """Full next-token log-distributions [B, P, V] at chosen positions of a prefill's hidden states."""
  pos, _ = pad_batch(positions, length=max(len(p) for p in positions))
  return _log_dists(variant, variant.variables, hidden, jnp.asarray(pos))
