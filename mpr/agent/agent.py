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
            candidates of the batch are scored in one pass (a prefix tree per row, engine.score).
  generate  decode until the format's stop token, parse the command, map it to an admissible one
            (exact, else the closest by string similarity: recorded as `mapped`).

KV caches: one per variant, a row per slot, each consistent with its own weights. When `route`
switches an episode to another variant, that variant prefills just the tokens it has not seen
(everything since it last acted, including the other variant's actions); a trimmed history makes
every variant rebuild its row. Generated tokens are rolled back and the chosen command re-appended
through the History, so caches only ever hold the canonical context.

Devices: with a `mesh`, cache rows are sharded over its "data" axis and weights replicated, so a
batch of episodes is data parallel over all local devices (rows must divide evenly).
"""
from __future__ import annotations

import dataclasses
import difflib
import time
import zlib
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mpr.agent.prompt import Format, History
from mpr.envs.rollout import Decision, EpisodeView
from mpr.errors import UserError
from mpr.models import engine
from mpr.models.tokenizer import Tokenizer
from mpr.models.variants import Variant

Route = Callable[[Sequence[EpisodeView]], Sequence[str]]   # the variant name for each waiting episode
MODES = ("score", "generate")


def fixed(name: str) -> Route:
  """Every step on one variant."""
  return lambda views: [name] * len(views)


@dataclasses.dataclass
class _Row:
  episode: tuple                     # (index, game id, seed) of the episode that owns this row
  history: History
  action: Optional[str] = None       # the command chosen at the latest step
  cached: dict = dataclasses.field(default_factory=dict)   # variant -> (history version, tokens cached)


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over all local devices (or `devices`) with the batch axis "data"."""
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), ("data",))


