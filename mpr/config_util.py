"""Helpers for `experiments/configs/*.py` (the big_vision pattern: configs are Python).

`parse_arg("split=valid_seen,runlocal", split="valid_seen", runlocal=False)` turns the `:arg` suffix of
`--config file.py:arg` into a ConfigDict with typed fields (the type of each default), so a config
file can offer named variants without string parsing of its own. `arg.given` lists the keys the arg set,
so a preset such as `runlocal` never overrides a value asked for explicitly (`runlocal_default`).

`check_env` refuses `env` values that would run but give wrong numbers; launch.py applies it to the
final config (after `--config.x=` overrides), before any stage starts.
"""
from __future__ import annotations

import ml_collections

from mpr.errors import UserError


def _cast(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("", "1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise UserError(f"config arg {key}={value!r}: expected a boolean")
  try:
    return type(default)(value)
  except ValueError:
    raise UserError(f"config arg {key}={value!r}: expected {type(default).__name__}") from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,flag,b=x' against typed defaults; unknown keys are an error. `given`: the keys set."""
  out, given = dict(defaults), []
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    out[key] = _cast(key, value if "=" in item else "true", defaults[key])
    given.append(key)
  return ml_collections.ConfigDict({**out, "given": tuple(given)})


def runlocal_default(arg: ml_collections.ConfigDict, key: str, local_value):
  """`local_value` under `runlocal` unless the arg set `key` itself: an explicit value always wins."""
  return local_value if arg.runlocal and key not in arg.given else arg[key]


def env_config(**overrides) -> ml_collections.ConfigDict:
  """The `env` section shared by every experiment: where games come from and how they are played."""
  c = ml_collections.ConfigDict()
  c.source = "auto"           # auto | real | generated (mpr.envs.games.find_games)
  c.data_dir = ""             # '' = $ALFWORLD_DATA
  c.generated_dir = ""        # '' = ~/.cache/mpr/generated
  c.task_types = ()           # () = all six
  c.engine = "fast"           # fast (in process, checked exact) | textworld (the real engine, in workers)
  c.max_steps = 50            # the ALFWorld convention of the paper
  # Episodes in flight: the model's batch (and the env's on TextWorld). 1 is fastest for the tiny
  # policy on CPU (no padding; BENCHMARKS.md); raise it on accelerators and for TextWorld's workers.
  c.num_slots = 1
  c.num_workers = 2           # textworld: env worker processes
  c.step_timeout = 60.0       # textworld: seconds before a hung worker is restarted
  c.update(overrides)
  return c


# (field, valid?, what is valid): values outside these run, but give 0-step episodes, episodes that all
# time out, or a pool with no workers.
_ENV_RULES = (
    ("source", lambda v: v in ("auto", "real", "generated"), "auto, real or generated"),
    ("engine", lambda v: v in ("fast", "textworld"), "fast or textworld"),
    ("max_steps", lambda v: v >= 1, ">= 1"),
    ("num_workers", lambda v: v >= 1, ">= 1"),
    ("num_slots", lambda v: v >= 1, ">= 1"),
    ("step_timeout", lambda v: v > 0, "> 0 seconds"),
)


def check_env(env: ml_collections.ConfigDict) -> None:
  """Raises UserError, in one line naming every bad field, unless each `env` value is in its range."""
  bad = [f"env.{k}={env[k]!r} (must be {rule})" for k, ok, rule in _ENV_RULES if not ok(env[k])]
  if bad:
    raise UserError("bad config value: " + "; ".join(bad))
