"""The agent: one model served at several precisions, acting for a batch of ALFWorld episodes.

  agent = Agent(tok, prompt.COMPACT, {"bf16": hi, "int4": lo}, rows=pool.num_slots, budget=768,
                route=fixed("int4"))
  episodes = rollout(pool, jobs, agent)            # an Agent is a rollout Policy

Each call gets the episodes that are waiting for an action (their pool slots name their cache
rows), appends the new observation to each episode's History, asks `route` which variant acts for
each, and runs every variant once on its rows: prefill of the tokens that variant has not yet
cached, then either
  score     rank the admissible commands by log-probability (summed, or averaged per token with
            `length_norm`) → a distribution over actions; greedy or sampled at `temperature`. All
            candidates of the batch are scored in one pass (a prefix tree per row), which is the
            prefill's pass too when the variant has not caught up yet (engine.prefill_score).
  generate  decode until the format's stop token, parse the command, map it to an admissible one
            (exact, else the closest by string similarity: recorded as `mapped`).

KV caches: one per variant, a row per slot, each consistent with its own weights. When `route`
switches an episode to another variant, that variant prefills just the tokens it has not seen
(everything since it last acted, including the other variant's actions); a trimmed history makes
every variant rebuild its row. Generated tokens are rolled back and the chosen command re-appended
through the History, so caches only ever hold the canonical context.

Devices: with a ("data", "model") `mesh` (mpr.models.sharding), cache rows are split over "data"
(rows must divide evenly) and the weights and kv heads over "model": episodes are data parallel and
each model tensor parallel, with the same calls as on one device.
"""
from __future__ import annotations

import base64
import dataclasses
import difflib
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mpr.agent.prompt import Format, History
from mpr.envs.rollout import Decision, EpisodeView
from mpr.errors import UserError
from mpr.models import decoder, engine, sharding
from mpr.models.tokenizer import Tokenizer
from mpr.models.variants import Variant

MODES = ("score", "generate")
# Step embeddings z are stored (and routed on) at this precision: half the log size of float32, and a
# router reading live z and one replaying logged z see the same numbers (computed in float32, held in float16).
Z_DTYPE = np.float16
PROBE_DECIMALS = 5        # of the action log-scores a probe logs (logged_scores)


@dataclasses.dataclass
class Probe:
  """What the agent computed for the waiting episodes before the route decides."""
  z: list[np.ndarray]                     # per episode: [t+1, D] embeddings of its steps so far
  logits: dict[str, list[np.ndarray]]     # variant -> per episode: action log-scores over view.admissible


# Keeps sampled actions independent of a random route's draws, which share the episode's key.
_ACTION_SALT = 0x61637431   # 'act1'

Choose = Callable[[Sequence[EpisodeView], Probe], tuple[Sequence[str], Optional[Sequence[float]]]]


@dataclasses.dataclass(frozen=True)
class Route:
  """Which variant acts for each waiting episode (and p(high) where a router decided).

  `embed` names the variant whose hidden states, mean-pooled over each step's new tokens (the
  previous action and the observation), give the step embedding z_t; that variant then catches up
  on every step, which keeps it ready to act at no extra prefill. `probe` names variants whose
  action distributions (score mode) are computed for every waiting episode before choosing.
  `teacher` = (high, low) (generate mode): after the chosen variant generates, its tokens are fed
  through both (teacher forcing) and the step logs, per generated token, KL(p_high ‖ p_low) and
  KL(p_low ‖ p_high) of their next-token distributions and the low one's entropy and top-2 margin
  (Step.token_labels: the paper's d_t over a generated step, aggregated by the reader).
  """
  choose: Choose
  embed: Optional[str] = None
  probe: tuple[str, ...] = ()
  teacher: tuple[str, ...] = ()


def fixed(name: str) -> Route:
  """Every step on one variant."""
  return Route(lambda views, probe: ([name] * len(views), None))


@dataclasses.dataclass
class _Row:
  episode: tuple                     # (index, game id, seed) of the episode that owns this row
  history: History
  action: Optional[str] = None       # the command chosen at the latest step
  cached: dict = dataclasses.field(default_factory=dict)   # variant -> (history version, tokens cached)
  z: list = dataclasses.field(default_factory=list)        # step embeddings so far


