"""Differential check of FastEnv against the real TextWorld engine (AlfworldEnv), game by game.

Per game it plays, on both engines side by side: the stored walkthrough; `walks` seeded random walks
of 50 admissible commands; one walk that mixes in commands the game must refuse (random words,
admissible commands with an object's number changed, padded with spaces); and optionally (--expert)
the exploring expert's episode, with an expert stepped on each engine's own state, whose proposals must match too. Every step compares
the observation, the admissible commands (same strings, same order), won and done, plus the goal
text after reset; the first difference per game is reported.

The reference is TextWorld itself, by default with three caches that make it ~5x cheaper without
changing what it computes (`cached_reference`); `--plain-reference` runs it untouched.

  python -m mpr.envs.fastworld.verify --split valid_seen [--num-games N] [--walks K] [--data-dir D]
      [--expert] [--plain-reference] [--shard I/N --log shard_I.jsonl]   # N processes, each resumable
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import json
import random
import re
import sys
import time
from typing import Callable, Optional, Sequence

from mpr import io
from mpr.envs.games import GameSpec
from mpr.errors import UserError, one_line_errors

WALK_STEPS = 50
_WORDS = ("look", "go", "to", "take", "from", "open", "close", "apple", "1", "fridge", "xyzzy", "")


# A grammar's {...} expressions are Python that TextWorld evals in each text's context: names,
# attribute reads, string literals, `+` and `or` cannot change the objects they read.
_TERM = r"(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|'[^'\\]*')"
_READ_ONLY = re.compile(rf"\s*{_TERM}(?:\s*(?:\+|\bor\b)\s*{_TERM})*\s*")


def check_read_only(expression: str) -> None:
  if not _READ_ONLY.fullmatch(expression):
    raise UserError(f"grammar expression {{{expression}}} is not a plain read: the cached reference cannot "
                    "share its values; run with --plain-reference")


def _eval_expressions(symbols):
  from textworld.envs.pddl.textgen import ConditionalSymbol, EvalSymbol, ListSymbol
  for s in symbols:
    if isinstance(s, EvalSymbol):
      yield s.expression
    elif isinstance(s, ListSymbol):
      yield from _eval_expressions([s.symbol])
    elif isinstance(s, ConditionalSymbol):
      yield from _eval_expressions([s.expression])


@contextlib.contextmanager
def cached_reference():
  """TextWorld with three caches, computing what it computes without them (while in this block).

  Profiled on train games, TextWorld's time goes to re-parsing the same grammar and query strings
  at every step (tatsu), re-translating the game's PDDL at every reset (fast-downward), and
  deep-copying entity records for every grammar symbol. So:
  - the textgen and logic parsers are memoized by (text, rule): parsing is a function of the text,
    and each call gets its own deep copy of the result, as a fresh parse would be;
  - `fast_downward.pddl2sas` is memoized by (domain, problem, optimize), which set all its
    translator options on every call, for the game being played; each call gets its own deep copy
    of the task;
  - textgen's `copy_context` copies the variables and mapping dicts but shares their values
    (entity records, placeholders, variables). textgen only updates those dicts, and the only
    code a game runs on the values is its grammar's {...} expressions, each checked on parse to be
    a plain read (`check_read_only`); any other expression is refused, naming it.
  """
  import fast_downward
  import textworld.logic as logic
  import textworld.envs.pddl.textgen as textgen

  def memoized(parse, check=None):
    cache = {}
    def cached(text, rule_name, **kwargs):
      key = (text, rule_name)
      if key not in cache:
        cache[key] = parse(text, rule_name=rule_name, **kwargs)
        if check is not None:
          check(cache[key])
      return copy.deepcopy(cache[key])
    return cached

  def check_symbols(symbols):
    for expression in _eval_expressions(symbols if isinstance(symbols, list) else [symbols]):
      check_read_only(expression)

  translations = {}
  def pddl2sas(domain, problem, verbose=False, optimize=False):
    key = (domain, problem, optimize)
    if key not in translations:
      if any(k[:2] != key[:2] for k in translations):   # a new game: only its resets will ask again
        translations.clear()
      translations[key] = saved["pddl2sas"](domain, problem, verbose=verbose, optimize=optimize)
    task, sas = translations[key]
    return copy.deepcopy(task), sas

  def copy_context(context):
    return {"state": context["state"], "facts": context["facts"], "variables": dict(context["variables"]),
            "mapping": dict(context["mapping"]), "entity_infos": context["entity_infos"]}

  saved = {"logic": logic._parse_and_convert, "textgen": textgen._parse_and_convert,
           "pddl2sas": fast_downward.pddl2sas, "copy_context": textgen.copy_context}
  logic._parse_and_convert = memoized(saved["logic"])
  textgen._parse_and_convert = memoized(saved["textgen"], check_symbols)
  fast_downward.pddl2sas = pddl2sas
  textgen.copy_context = copy_context
  try:
    yield
  finally:
    logic._parse_and_convert, textgen._parse_and_convert = saved["logic"], saved["textgen"]
    fast_downward.pddl2sas, textgen.copy_context = saved["pddl2sas"], saved["copy_context"]


@dataclasses.dataclass
class Mismatch:
  game_id: str
  walk: str
  step: int           # 0: after reset
  field: str
  real: object
  fast: object


def _invalid_command(rng: random.Random, admissible: Sequence[str]) -> str:
  kind = rng.randrange(3)
  if kind == 0 or not admissible:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
  cmd = rng.choice(admissible)
  if kind == 1:
    return f"  {cmd} "
  # The same command on another object: swap one "<name> <n>" for a neighbour's number.
  words = cmd.split()
  nums = [i for i, w in enumerate(words) if w.isdigit()]
  if not nums:
    return cmd + " 1"
  i = rng.choice(nums)
  words[i] = str(int(words[i]) + rng.choice((-1, 1, 7)))
  return " ".join(words)


def _compare(game: GameSpec, walk: str, step: int, real, fast, out: list) -> bool:
  for field in ("observation", "admissible", "won", "done"):
    r, f = getattr(real, field), getattr(fast, field)
    if r != f:
      out.append(Mismatch(game.game_id, walk, step, field, r, f))
      return False
  return True


def _play(game: GameSpec, walk: str, real_env, fast_env, choose, out: list, walk_steps: int = WALK_STEPS) -> int:
  """Plays one walk on both engines; returns the number of steps compared."""
  rgoal, r = real_env.reset(game)
  fgoal, f = fast_env.reset(game)
  if rgoal != fgoal:
    out.append(Mismatch(game.game_id, walk, 0, "goal", rgoal, fgoal))
    return 1
  if not _compare(game, walk, 0, r, f, out):
    return 1
  steps = 1
  for i in range(1, walk_steps + 1):
    action = choose(i, r)
    if action is None:
      break
    r, f = real_env.step(action), fast_env.step(action)
    steps += 1
    if not _compare(game, f"{walk} @ {action!r}", i, r, f, out):
      break
  return steps


def expert_walk(game: GameSpec, real_env, fast_env, out: list, walk_steps: int) -> int:
  """The exploring expert's episode on both engines (each env steps its own expert on its own
  state): the real engine's expert picks, FastEnv's must agree."""
  _, r = real_env.reset(game)
  _, f = fast_env.reset(game)
  steps = 1
  for i in range(1, walk_steps + 1):
    if r.done:
      break
    if r.expert_action != f.expert_action:
      out.append(Mismatch(game.game_id, "expert", i, "expert_action", r.expert_action, f.expert_action))
      break
    action = r.expert_action
    r, f = real_env.step(action), fast_env.step(action)
    steps += 1
    if not _compare(game, f"expert @ {action!r}", i, r, f, out):
      break
  return steps


def verify_games(games: Sequence[GameSpec], walks: int = 3, seed: int = 0, progress: bool = False,
                 walk_steps: int = WALK_STEPS, mixed: bool = True, expert: bool = False,
                 on_game: Optional[Callable[[dict], None]] = None, plain_reference: bool = False) -> dict:
  """Runs both engines on `games`; a JSON-able report with the first mismatch of each game.

  Per game: the walkthrough, `walks` random walks and (with `mixed`) one mixed walk of
  `walk_steps` steps each, and with `expert` the exploring expert's episode. `on_game` gets each
  game's record ({game, steps, mismatch, reference}) as it is checked. The reference is TextWorld
  under `cached_reference` unless `plain_reference`.
  """
  with contextlib.nullcontext() if plain_reference else cached_reference():
    return _verify(games, walks, seed, progress, walk_steps, mixed, expert, on_game,
                   "textworld" if plain_reference else "textworld-cached")


def _verify(games, walks, seed, progress, walk_steps, mixed, expert, on_game, reference) -> dict:
  from mpr.envs.alfworld import AlfworldEnv
  from mpr.envs.fastworld import FastEnv, load_game
  real_env, fast_env = AlfworldEnv(max_steps=walk_steps), FastEnv(max_steps=walk_steps)
  real_expert_env = AlfworldEnv(max_steps=walk_steps, expert="exploring") if expert else None
  fast_expert_env = FastEnv(max_steps=walk_steps, expert="exploring") if expert else None
  mismatches: list[Mismatch] = []
  steps, start = 0, time.time()
  it = games
  if progress:
    from tqdm import tqdm
    it = tqdm(games, desc="fastworld verify", file=sys.stderr)
  for game in it:
    found: list[Mismatch] = []
    before = steps
    plan = load_game(game.path).walkthrough   # the game FastEnv compiles (and caches) anyway
    steps += _play(game, "walkthrough", real_env, fast_env,
                   lambda i, r: plan[i - 1] if i <= len(plan) else None, found)
    for w in range(walks + int(mixed)):
      rng = random.Random(f"{seed}/{game.game_id}/{w}")
      invalid = w == walks
      def choose(i, r, rng=rng, invalid=invalid):
        if invalid and rng.random() < 0.4:
          return _invalid_command(rng, r.admissible)
        return rng.choice(r.admissible) if r.admissible else "look"
      if not found:
        steps += _play(game, "mixed" if invalid else f"random{w}", real_env, fast_env, choose, found, walk_steps)
    if expert and not found:
      steps += expert_walk(game, real_expert_env, fast_expert_env, found, walk_steps)
    mismatches += found[:1]
    if on_game is not None:
      on_game({"game": game.game_id, "steps": steps - before, "reference": reference,
               "mismatch": dataclasses.asdict(found[0]) if found else None})
    if progress:
      it.set_postfix(steps=steps, mismatched=len(mismatches), refresh=False)
  return {"games": len(games), "reference": reference, "steps_compared": steps,
          "mismatched_games": len(mismatches),
          "seconds": round(time.time() - start, 1),
          "mismatches": [dataclasses.asdict(m) for m in mismatches]}


def _shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not I/N") from None
  if not 0 <= i < n:
    raise argparse.ArgumentTypeError(f"{text!r}: I must be in 0..N-1")
  return i, n


@one_line_errors("verify")
def main(argv: Optional[Sequence[str]] = None) -> int:
  from mpr.envs.games import find_games
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--split", required=True)
  p.add_argument("--num-games", type=int, default=None)
  p.add_argument("--walks", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--expert", action="store_true", help="also play the exploring expert's episode")
  p.add_argument("--plain-reference", action="store_true",
                 help="run TextWorld without the checker's caches (cached_reference)")
  p.add_argument("--task-stride", action="store_true", help="take games round-robin over task types")
  p.add_argument("--shard", default="0/1", type=_shard,
                  help="I/N: check every N-th game from the I-th (N processes at once, each with its own --log)")
  p.add_argument("--log", default="", help="JSONL of per-game results: a rerun skips the games it holds")
  args = p.parse_args(argv)
  games = find_games(args.split, source="real" if args.data_dir else "auto", data_dir=args.data_dir)
  if args.task_stride:   # round robin over task types, every game kept
    rank: dict = {}
    keyed = []
    for g in games:
      keyed.append((rank.setdefault(g.task_type, 0), g.task_type, g))
      rank[g.task_type] += 1
    games = [g for *_, g in sorted(keyed, key=lambda k: k[:2])]
  i, n = args.shard
  games = games[:args.num_games][i::n]
  if not args.log:
    report = verify_games(games, walks=args.walks, seed=args.seed, progress=True, expert=args.expert,
                          plain_reference=args.plain_reference)
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["mismatched_games"] == 0 else 1
  # Resumable: every checked game is in the log, so a killed run (or one shard of many) goes on.
  settings = {"walks": args.walks, "seed": args.seed, "expert": args.expert}
  with io.JsonlLog(args.log) as log:
    other = next((r["settings"] for r in log.records if r.get("settings") != settings), None)
    if other is not None:
      p.error(f"{args.log} holds games checked with {other}, not {settings}: use another --log")
    done = {r["game"] for r in log.records}
    verify_games([g for g in games if g.game_id not in done], walks=args.walks, seed=args.seed,
                 progress=True, expert=args.expert, plain_reference=args.plain_reference,
                 on_game=lambda r: log.append({**r, "settings": settings}))
    ids = {g.game_id for g in games}
    records = [r for r in log.records if r["game"] in ids]
  bad = [r for r in records if r["mismatch"]]
  # Logs from before the cached reference existed hold games checked on plain TextWorld.
  references = collections.Counter(r.get("reference", "textworld") for r in records)
  print(json.dumps({"games": len(records), "references": references,
                    "steps_compared": sum(r["steps"] for r in records),
                    "mismatched_games": len(bad), "mismatches": [r["mismatch"] for r in bad]},
                   indent=1, default=str))
  return 0 if not bad else 1


if __name__ == "__main__":
  sys.exit(main())