class Agent:
  def __init__(self, tok: Tokenizer, fmt: Format, variants: Mapping[str, Variant], *, rows: int,
               budget: int, route: Route, mode: str = "score", length_norm: bool = False,
               temperature: float = 0.0, max_action_tokens: int = 24, seed: int = 0,
               mesh: Optional[Mesh] = None):
    if mode not in MODES:
      raise UserError(f"unknown action mode {mode!r}; known: {list(MODES)}")
    vocab = min(v.cfg.vocab_size for v in variants.values())
    if tok.vocab_size > vocab:
      raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model's vocabulary only {vocab}: "
                      "a tokenizer of another model?")
    if mesh is not None and rows % mesh.size:
      raise UserError(f"{rows} episode rows cannot be split evenly over {mesh.size} devices")
    self.tok, self.fmt, self.route, self.mode = tok, fmt, route, mode
    self.budget, self.length_norm, self.temperature, self.seed = budget, length_norm, temperature, seed
    self.max_action_tokens = max_action_tokens
    self._calls = 0
    stop = tok.token_to_id(fmt.stop)
    self.stop_ids = tuple(dict.fromkeys(([stop] if stop is not None else []) + list(tok.eos_ids)))
    self.rows: list[Optional[_Row]] = [None] * rows
    self._rows_sharding = None if mesh is None else NamedSharding(mesh, P("data"))
    replicated = None if mesh is None else NamedSharding(mesh, P())
    self.variants = {n: v if mesh is None else dataclasses.replace(v, variables=jax.device_put(v.variables, replicated))
                     for n, v in variants.items()}
    # Room for the context plus the longest action a step may add before the next trim check.
    self.caches = {n: self._place(v.init_cache(rows, budget + max_action_tokens)) for n, v in self.variants.items()}

  def _place(self, tree):
    return tree if self._rows_sharding is None else jax.device_put(tree, self._rows_sharding)

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

  def _catch_up(self, name: str, slots: list[int]):
    """Prefills `name`'s cache rows with the context tokens it has not cached; → (last hidden, counts)."""
    cache = self.caches.pop(name)
    lengths = np.asarray(cache["lengths"]).copy()
    seqs: list[list[int]] = [[] for _ in self.rows]
    for s in slots:
      row = self.rows[s]
      version, done = row.cached.get(name, (-1, 0))
      if version != row.history.version:       # trimmed since (or never cached): rebuild the row
        done = lengths[s] = 0
      seqs[s] = row.history.tokens()[done:]
      row.cached[name] = (row.history.version, row.history.length)
    cache = engine.truncate_cache(cache, self._place(jnp.asarray(lengths)))
    last, cache = engine.prefill(self.variants[name], cache, seqs)
    self.caches[name] = cache
    return last, [len(seqs[s]) for s in slots]

  # --- the policy ------------------------------------------------------------------------------

  def __call__(self, views: Sequence[EpisodeView]) -> list[Decision]:
    for v in views:
      if not 0 <= v.slot < len(self.rows):
        raise ValueError(f"pool slot {v.slot} has no agent row: build the Agent with rows >= pool slots")
    rows = [self._advance(v) for v in views]
    names = list(self.route(views))
    unknown = sorted(set(names) - set(self.variants))
    if unknown:
      raise ValueError(f"route chose unknown variant(s) {unknown}; the agent has {sorted(self.variants)}")
    decisions: list[Optional[Decision]] = [None] * len(views)
    for name in dict.fromkeys(names):
      group = [i for i, n in enumerate(names) if n == name]
      t0 = time.perf_counter()
      last, prefilled = self._catch_up(name, [views[i].slot for i in group])
      act = self._score if self.mode == "score" else self._generate
      picks = act(name, last, [views[i] for i in group], [rows[i] for i in group])
      seconds = (time.perf_counter() - t0) / len(group)   # the variant's batch time, shared evenly
      for i, n_pre, (action, info) in zip(group, prefilled, picks):
        rows[i].action = action
        info.update(precision=name, tokens_prefilled=n_pre, model_seconds=seconds)
        if views[i].expert_action is not None:
          info["expert_action"] = views[i].expert_action
        decisions[i] = Decision(action, info)
    return decisions

  def _rng(self, view: EpisodeView) -> np.random.Generator:
    # Per episode and step, so a sampled choice never depends on which episodes share the batch.
    return np.random.default_rng([self.seed, view.seed, zlib.crc32(view.game.game_id.encode()), view.t])

  def _score(self, name, last, views, rows):
    row_of, conts = [], []
    for v, row in zip(views, rows):
      for a in v.admissible:
        row_of.append(v.slot)
        conts.append(row.history.action_tokens(a))
    lps = engine.score(self.variants[name], self.caches[name], last, row_of, conts)
    out, k = [], 0
    for v in views:
      n = len(v.admissible)
      seq = lps[k:k + n]
      k += n
      totals = np.array([lp.mean() if self.length_norm else lp.sum() for lp in seq], np.float64)
      logits = totals / self.temperature if self.temperature > 0 else totals
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      pick = int(self._rng(v).choice(n, p=probs)) if self.temperature > 0 else int(np.argmax(totals))
      out.append((v.admissible[pick], {
          "tokens_decoded": 0, "tokens_scored": int(sum(len(s) for s in seq)),
          "action_logprob": float(np.log(probs[pick])), "action_probs": [round(float(p), 6) for p in probs]}))
    return out

  def _generate(self, name, last, views, rows):
    variant, cache = self.variants[name], self.caches.pop(name)
    lengths = self._place(jnp.asarray(np.asarray(cache["lengths"])))   # generate donates the cache
    # One key per call: sampled generation (temperature > 0) depends on the batch, unlike score mode.
    self._calls += 1
    rng = jax.random.fold_in(jax.random.key(self.seed), self._calls)
    gen = engine.generate(variant, cache, last, max_new_tokens=self.max_action_tokens, eos_ids=self.stop_ids,
                          temperature=self.temperature, rng=rng)
    self.caches[name] = engine.truncate_cache(gen.cache, lengths)   # the History re-appends the command
    out = []
    for v in views:
      n = int(gen.lengths[v.slot])
      text = self.tok.decode(gen.tokens[v.slot, :n].tolist())
      command = self.fmt.parse(text)
      action, mapped = map_to_admissible(command, v.admissible)
      out.append((action, {"tokens_decoded": n, "generated": text, "mapped": mapped,
                           "token_logprobs": [round(float(x), 5) for x in gen.logprobs[v.slot, :n]]}))
    return out


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
  c.format = "compact"          # compact | chat-qwen3 | chat-smollm2 (mpr.agent.prompt)
  c.think = False               # chat formats: think before `Action:`
  c.list_admissible = True      # chat formats: list the admissible commands each turn
  c.examples = ()               # chat formats: few-shot example episodes (text) for the system turn
  c.mode = "score"              # score | generate
  c.length_norm = False         # score: rank by mean instead of summed token log-prob
  c.temperature = 0.0           # 0 = greedy
  c.budget = 768                # context tokens (goal and first step always kept)
  c.max_action_tokens = 24
  c.devices = 0                 # data-parallel over this many local devices (0 = all)
  c.update(overrides)
  return c


def from_config(ac, tok: Tokenizer, variants: Mapping[str, Variant], *, rows: int, route: Route,
                seed: int = 0) -> Agent:
  from mpr.agent import prompt
  fmt = prompt.make(ac.format) if ac.format == "compact" else prompt.make(
      ac.format, think=ac.think, list_admissible=ac.list_admissible, examples=tuple(ac.examples))
  devices = jax.local_devices()
  if ac.devices:
    if ac.devices > len(devices):
      raise UserError(f"agent.devices={ac.devices} but only {len(devices)} local devices")
    devices = devices[:ac.devices]
  mesh = data_mesh(devices) if len(devices) > 1 else None
  return Agent(tok, fmt, variants, rows=rows, budget=ac.budget, route=route, mode=ac.mode,
               length_norm=ac.length_norm, temperature=ac.temperature,
               max_action_tokens=ac.max_action_tokens, seed=seed, mesh=mesh)