class Agent:
  def __init__(self, tok: Tokenizer, fmt: Format, variants: Mapping[str, Variant], *, rows: int,
               budget: int, route: Route, mode: str = "score", length_norm: bool = False,
               temperature: float = 0.0, max_action_tokens: int = 24, seed: int = 0,
               mesh: Optional[Mesh] = None, record_z: bool = False):
    if mode not in MODES:
      raise UserError(f"unknown action mode {mode!r}; known: {list(MODES)}")
    vocab = min(v.cfg.vocab_size for v in variants.values())
    if tok.vocab_size > vocab:
      raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model's vocabulary only {vocab}: "
                      "a tokenizer of another model?")
    if mesh is not None and rows % mesh.shape["data"]:
      raise UserError(f"{rows} episode rows cannot be split evenly over the mesh's {mesh.shape['data']} data shards")
    missing = sorted({route.embed, *route.probe, *route.teacher} - {None} - set(variants))
    if missing:
      raise UserError(f"the route needs variant(s) {missing}; the agent has {sorted(variants)}")
    if route.probe and mode != "score":
      raise UserError("routes that read action distributions (entropy, margin, oracle) need agent.mode=score")
    if route.teacher and len(route.teacher) != 2:
      raise UserError(f"route.teacher names the (high, low) pair, got {route.teacher!r}")
    if route.teacher and mode != "generate":
      raise UserError("token-level labels (route.teacher) need agent.mode=generate")
    if record_z and route.embed is None:
      raise UserError("record_z needs a route with an embedding variant")
    self.tok, self.fmt, self.route, self.mode = tok, fmt, route, mode
    self.budget, self.length_norm, self.temperature, self.seed = budget, length_norm, temperature, seed
    self.max_action_tokens, self.record_z = max_action_tokens, record_z
    self._calls = 0
    stop = tok.token_to_id(fmt.stop)
    self.stop_ids = tuple(dict.fromkeys(([stop] if stop is not None else []) + list(tok.eos_ids)))
    self.rows: list[Optional[_Row]] = [None] * rows
    foreign = sorted(n for n, v in variants.items() if v.prec.kernel == "pallas" and v.model.quant.mesh != mesh)
    if foreign:
      raise UserError(f"variant(s) {foreign} were packed for another mesh than the agent's (the fused kernel's "
                      "layout follows the mesh): make them with Policy.variants(mesh=agent.mesh_of(config.agent))")
    self.mesh = mesh
    self._rows_sharding = None if mesh is None else NamedSharding(mesh, P("data"))
    self.variants = {n: v if mesh is None else dataclasses.replace(v, variables=sharding.place_variables(mesh, v.variables))
                     for n, v in variants.items()}
    # Room for the context plus the longest action a step may add before the next trim check.
    self.caches = {n: self._place_cache(v.init_cache(rows, budget + max_action_tokens))
                   for n, v in self.variants.items()}

  def _place(self, tree):
    """Per-row arrays: rows split over the mesh's "data" axis."""
    return tree if self._rows_sharding is None else jax.device_put(tree, self._rows_sharding)

  def _place_cache(self, cache):
    return cache if self.mesh is None else sharding.place_cache(self.mesh, cache)

  # --- per-episode state ---------------------------------------------------------------------

  def _advance(self, view: EpisodeView) -> _Row:
    key = (view.index, view.game.game_id, view.seed)
    row = self.rows[view.slot]
    if view.t == 0 or row is None or row.episode != key:
      if view.t != 0:
        raise ValueError(f"{view.game.game_id}: step {view.t} arrived without the agent's earlier steps")
      row = _Row(key, History(self.tok, self.fmt, view.goal, self.budget))
      self.rows[view.slot] = row
    else:
      row.history.act(row.action)
    row.history.observe(view.observation, view.admissible, reserve=self.max_action_tokens)
    return row

  # --- cache rows ------------------------------------------------------------------------------

  def _sub_rows(self, slots: list[int]) -> tuple[Optional[np.ndarray], list[int]]:
    """(the cache rows a call computes, where each slot sits among them).

    The rows are the waiting slots first, padded to a power-of-two count, or None for all rows.
    Computing only the waiting rows is what keeps a pool's model time per step near batch 1's; the
    power-of-two sizes bound the compiled shapes. With a mesh the count stays a multiple of its size.
    """
    n = len(self.rows)
    floor = 1 if self.mesh is None else self.mesh.shape["data"]
    b = max(floor, 1 << max(0, len(slots) - 1).bit_length())
    if b >= n:
      return None, list(slots)
    waiting = set(slots)
    idle = [r for r in range(n) if r not in waiting]
    return np.asarray(list(slots) + idle[:b - len(slots)], np.int32), list(range(len(slots)))

  def _gather(self, name: str, idx: Optional[np.ndarray]):
    cache = self.caches[name]
    return cache if idx is None else self._place_cache(_take_rows(cache, jnp.asarray(idx)))

  def _stack(self, last: dict, slots: list[int], idx: Optional[np.ndarray]) -> jax.Array:
    """Last hidden states [B, H] in cache-row order (idle rows: zeros, never read)."""
    order = list(range(len(self.rows))) if idx is None else idx.tolist()
    h = next(iter(last.values()))
    return self._place(jnp.stack([last.get(r, jnp.zeros_like(h)) for r in order]))

  def _prefill(self, name: str, share: list[int], views, rows, embed: bool, score: bool):
    """Catches `name` up on episodes `share`: prefills the context tokens their cache rows lack,
    and with `score` scores their admissible commands in the same pass (engine.prefill_score).

    → ({slot: last hidden [H]}, {slot: tokens prefilled}, {slot: z [D]} when `embed`,
       per episode of `share` (log-scores, tokens scored) when `score`)."""
    slots = [views[i].slot for i in share]
    idx, at = self._sub_rows(slots)
    cache = self._gather(name, idx)
    lengths = np.asarray(cache["lengths"]).copy()
    seqs: list[list[int]] = [[] for _ in lengths]
    for s, i in zip(slots, at):
      row = self.rows[s]
      version, done = row.cached.get(name, (-1, 0))
      if version != row.history.version:       # trimmed since (or never cached): rebuild the row
        done = lengths[i] = 0
      seqs[i] = row.history.tokens()[done:]
      row.cached[name] = (row.history.version, row.history.length)
    cache = engine.truncate_cache(cache, self._place(jnp.asarray(lengths)))
    scored = None
    if score:
      row_of, conts = self._candidates(share, at, views, rows)
      last, cache, lps, hidden = engine.prefill_score(self.variants[name], cache, seqs, row_of, conts,
                                                      return_hidden=True)
      scored = self._totals(share, views, lps)
    else:
      last, cache, hidden = engine.prefill(self.variants[name], cache, seqs, return_hidden=True)
    self.caches[name] = cache if idx is None else _put_rows(self.caches[name], jnp.asarray(idx), cache)
    z = {}
    if embed:
      lens = np.array([len(q) for q in seqs], np.int32)
      fresh = np.zeros_like(lens)
      fresh[at] = [min(self.rows[s].history.fresh, len(seqs[i])) for s, i in zip(slots, at)]
      pooled = np.asarray(_pool_tail(hidden, jnp.asarray(lens), jnp.asarray(fresh)))
      z = {s: pooled[i] for s, i in zip(slots, at)}
    return ({s: last[i] for s, i in zip(slots, at)}, {s: len(seqs[i]) for s, i in zip(slots, at)}, z, scored)

  # --- the policy ------------------------------------------------------------------------------

  def __call__(self, views: Sequence[EpisodeView]) -> list[Decision]:
    for v in views:
      if not 0 <= v.slot < len(self.rows):
        raise ValueError(f"pool slot {v.slot} has no agent row: build the Agent with rows >= pool slots")
    rows = [self._advance(v) for v in views]
    slots = [v.slot for v in views]
    n, route = len(views), self.route
    seconds = np.zeros(n)                           # model time charged to each episode's step
    work = [{} for _ in range(n)]                   # per episode: variant -> {kind: n} (records.PASS_KINDS, WORK_KINDS)
    last: dict[str, dict] = {}                      # variant -> {slot: last hidden}, once caught up

    def count(i: int, name: str, kind: str, n: int):
      w = work[i].setdefault(name, {})
      w[kind] = w.get(kind, 0) + int(n)

    def timed(share: list[int], fn, name: str, kind: str):   # one pass of `name` (records.PASS_KINDS),
      t0 = time.perf_counter()                                  # its wall time shared by `share`
      out = fn()
      seconds[share] += (time.perf_counter() - t0) / len(share)
      for i in share:
        count(i, name, kind, 1)
      return out

    def scored_by(name: str, share: list[int], got):   # counts the tokens `name` scored for `share`
      for i, (_, k) in zip(share, got):
        count(i, name, "score", k)
      return got

    def ready(name: str, share: list[int], score: bool = False):
      """Catches `name` up on `share`; with `score`, also their (log-scores, tokens scored), in
      the same pass when none of them was caught up yet (one forward instead of two)."""
      todo = [i for i in share if slots[i] not in last.setdefault(name, {})]
      together = score and todo == share
      if todo:
        lasts, counts, z, scored = timed(todo, lambda: self._prefill(name, todo, views, rows,
                                                                     name == route.embed, together),
                                         name, "score_calls" if together else "prefill_calls")
        last[name].update(lasts)
        for i in todo:
          count(i, name, "prefill", counts[slots[i]])
          if z:   # rounded to the stored precision: the router sees what the logs replay (encode_z)
            rows[i].z.append(np.asarray(z[slots[i]], Z_DTYPE).astype(np.float32))
        if together:
          return scored_by(name, share, scored)
      if score:
        return scored_by(name, share, timed(share, lambda: self._logits(name, share, last[name], views, rows),
                                            name, "score_calls"))
      return None

    everyone = list(range(n))
    scored: dict[str, list] = {}                    # variant -> per episode (log-scores, tokens scored)
    probe = Probe(z=[], logits={})
    embedded = None
    if route.embed is not None:      # a probed embedding variant scores in the same pass
      embedded = ready(route.embed, everyone, score=route.embed in route.probe)
      probe.z = [np.stack(r.z) for r in rows]
    for name in route.probe:
      scored[name] = embedded if name == route.embed else ready(name, everyone, score=True)
      probe.logits[name] = [lg for lg, _ in scored[name]]
    t0 = time.perf_counter()
    names, p_high = route.choose(views, probe)
    router_seconds = (time.perf_counter() - t0) / n
    seconds += router_seconds
    names = list(names)
    unknown = sorted(set(names) - set(self.variants))
    if unknown:
      raise ValueError(f"route chose unknown variant(s) {unknown}; the agent has {sorted(self.variants)}")
    picks: list = [None] * n
    generated: list = [None] * n                    # generate mode: each episode's generated token ids
    for name in dict.fromkeys(names):
      group = [i for i, m in enumerate(names) if m == name]
      if self.mode == "generate":
        ready(name, group)
        for i, (action, info, toks) in zip(group, timed(group, lambda: self._generate(name, group, last[name], views),
                                                        name, "decode_calls")):
          picks[i] = action, info
          generated[i] = toks
          count(i, name, "decode", len(toks))
        continue
      got = [scored[name][i] for i in group] if name in scored else ready(name, group, score=True)
      for i, (lg, _) in zip(group, got):
        picks[i] = self._pick(name, views[i], lg)
    if route.teacher:
      for name in route.teacher:
        ready(name, everyone)
      dists = {name: timed(everyone, lambda: self._teacher(name, everyone, last[name], views, generated),
                           name, "score_calls") for name in route.teacher}
      for i in everyone:
        for name in route.teacher:
          count(i, name, "score", len(generated[i]))
      stats = {k: np.asarray(x) for k, x in _token_labels(*(dists[m] for m in route.teacher)).items()}
      for i in everyone:
        k = len(generated[i])
        picks[i][1]["token_labels"] = {
            **{key: [round(float(x), 6) for x in stats[key][i, :k]] for key in TOKEN_LABELS},
            "thinking": _thinking_tokens(self.tok, generated[i], self.fmt.opens_thinking)}
    decisions = []
    for i, (v, row, (action, info)) in enumerate(zip(views, rows, picks)):
      row.action = action
      info.update(precision=names[i], tokens=work[i], model_seconds=float(seconds[i]),
                  router_seconds=router_seconds)
      if p_high is not None:
        info["p_high"] = float(p_high[i])
      if probe.logits:
        info["probe_logits"] = {m: logged_scores(lg[i]) for m, lg in probe.logits.items()}
      if self.record_z:
        info["z"] = encode_z(row.z[-1])
      if v.expert_action is not None:
        info["expert_action"] = v.expert_action
      decisions.append(Decision(action, info))
    return decisions

  def _candidates(self, share, at, views, rows) -> tuple[list[int], list[list[int]]]:
    """(cache row, tokens) of every admissible command of the episodes `share` (rows `at`)."""
    row_of, conts = [], []
    for i, r in zip(share, at):
      for a in views[i].admissible:
        row_of.append(r)
        conts.append(rows[i].history.action_tokens(a))
    return row_of, conts

  def _totals(self, share, views, lps) -> list[tuple[np.ndarray, int]]:
    """Per episode of `share`: (each admissible command's log-score, tokens scored). The log-score
    is the command's summed token log-probability, or its per-token mean with `length_norm`."""
    out, k = [], 0
    for i in share:
      seq = lps[k:k + len(views[i].admissible)]
      k += len(seq)
      out.append((np.array([lp.mean() if self.length_norm else lp.sum() for lp in seq], np.float64),
                  int(sum(len(lp) for lp in seq))))
    return out

  def _logits(self, name, share, last, views, rows) -> list[tuple[np.ndarray, int]]:
    """`_totals` of the episodes `share`, whose rows `name` has caught up on already."""
    slots = [views[i].slot for i in share]
    idx, at = self._sub_rows(slots)
    row_of, conts = self._candidates(share, at, views, rows)
    lps = engine.score(self.variants[name], self._gather(name, idx), self._stack(last, slots, idx), row_of, conts)
    return self._totals(share, views, lps)

  def _pick(self, name: str, view: EpisodeView, totals: np.ndarray) -> tuple[str, dict]:
    if not np.isfinite(totals).all():   # argmax would silently take the first command
      raise UserError(f"the {name} tier scored a command NaN or infinite on {view.game.game_id} at step {view.t}")
    probs = _softmax(totals / self.temperature if self.temperature > 0 else totals)
    pick = (int(view.rng(self.seed, _ACTION_SALT).choice(len(probs), p=probs)) if self.temperature > 0
            else int(np.argmax(totals)))
    return view.admissible[pick], {"action_logprob": float(np.log(probs[pick])), "action_probs": _rounded(probs)}

  def _generate(self, name, share, last, views):
    variant, slots = self.variants[name], [views[i].slot for i in share]
    idx, at = self._sub_rows(slots)
    hidden = self._stack(last, slots, idx)
    cache = self._gather(name, idx)
    if idx is None:
      self.caches.pop(name)                     # generate donates the cache: it comes back below
    lengths = self._place(jnp.asarray(np.asarray(cache["lengths"])))
    # One key per call: sampled generation (temperature > 0) depends on the batch, unlike score mode.
    self._calls += 1
    rng = jax.random.fold_in(jax.random.key(self.seed), self._calls)
    gen = engine.generate(variant, cache, hidden, max_new_tokens=self.max_action_tokens, eos_ids=self.stop_ids,
                          temperature=self.temperature, rng=rng)
    if idx is None:                             # roll back: the History re-appends the chosen command
      self.caches[name] = engine.truncate_cache(gen.cache, lengths)
    out = []
    for i, r in zip(share, at):
      v, k = views[i], int(gen.lengths[r])
      text = self.tok.decode(gen.tokens[r, :k].tolist())
      action, mapped = map_to_admissible(self.fmt.parse(text), v.admissible)
      out.append((action, {"generated": text, "mapped": mapped,
                           "token_logprobs": [round(float(x), 5) for x in gen.logprobs[r, :k]]},
                  gen.tokens[r, :k].tolist()))
    return out

  def _teacher(self, name, share, last, views, generated) -> jax.Array:
    """`name`'s next-token log-distributions along each episode's generated tokens [len(share), T, V]."""
    slots = [views[i].slot for i in share]
    idx, at = self._sub_rows(slots)
    cache = self._gather(name, idx)
    seqs = [[] for _ in range(cache["lengths"].shape[0])]
    for i, r in zip(share, at):
      seqs[r] = generated[i]
    lp, _ = engine.teacher_forced(self.variants[name], cache, self._stack(last, slots, idx), seqs)
    return lp[jnp.asarray(at)]


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max())
  return e / e.sum()


