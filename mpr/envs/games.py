"""Game discovery: which ALFWorld games make up a split, read from the standard data layout.

Layout (what `alfworld-download` writes, and what `mpr.envs.generate` writes for generated games):
  $ALFWORLD_DATA/json_2.1.1/<split>/<task dir>/<trial dir>/{game.tw-pddl, traj_data.json}

`find_games` resolves a split by name from, in order of the `source` policy:
  real       – data_dir, else $ALFWORLD_DATA, else ~/.cache/alfworld (where `alfworld-download` puts
               the games); missing data is an error that says how to get it.
  generated  – games made offline by `mpr.envs.generate` under `generated_dir` (created on demand).
  auto       – real when present, else generated, with a one-line notice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

from mpr import io
from mpr.errors import UserError

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# Splits that only `mpr.envs.generate` makes, never the released data: `test_generated` is a fixed
# evaluation split on the seen floor plans (its name keys its games apart from every other split's),
# for reporting only, never for training or choosing anything.
GENERATED_ONLY_SPLITS = {"test_generated": 360}

# Splits that `mpr.envs.generate` makes (when real data is absent: with the real split sizes).
GENERATED_SPLIT_SIZES = {"train": 3553, "valid_seen": 140, "valid_train": 200, "valid_unseen": 134,
                         **GENERATED_ONLY_SPLITS}

# The file `mpr.envs.generate` keeps in each generated split folder (real splits have none).
COMPLETE_MARKER = ".complete"

# Where `alfworld-download` puts the games when ALFWORLD_DATA is unset (alfworld's own default).
ALFWORLD_DEFAULT_DIR = "~/.cache/alfworld"

HOW_TO_GET_DATA = ("get the games with `alfworld-download` (then export ALFWORLD_DATA=~/.cache/alfworld), "
                   "or point ALFWORLD_DATA=DIR at a folder holding json_2.1.1/<split>/")


@dataclasses.dataclass(frozen=True)
class GameSpec:
  path: str        # absolute path of game.tw-pddl
  game_id: str     # "<task dir>/<trial dir>": stable, unique within a split
  task_type: str
  split: str

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _scan_split(split_dir: str, split: str) -> list[GameSpec]:
  """All solvable games below split_dir, sorted by game id (the deterministic game order)."""
  games = []
  for task_dir in sorted(os.listdir(split_dir)):
    # alfworld's TextWorld path excludes these two families (AlfredTWEnv does the same).
    if "movable" in task_dir or "Sliced" in task_dir:
      continue
    tdir = os.path.join(split_dir, task_dir)
    if not os.path.isdir(tdir):
      continue
    for trial in sorted(os.listdir(tdir)):
      gdir = os.path.join(tdir, trial)
      game_file = os.path.join(gdir, "game.tw-pddl")
      traj_file = os.path.join(gdir, "traj_data.json")
      if not (os.path.isfile(game_file) and os.path.isfile(traj_file)):
        continue
      with open(traj_file) as f:
        task_type = json.load(f)["task_type"]
      games.append(GameSpec(game_file, f"{task_dir}/{trial}", task_type, split))
  return games


def split_dir(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, "json_2.1.1", split)


def default_generated_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mpr", "generated")


def real_data_dir(data_dir: Optional[str] = None) -> str:
  """Where released games are looked for: `data_dir`, else $ALFWORLD_DATA, else alfworld's default."""
  return os.path.abspath(os.path.expanduser(data_dir or os.environ.get("ALFWORLD_DATA") or ALFWORLD_DEFAULT_DIR))


def check_disjoint(train: Sequence[GameSpec], held_out: Sequence[GameSpec], what: str) -> None:
  """Refuses held-out games that are also training games: the same game file, whatever its split or id.

  Released ALFWorld splits share task folders (valid_train re-uses train tasks with other trials), so
  ids cannot tell; the file content can. Hashing a few thousand ~100 kB files takes about a second.
  """
  digests = {io.file_digest(g.path): g for g in train}
  shared = [(g, digests[d]) for g in held_out if (d := io.file_digest(g.path)) in digests]
  if shared:
    (g, t), n = shared[0], len(shared)
    raise UserError(f"{what}: {n} {g.split} game(s) are also {t.split} games (first: {g.game_id} = "
                    f"{t.game_id}); held-out games must not be trained on")