def _rounded(p: np.ndarray) -> list[float]:
  return [round(float(x), 6) for x in p]


def logged_scores(scores: np.ndarray) -> list[float]:
  """Action log-scores as a probe logs them (Step.probe_logits); routes reading them live round alike."""
  return [round(float(x), PROBE_DECIMALS) for x in scores]


def encode_z(z: np.ndarray) -> str:
  """A step embedding as it is stored in step records: Z_DTYPE, base64."""
  return base64.b64encode(np.asarray(z, Z_DTYPE).tobytes()).decode("ascii")


def decode_z(text: str) -> np.ndarray:
  return np.frombuffer(base64.b64decode(text), Z_DTYPE).astype(np.float32)


TOKEN_LABELS = ("kl_high_low", "kl_low_high", "low_entropy", "low_margin")


@jax.jit
def _token_labels(lp_high, lp_low) -> dict:
  """Per generated token [B, T]: both KLs between the tiers' next-token distributions, and the low
  tier's entropy and top-1 minus top-2 probability."""
  p_high, p_low = jnp.exp(lp_high), jnp.exp(lp_low)
  top2 = jax.lax.top_k(p_low, 2)[0]
  return {"kl_high_low": jnp.maximum(jnp.sum(p_high * (lp_high - lp_low), -1), 0.0),
          "kl_low_high": jnp.maximum(jnp.sum(p_low * (lp_low - lp_high), -1), 0.0),
          "low_entropy": -jnp.sum(p_low * lp_low, -1), "low_margin": top2[..., 0] - top2[..., 1]}


def _thinking_tokens(tok: Tokenizer, ids: Sequence[int], opened: bool = False) -> int:
  """How many of the generated tokens lie in a thinking block (`opened`: the prompt opened it): up to
  the one that completes "</think>", all of them when the block is cut off, 0 when there is none."""
  text = tok.decode(list(ids))
  if "</think>" not in text:
    return len(ids) if opened or "<think>" in text else 0
  return next(n for n in range(1, len(ids) + 1) if "</think>" in tok.decode(list(ids[:n])))


_take_rows = jax.jit(decoder.take_rows)
_put_rows = jax.jit(decoder.put_rows, donate_argnums=(0,))


@jax.jit
def _pool_tail(hidden, lens, fresh):
  """Mean of each row's hidden states over its last `fresh` new tokens: [B, T, H] -> [B, H] f32."""
  pos = jnp.arange(hidden.shape[1])[None]
  w = ((pos < lens[:, None]) & (pos >= (lens - fresh)[:, None])).astype(jnp.float32)
  return jnp.einsum("bt,bth->bh", w, hidden.astype(jnp.float32)) / jnp.maximum(w.sum(1, keepdims=True), 1.0)


def map_to_admissible(command: str, admissible: Sequence[str]) -> tuple[str, bool]:
  """The admissible command meant by `command`: itself, else the most similar one (mapped=True)."""
  norm = " ".join(command.lower().split())
  for a in admissible:
    if " ".join(a.lower().split()) == norm:
      return a, False
  if not admissible:
    raise ValueError("no admissible commands to map a generated action to")
  return max(admissible, key=lambda a: difflib.SequenceMatcher(None, norm, a.lower()).ratio()), True