def data_fingerprint(env, seed: int) -> dict:
  """Where a run's games come from (the `env` config section): a stage refuses to resume or reuse its
  folder when they would come from elsewhere, e.g. after ALFWORLD_DATA was set or changed."""
  return {"source": env.source, "real": real_data_dir(env.data_dir or None),
          "generated": generated_data_dir(env.generated_dir or None, seed)}


def generated_data_dir(generated_dir: Optional[str], seed: int) -> str:
  """The data dir of generated games for a seed: keyed by generator version, so caches never mix."""
  from mpr.envs.generate import GENERATOR_VERSION
  return os.path.join(generated_dir or default_generated_dir(), f"v{GENERATOR_VERSION}-seed{seed}")


def find_games(split: str, *, source: str = "auto", data_dir: Optional[str] = None,
               generated_dir: Optional[str] = None, num_generated: Optional[int] = None,
               task_types: Sequence[str] = (), seed: int = 0, notify=None) -> list[GameSpec]:
  """Returns the games of `split` (filtered by task type), sorted by game id."""
  if source not in ("auto", "real", "generated"):
    raise UserError(f"env.source must be 'auto', 'real' or 'generated', got {source!r}")
  unknown = sorted(set(task_types) - set(TASK_TYPES))
  if unknown:
    raise UserError(f"unknown task type(s) {unknown}; known: {list(TASK_TYPES)}")
  notify = notify or (lambda msg: print(msg, file=sys.stderr))
  data_dir = real_data_dir(data_dir)

  games = None
  if split in GENERATED_ONLY_SPLITS:
    if source == "real":
      raise UserError(f"split {split!r} exists only as generated games (mpr.envs.generate); it needs "
                      "env.source 'auto' or 'generated', not 'real'")
  elif source in ("auto", "real"):
    where = f"{split_dir(data_dir, split)} does not exist"
    if os.path.isdir(split_dir(data_dir, split)):
      games = _scan_split(split_dir(data_dir, split), split)
      where = f"{split_dir(data_dir, split)} holds no games"
    if not games:
      if source == "real":
        raise UserError(f"no real ALFWorld games for split {split!r}: {where}; {HOW_TO_GET_DATA}")
      notify(f"notice: {where}; using generated games for split {split!r} (mpr.envs.generate)")
  if not games:
    from mpr.envs import generate  # Imported lazily: the generator pulls in alfworld's scene tables.
    gdir = generated_data_dir(generated_dir, seed)
    n = num_generated or GENERATED_SPLIT_SIZES.get(split, 140)
    generate.ensure_split(gdir, split, n, seed=seed)
    # The cache may hold more games than asked for (it only grows): the first n are this split.
    games = [g for g in _scan_split(split_dir(gdir, split), split) if generate.game_index(g.game_id) < n]
  if task_types:
    games = [g for g in games if g.task_type in task_types]
  return games


def generated_marker(split_folder: str) -> Optional[dict]:
  """The marker `mpr.envs.generate` keeps in a split folder it made ({num_games, seed, version}), else None
  (a released split has none, or a plain count from tools that copy the released games)."""
  try:
    with open(os.path.join(split_folder, COMPLETE_MARKER)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) and {"seed", "version"} <= set(marker) else None


def describe(games: Sequence[GameSpec]) -> str:
  """Where a game list comes from, for the line a run prints at start: real or generated, and the folder."""
  if not games:
    return "no games"
  sdir = os.path.dirname(os.path.dirname(os.path.dirname(games[0].path)))
  data_dir = os.path.dirname(os.path.dirname(sdir))
  return f"{'generated' if generated_marker(sdir) else 'real'} games from {data_dir}"


def select_games(games: list[GameSpec], num_games: int) -> list[GameSpec]:
  """An evenly spaced subset: games are sorted by task directory, so every task type stays in. 0 = all."""
  if num_games < 0:
    raise UserError(f"num_games must be >= 0 (0 = every game), got {num_games}")
  if num_games == 0 or num_games >= len(games):
    return games
  return [games[(i * len(games)) // num_games] for i in range(num_games)]


def load_game_list(path: str) -> list[GameSpec]:
  """Reads a game list written by a stage (JSON list of GameSpec dicts)."""
  with open(path) as f:
    return [GameSpec(**g) for g in json.load(f)]