def agent_config(**overrides):
  """The `agent` config section: how the policy reads and acts."""
  import ml_collections
  c = ml_collections.ConfigDict()
  c.format = "compact"          # compact | chat-qwen3 | chat-qwen2 | chat-smollm2 | chat-deepseek-r1 (mpr.agent.prompt)
  c.think = False               # chat formats: think before `Action:`
  c.list_admissible = True      # chat formats: list the admissible commands each turn
  c.examples = ()               # chat formats: few-shot example episodes (text) for the system turn
  c.mode = "score"              # score | generate
  c.length_norm = False         # score: rank by mean instead of summed token log-prob
  c.temperature = 0.0           # 0 = greedy
  c.budget = 768                # context tokens (goal and first step always kept)
  c.max_action_tokens = 24
  c.devices = 0                 # run on this many local devices (0 = all): a ("data", "model") mesh
  c.model_parallel = 1          # its "model" axis: weights and kv heads split this many ways (mpr.models.sharding)
  c.update(overrides)
  return c


def prompt_format(ac):
  """The prompt format the `agent` config section asks for."""
  from mpr.agent import prompt
  return prompt.make(ac.format) if ac.format == "compact" else prompt.make(
      ac.format, think=ac.think, list_admissible=ac.list_admissible, examples=tuple(ac.examples))


def mesh_of(ac) -> Optional[Mesh]:
  """The ("data", "model") mesh the `agent` config section asks for; None on one device. Build the
  variants on it too (Policy.variants(mesh=)), so their weights are made split, not moved there."""
  devices = jax.local_devices()
  if ac.devices:
    if ac.devices > len(devices):
      raise UserError(f"agent.devices={ac.devices} but only {len(devices)} local devices")
    devices = devices[:ac.devices]
  return sharding.make_mesh(devices, ac.model_parallel) if len(devices) > 1 or ac.model_parallel > 1 else None


def from_config(ac, tok: Tokenizer, variants: Mapping[str, Variant], *, rows: int, route: Route,
                seed: int = 0, record_z: bool = False) -> Agent:
  return Agent(tok, prompt_format(ac), variants, rows=rows, budget=ac.budget, route=route, mode=ac.mode,
               length_norm=ac.length_norm, temperature=ac.temperature,
               max_action_tokens=ac.max_action_tokens, seed=seed, mesh=mesh_of(ac), record_z=record_z)
